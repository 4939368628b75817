"""The HTML sweep report: one self-contained file (plotly's JavaScript embedded, so it opens offline)
with the ranking, the search space coloured by the metric, quality against compute, learning curves,
routing against the prior over training, the study's importances and, for grids, each design's
paired difference to DiT."""

from __future__ import annotations

import base64
import html
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from switchsweep.config.naming import variant_label
from switchsweep.config.sweep_schema import ACCURACY_METRIC as ACCURACY
from switchsweep.config.sweep_schema import METRIC_SE, REPORTED_METRICS
from switchsweep.dashboards.sweep_data import SweepData, TrialData, collect
from switchsweep.platform.files import atomic_write_text
from switchsweep.platform.sweep_dir import SweepDir
from switchsweep.platform.tracking import Tracker
from switchsweep.results.ranking import LEARNED_ACCURACY, Ranked, pareto_front
from switchsweep.results.text import accuracy_text, num, pm, value_text
from switchsweep.results.trials import is_plain_dit
from switchsweep.results.verdicts import verdict_sentences

DESIGN_KEYS = (
    ("model.num_experts", "M"),
    ("model.top_k", "k"),
    ("model.lambda_dp", "lambda_dp"),
    ("model.prior_alpha", "alpha"),
)
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
MAX_ROUTING_FIGURES = 16  # the best trials' routing; more makes the page slow to open


def _float(params: dict[str, str], key: str) -> float:
    try:
        return float(params[key])
    except (KeyError, ValueError):
        return math.nan


def _on_gpus(parent_params: dict[str, str]) -> bool:
    return parent_params.get("sweep.ray.use_gpu") == "True"


def compute_unit(parent_params: dict[str, str]) -> str:
    return "GPU-hours" if _on_gpus(parent_params) else "CPU-seconds"


def compute_cost(trial: TrialData, parent_params: dict[str, str]) -> float:
    """One trial's compute in `compute_unit`: wall time x workers x each worker's GPUs (hours) or CPUs (seconds)."""
    wall = trial.metrics.get("trial_wall_s", math.nan)
    workers = _float(parent_params, "sweep.ray.num_workers")
    if _on_gpus(parent_params):
        return wall * workers * _float(parent_params, "sweep.ray.gpus_per_worker") / 3600
    return wall * workers * _float(parent_params, "sweep.ray.cpus_per_worker")


def _group_cost(data: SweepData, group: Ranked) -> float:
    return sum(compute_cost(t, data.ranking.parent_params) for t in data.trials if t.trial_id in group.trials)


def _color(i: int) -> str:
    return COLORS[i % len(COLORS)]


