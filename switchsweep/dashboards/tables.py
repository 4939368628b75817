"""The report's tables: the ranking with each configuration's compute, the class-accuracy note, the
samples at the last evaluation and, for grids, each design against DiT."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence

from switchsweep.config.naming import variant_label
from switchsweep.config.sweep_schema import METRIC_SE
from switchsweep.dashboards.sweep_data import SweepData, TrialData
from switchsweep.results.ranking import LEARNED_ACCURACY, Ranked
from switchsweep.results.text import accuracy_text, num, pm, value_text
from switchsweep.results.trials import is_plain_dit

DESIGN_KEYS = (
    ("model.num_experts", "M"),
    ("model.top_k", "k"),
    ("model.lambda_dp", "lambda_dp"),
    ("model.prior_alpha", "alpha"),
)


def param_float(params: dict[str, str], key: str) -> float:
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
    workers = param_float(parent_params, "sweep.ray.num_workers")
    if _on_gpus(parent_params):
        return wall * workers * param_float(parent_params, "sweep.ray.gpus_per_worker") / 3600
    return wall * workers * param_float(parent_params, "sweep.ray.cpus_per_worker")


def group_cost(data: SweepData, group: Ranked) -> float:
    return sum(compute_cost(t, data.ranking.parent_params) for t in data.trials if t.trial_id in group.trials)


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
        cost = group_cost(data, r)
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
