"""The report's figures: the search space coloured by the metric, quality against compute, learning
curves, routing against the prior over training, and the study's importances."""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from switchsweep.config.naming import variant_label
from switchsweep.config.sweep_schema import ACCURACY_METRIC as ACCURACY
from switchsweep.config.sweep_schema import REPORTED_METRICS
from switchsweep.dashboards.sweep_data import SweepData, TrialData
from switchsweep.dashboards.tables import DESIGN_KEYS, compute_unit, group_cost, param_float
from switchsweep.results.ranking import pareto_front

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def _color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def parallel_coordinates(data: SweepData) -> go.Figure | None:
    """Every Switch-DiT configuration with a value, over (M, k, lambda_dp, alpha), coloured by the metric."""
    rows = [r for r in data.ranking.ranked if r.params.get("model.name") == "switch_dit" and math.isfinite(r.value)]
    if len(rows) < 2:
        return None
    dims = []
    for key, label in DESIGN_KEYS:
        values = [param_float(r.params, key) for r in rows]
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
        f"{compute_unit(data.ranking.parent_params)} (all seeds)": [group_cost(data, r) for r in rows],
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
    experts = int(param_float(t.params, "model.num_experts"))
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