# -- tables ---------------------------------------------------------------------------------------
def _table(header: Sequence[str], rows: Iterable[Sequence[str]], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def ranking_table(data: SweepData) -> str:
    metric = data.metric
    noise = METRIC_SE.get(metric, "")
    unit = compute_unit(data.ranking.parent_params)
    failed = any(r.failure for r in data.ranking.ranked)  # a column of reasons only where there is one
    base = data.ranking.baseline
    classified = any(math.isfinite(r.accuracy) for r in data.ranking.ranked)
    header = [
        "rank",
        "design",
        "seeds",
        "status",
        "steps",
        *(["class accuracy", "its evaluation noise"] if classified else []),
        f"{metric} mean +- 95%",
        "sd over seeds",
        f"{noise or 'metric'} (evaluation noise)",
        "vs best",
        "minus the best, paired +- 95%",
        *(["vs baseline", "minus the baseline, paired +- 95%"] if base else []),
        "params (M)",
        "GFLOPs",
        "steps/s",
        unit,
        *(["pareto"] if data.ranking.objectives else []),
        *(["why it failed"] if failed else []),
    ]
    rows = []
    for r in data.ranking.ranked:
        cost = _group_cost(data, r)
        rows.append(
            [
                str(r.rank),
                variant_label(r.params) + (" (baseline)" if r.baseline else ""),
                str(r.seeds),
                r.status,
                str(r.steps),
                *(
                    [accuracy_text(r), num(100 * r.accuracy_se, ".1f") + ("%" if math.isfinite(r.accuracy_se) else "")]
                    if classified
                    else []
                ),
                value_text(r),
                num(r.std, ".3g"),
                num(r.noise, ".3g"),
                r.vs_best,
                pm(r.diff, r.diff_half_width),
                *([r.vs_baseline, pm(r.base_diff, r.base_half_width)] if base else []),
                num(r.metrics.get("params", math.nan) * 1e-6, ".3f"),
                num(r.metrics.get("gflops", math.nan), ".4f"),
                num(r.metrics.get("steps_per_sec", math.nan), ".2f"),
                num(cost, ".3g"),
                *(["yes" if r.pareto else ""] if data.ranking.objectives else []),
                *([r.failure] if failed else []),
            ]
        )
    return _table(header, rows, "ranking")


def accuracy_note(data: SweepData) -> str:
    """What class accuracy means here, or why the ranking has none."""
    if any(math.isfinite(r.accuracy) for r in data.ranking.ranked):
        return (
            "Class accuracy: the share of samples the data's classifier assigns to the class they were drawn for "
            f"(chance: 1 in the number of classes); below {LEARNED_ACCURACY:.0%} a configuration has not learned "
            "(vs best: not learned) and ranks after those that have. KID is x 10^3."
        )
    net = data.ranking.parent_params.get("eval.feature_net", "?")
    return (
        f"No class accuracy: the feature network ({net}) does not classify this dataset's classes, so nothing says "
        "whether a configuration has learned; look at its samples. KID is x 10^3."
    )


def samples_table(data: SweepData) -> str | None:
    """Each configuration's last sample grid (its first seed's), one column per class; None without any."""
    ranked = {r.group: r for r in data.ranking.ranked}
    rows = []
    for t in data.trials:
        if t.samples is None:
            continue
        step, png = t.samples
        r = ranked[t.group]
        label = html.escape(variant_label(r.params) + (" (baseline)" if r.baseline else ""))
        score = html.escape(", ".join(x for x in (accuracy_text(r), r.vs_best) if x))
        image = f'<img alt="samples of {label}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        rows.append(f"<tr><td>{r.rank}</td><td>{label}</td><td>{step}</td><td>{score}</td><td>{image}</td></tr>")
    if not rows:
        return None
    head = "".join(f"<th>{h}</th>" for h in ("rank", "design", "step", "class accuracy", "samples, a class a column"))
    return f'<table class="samples"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def design_table(data: SweepData) -> str | None:
    """Each complete design's difference to the grid's plain DiT, paired seed by seed (`compare_to_best`);
    None without a DiT row."""
    complete = [r for r in data.ranking.ranked if r.complete]
    base = next((r for r in complete if is_plain_dit(r.params)), None)
    if base is None:
        return None
    rows = []
    for r in complete:
        if r is base:
            rows.append([variant_label(r.params), str(r.seeds), value_text(r), "baseline", "", ""])
            continue
        paired = (
            ""
            if math.isnan(r.base_diff)
            else f"{r.base_diff:+.4g}" + ("" if math.isnan(r.base_half_width) else f" +- {r.base_half_width:.2g}")
        )
        rows.append(
            [variant_label(r.params), str(r.seeds), value_text(r), paired, r.vs_baseline or "unknown", r.base_basis]
        )
    metric = data.metric
    return _table(
        [
            "design",
            "seeds",
            f"{metric} mean +- 95%",
            f"{metric} - DiT, paired (+- 95%)",
            "vs DiT",
            "what the interval holds",
        ],
        rows,
        "designs",
    )


# -- figures --------------------------------------------------------------------------------------
def parallel_coordinates(data: SweepData) -> go.Figure | None:
    """Every Switch-DiT configuration with a value, over (M, k, lambda_dp, alpha), coloured by the metric."""
    rows = [r for r in data.ranking.ranked if r.params.get("model.name") == "switch_dit" and math.isfinite(r.value)]
    if len(rows) < 2:
        return None
    dims = []
    for key, label in DESIGN_KEYS:
        values = [_float(r.params, key) for r in rows]
        dims.append(
            {"label": label, "values": values, **({"tickvals": sorted(set(values))} if label in ("M", "k") else {})}
        )
    dims.append({"label": "steps", "values": [r.steps for r in rows]})
    reverse = REPORTED_METRICS[data.metric] == "min"  # the better end of the colour scale is yellow either way
    fig = go.Figure(
        go.Parcoords(
            line={
                "color": [r.value for r in rows],
                "colorscale": "Viridis",
                "reversescale": reverse,
                "showscale": True,
                "colorbar": {"title": {"text": data.metric}},
            },
            dimensions=dims,
        )
    )
    fig.update_layout(
        title=f"Search space, one line per configuration, coloured by {data.metric} (mean over seeds)",
        height=420,
        margin={"l": 60, "r": 60, "t": 80, "b": 30},
    )
    return fig


def pareto_figure(data: SweepData) -> go.Figure | None:
    """The metric against GFLOPs and against compute spent, complete configurations only, with each
    panel's Pareto front (no other configuration is better in both)."""
    rows = [r for r in data.ranking.ranked if r.complete and math.isfinite(r.value)]
    if not rows:
        return None
    mode = REPORTED_METRICS[data.metric]
    xs = {
        "GFLOPs per image forward": [r.metrics.get("gflops", math.nan) for r in rows],
        f"{compute_unit(data.ranking.parent_params)} (all seeds)": [_group_cost(data, r) for r in rows],
    }
    fig = make_subplots(rows=1, cols=2, subplot_titles=list(xs))
    for col, (axis, x) in enumerate(xs.items(), 1):
        labels = [variant_label(r.params) for r in rows]
        err = [0.0 if math.isnan(r.half_width) else r.half_width for r in rows]
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[r.value for r in rows],
                mode="markers",
                name="configurations",
                text=labels,
                error_y={"type": "data", "array": err, "visible": True},
                marker={"color": "#1f77b4", "size": 9},
                hovertemplate="%{text}<br>%{x:.4g}, %{y:.4g}<extra></extra>",
                showlegend=col == 1,
            ),
            row=1,
            col=col,
        )
        keep = [i for i, v in enumerate(x) if math.isfinite(v)]
        on = pareto_front([[rows[i].value, x[i]] for i in keep], [mode, "min"])
        front = sorted((x[i], rows[i].value, labels[i]) for i, f in zip(keep, on) if f)
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in front],
                y=[p[1] for p in front],
                text=[p[2] for p in front],
                mode="lines+markers",
                name="Pareto front",
                line={"color": "#d62728", "shape": "hv"},
                marker={"color": "#d62728", "size": 11, "symbol": "diamond-open"},
                hovertemplate="%{text}<extra>Pareto</extra>",
                showlegend=col == 1,
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text=axis, row=1, col=col)
        fig.update_yaxes(title_text=f"{data.metric} ({mode} is better)", row=1, col=col)
    fig.update_layout(
        title=f"{data.metric} against compute (error bars: 95% interval; stopped trials left out)", height=420
    )
    return fig


