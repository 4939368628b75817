"""The HTML sweep report: one self-contained file (plotly's JavaScript embedded, so it opens offline)
with the ranking, the search space coloured by the metric, quality against compute, learning curves,
routing against the prior over training, the study's importances and, for grids, each design's
paired difference to DiT."""

from __future__ import annotations

import html
import time
from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from switchsweep.config.sweep_schema import REPORTED_METRICS
from switchsweep.dashboards.figures import (
    importance_figure,
    jsd_figure,
    learning_curves,
    parallel_coordinates,
    pareto_figure,
    routing_figure,
)
from switchsweep.dashboards.sweep_data import SweepData, collect
from switchsweep.dashboards.tables import accuracy_note, design_table, ranking_table, samples_table
from switchsweep.platform.files import atomic_write_text
from switchsweep.platform.sweep_dir import SweepDir
from switchsweep.platform.tracking import Tracker
from switchsweep.results.verdicts import verdict_sentences

MAX_ROUTING_FIGURES = 16  # the best trials' routing; more makes the page slow to open


CSS = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1200px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; } th { background: #f3f3f3; }
td:nth-child(2), th:nth-child(2) { text-align: left; }
.meta { color: #555; font-size: 13px; } .verdict { font-size: 15px; margin: 6px 0; }
.note { color: #666; font-style: italic; font-size: 13px; }
table.samples img { image-rendering: pixelated; }
"""


def _section(title: str, body: str) -> str:
    return f"<h2>{html.escape(title)}</h2>\n{body}\n"


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def render(data: SweepData) -> str:
    """The report's HTML (self-contained)."""
    r = data.ranking
    config = {"displaylogo": False, "responsive": True}
    plots = 0

    def plot(fig: go.Figure | None, missing: str) -> str:
        nonlocal plots
        if fig is None:
            return _note(missing)
        plots += 1
        return fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot{plots}", config=config)

    p = r.parent_params
    designs = (
        f"{len(r.ranked) - 1} configurations and the baseline" if r.baseline else f"{len(r.ranked)} configurations"
    )
    meta = (
        f"{designs}, {len(data.trials)} trials; search {p.get('sweep.search', '?')}, "
        f"{p.get('sweep.seeds', '1')} seed(s), {p.get('train.steps', '?')} steps, evaluation every "
        f"{p.get('sweep.eval_every', '?')} steps; ranked by {data.metric} ({REPORTED_METRICS[data.metric]} is better). "
        f"Written {time.strftime('%Y-%m-%d %H:%M')}."
    )
    verdicts = "".join(f'<p class="verdict">{html.escape(line)}</p>' for line in verdict_sentences(r))
    parts = [
        f"<h1>Sweep {html.escape(r.sweep_id)}</h1>",
        verdicts,
        f'<p class="meta">{html.escape(meta)}</p>',
        _section(
            "Ranking",
            _note(
                "Finished configurations first, by the mean over seeds; then those stopped early. "
                "vs best: tied where the difference to the best, paired seed by seed (ranking.md: "
                "diff_to_best), has a 95% interval holding zero; without one, where the two "
                "95% intervals overlap. A baseline (sweep.baseline) is ranked with the rest, "
                "never as the best."
            )
            + _note(accuracy_note(data))
            + ranking_table(data),
        ),
        _section(
            "Samples at the last evaluation",
            samples_table(data) or _note("no trial logged a sample grid (sample.per_class=0)"),
        ),
    ]
    if data.search == "grid":
        table = design_table(data)
        parts.append(
            _section("Designs against DiT", table or _note("this grid has no finished plain-DiT row to compare with"))
        )
    parts += [
        _section(
            "Search space", plot(parallel_coordinates(data), "fewer than two Switch-DiT configurations with a value")
        ),
        _section("Quality against compute", plot(pareto_figure(data), "no finished configuration yet")),
        _section("Learning curves", plot(learning_curves(data), "no trial has logged a step yet")),
        _section("Routing against the prior", plot(jsd_figure(data), "no Switch-DiT trial logged its routing")),
    ]
    routed = [t for t in data.trials if t.routing][:MAX_ROUTING_FIGURES]
    parts += [plot(routing_figure(t), "") for t in routed]
    if len([t for t in data.trials if t.routing]) > len(routed):
        parts.append(
            _note(f"routing of the best {MAX_ROUTING_FIGURES} trials shown; every trial's arrays are in MLflow")
        )
    parts.append(_section("Parameter importance", plot(importance_figure(data), data.importance_note)))
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>switchsweep report "
        f"{html.escape(r.sweep_id)}</title>"
        f"<style>{CSS}</style><script type='text/javascript'>{get_plotlyjs()}</script></head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )


def write_report(data: SweepData, out: str | Path) -> Path:
    return atomic_write_text(out, render(data))


def make_report(
    tracker: Tracker, name: str, sweep_id: str | None, sweeps_dir: Path, out: str | Path | None = None
) -> Path:
    """Write the report of a sweep (default: report.html in its folder) and log it to its parent run,
    so it is one click away in the MLflow UI."""
    data = collect(tracker, name, sweep_id, sweeps_dir)
    path = write_report(data, out or SweepDir(sweeps_dir / data.ranking.sweep_id).report)
    tracker.log_artifact(data.ranking.parent_run_id, path)
    return path