def learning_curves(data: SweepData) -> go.Figure | None:
    """Training loss, the sweep's metric and, where the samples were classified, their class accuracy, of
    every trial on shared axes; ASHA's stops marked. A metric fixed before training (gflops, params:
    logged at step 0 only) has no curve, so its stops are marked on the loss."""
    metric = data.metric
    if not any(t.curves.get("loss") or t.curves.get(metric) for t in data.trials):
        return None
    steps = [s for t in data.trials for s, _ in t.curves.get(metric, [])]
    fixed = bool(steps) and max(steps) == 0
    classified = metric != ACCURACY and any(t.curves.get(ACCURACY) for t in data.trials)
    keys = ["loss", *([] if fixed else [metric]), *([ACCURACY] if classified else [])]
    names = {"loss": "training loss", metric: f"{metric} at each evaluation", ACCURACY: "class accuracy"}
    stop_col = keys.index("loss" if fixed else metric) + 1
    fig = make_subplots(rows=1, cols=len(keys), subplot_titles=[names[k] for k in keys])
    for i, t in enumerate(data.trials):
        color = _color(i)
        for col, key in enumerate(keys, 1):
            points = t.curves.get(key, [])
            fig.add_trace(
                go.Scatter(
                    x=[s for s, _ in points],
                    y=[v for _, v in points],
                    mode="lines" if key == "loss" else "lines+markers",
                    name=t.name,
                    legendgroup=t.trial_id,
                    showlegend=col == 1,
                    line={"color": color},
                ),
                row=1,
                col=col,
            )
        last = t.curves.get(keys[stop_col - 1], [])
        if t.stopped_early and last:
            fig.add_trace(
                go.Scatter(
                    x=[last[-1][0]],
                    y=[last[-1][1]],
                    mode="markers",
                    legendgroup=t.trial_id,
                    name="stopped by ASHA",
                    showlegend=False,
                    hovertemplate=f"{t.name}: stopped by ASHA<extra></extra>",
                    marker={"symbol": "x", "size": 14, "color": color, "line": {"width": 2}},
                ),
                row=1,
                col=stop_col,
            )
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(type="log", row=1, col=1)
    title = "Learning curves (x: stopped early by ASHA)"
    if fixed:
        title += f"; {metric} is fixed before training, so it has no curve"
    fig.update_layout(title=title, height=460)
    return fig


def routing_figure(t: TrialData) -> go.Figure | None:
    """w_gate against the prior matched to it at each evaluation, a slider over the steps."""
    if not t.routing:
        return None
    experts = int(_float(t.params, "model.num_experts"))
    fig = make_subplots(
        rows=1,
        cols=2,
        shared_yaxes=True,
        subplot_titles=("w_gate: top-k selection", "diffusion prior, matched to w_gate"),
    )
    last = len(t.routing) - 1
    for i, (step, gate, prior) in enumerate(t.routing):
        bins = gate.shape[0]
        y = [(b + 0.5) * 1000 / bins for b in range(bins)]
        for col, z in ((1, gate), (2, prior)):
            fig.add_trace(
                go.Heatmap(
                    z=z,
                    y=y,
                    zmin=0,
                    zmax=1,
                    colorscale="Greys",
                    visible=i == last,
                    showscale=col == 2,
                    colorbar={"title": {"text": "share of t"}},
                    name=f"step {step}",
                    hovertemplate="unit %{x}, t~%{y:.0f}: %{z:.2f}<extra></extra>",
                ),
                row=1,
                col=col,
            )
    units = t.routing[0][1].shape[1]
    for col in (1, 2):
        for b in range(experts, units, experts):  # block boundaries (units are block-major)
            fig.add_vline(x=b - 0.5, line={"color": "#d62728", "width": 1}, row=1, col=col)
        fig.update_xaxes(title_text="expert unit (block-major)", row=1, col=col)
    fig.update_yaxes(title_text="timestep t", autorange="reversed", row=1, col=1)
    steps = []
    for i, (step, _, _) in enumerate(t.routing):
        visible = [j // 2 == i for j in range(2 * len(t.routing))]
        steps.append(
            {
                "method": "update",
                "label": str(step),
                "args": [{"visible": visible}, {"title.text": f"{t.name}: step {step}"}],
            }
        )
    fig.update_layout(
        title=f"{t.name}: step {t.routing[last][0]}",
        height=440,
        sliders=[{"active": last, "steps": steps, "currentvalue": {"prefix": "evaluation step "}, "pad": {"t": 50}}],
    )
    return fig


def jsd_figure(data: SweepData) -> go.Figure | None:
    """The routing's divergence from the prior (the prior loss over all timesteps) at each evaluation."""
    trials = [(i, t) for i, t in enumerate(data.trials) if t.curves.get("routing_jsd")]
    if not trials:
        return None
    fig = go.Figure()
    for i, t in trials:
        points = t.curves["routing_jsd"]
        fig.add_trace(
            go.Scatter(
                x=[s for s, _ in points],
                y=[v for _, v in points],
                mode="lines+markers",
                name=t.name,
                line={"color": _color(i)},
            )
        )
    fig.update_layout(
        title="JSD of the gates to the matched prior over training (all timesteps)",
        xaxis_title="step",
        yaxis_title="JSD (nats)",
        height=380,
    )
    return fig


def importance_figure(data: SweepData) -> go.Figure | None:
    if not data.importances:
        return None
    items = sorted(data.importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(
        go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h", marker={"color": "#2ca02c"})
    )
    fig.update_layout(
        title=f"Parameter importance for {data.metric} ({data.importance_note})",
        xaxis_title="importance",
        height=120 + 40 * len(items),
        margin={"l": 160},
    )
    return fig


# -- the page -------------------------------------------------------------------------------------
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
