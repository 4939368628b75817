"""`switchsweep export`: the best trials of a sweep, read from MLflow, as runnable configs plus a ranking.

Each exported YAML is the trial's resolved training config with `train.out_dir` pointed beside it, so
`switchsweep train --config <file>` runs it as it is. Only the training config is written: tracking
URIs, hosts and credentials never are.
"""

from __future__ import annotations

import csv
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from switchsweep.platform.errors import ConfigError
from switchsweep.platform.tracking import PARENT_TAG, ROLE_TAG, SWEEP_TAG, Tracker

RANK_COLUMNS = ("rank", "trial_id", "status", "steps", "variant", "lambda_dp", "prior_alpha", "params_M", "gflops", "steps_per_s")


def variant_label(params: dict[str, str]) -> str:
    """A short name of the design a trial trained, from its flattened config, e.g.
    switch_dit(M=4,k=1,noisy,direct,no-prior) or dit_moe(M=8,k=2,shared=1)+min_snr."""
    name = params.get("model.name", "?")
    extra: list[str] = []
    if name == "switch_dit":
        extra = [f"M={params.get('model.num_experts')}", f"k={params.get('model.top_k')}"]
        if params.get("model.gating", "timestep") != "timestep":
            extra.append(params["model.gating"])
        if params.get("model.integration", "skip_onevec") != "skip_onevec":
            extra.append(params["model.integration"])
        if float(params.get("model.lambda_dp", 1)) == 0:
            extra.append("no-prior")
        if float(params.get("model.balance_loss", 0)) > 0:
            extra.append("balance")
    elif name == "dit_moe":
        extra = [f"M={params.get('model.num_experts')}", f"k={params.get('model.top_k')}", f"shared={params.get('model.shared_experts')}"]
    elif name == "multi_experts":
        extra = [f"n={params.get('model.num_intervals')}"]
    label = f"{name}({','.join(extra)})" if extra else name
    weighting = params.get("train.loss_weighting", "constant")
    return label if weighting == "constant" else f"{label}+{weighting}"


@dataclass
class Ranked:
    rank: int
    trial_id: str
    run_id: str
    status: str
    steps: int
    value: float  # the sweep's metric at the trial's last evaluation
    params: dict[str, str]
    metrics: dict[str, float]


def _parent(tracker: Tracker, experiment_id: str, name: str, sweep_id: str | None):
    filt = f"tags.`{ROLE_TAG}` = 'sweep'" + (f" and tags.`{SWEEP_TAG}` = '{sweep_id}'" if sweep_id else "")
    runs = tracker.search(experiment_id, filt, order_by=["attributes.start_time DESC"])
    if not runs:
        which = f"sweep.id={sweep_id}" if sweep_id else f"a {name} sweep"
        raise ConfigError(f"{which} is not in {tracker.uri}: list sweeps in the MLflow UI (make ui) or run one first")
    return runs[0]


def rank_trials(tracker: Tracker, name: str, sweep_id: str | None = None) -> tuple[str, str, list[Ranked]]:
    """(sweep id, metric, trials best first): trials that trained all their steps ranked by the
    sweep's metric, then trials stopped early or failed (their metric is from fewer steps)."""
    experiment_id = tracker.find_experiment(name)
    if experiment_id is None:
        raise ConfigError(f"sweep={name}: no such sweep in {tracker.uri}: run `switchsweep sweep sweep={name}` first")
    parent = _parent(tracker, experiment_id, name, sweep_id)
    metric, mode = parent.data.tags["switchsweep.metric"], parent.data.tags["switchsweep.mode"]
    ranked = []
    for run in tracker.search(experiment_id, f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'"):
        steps = int(run.data.metrics.get("step", 0))
        value = run.data.metrics.get(metric, math.nan)
        ranked.append(Ranked(0, run.data.tags.get("switchsweep.trial_id", ""), run.info.run_id, run.info.status, steps,
                             value, dict(run.data.params), dict(run.data.metrics)))
    sign = 1.0 if mode == "min" else -1.0

    def key(r: Ranked):
        complete = r.status == "FINISHED" and r.steps >= int(r.params.get("train.steps", 0))
        return (not complete, math.isnan(r.value), sign * r.value if not math.isnan(r.value) else 0.0)

    ranked.sort(key=key)
    for i, r in enumerate(ranked):
        r.rank = i + 1
    return parent.data.tags[SWEEP_TAG], metric, ranked


def _cells(r: Ranked) -> list[str]:
    p, m = r.params, r.metrics
    switch = p.get("model.name") == "switch_dit"

    def num(key: str, scale: float = 1.0, fmt: str = ".4g") -> str:
        return format(m[key] * scale, fmt) if key in m else ""

    return [str(r.rank), r.trial_id, r.status, str(r.steps), variant_label(p),
            f"{float(p['model.lambda_dp']):.4g}" if switch else "", p.get("model.prior_alpha", "") if switch else "",
            num("params", 1e-6, ".3f"), num("gflops", 1.0, ".4f"), num("steps_per_sec", 1.0, ".2f"), f"{r.value:.6g}"]


def write_ranking(ranked: list[Ranked], metric: str, out: Path) -> tuple[Path, Path]:
    header = [*RANK_COLUMNS, metric]
    rows = [_cells(r) for r in ranked]
    table = out / "ranking.csv"
    with open(table, "w", newline="") as fh:  # labels such as switch_dit(M=3,k=2) hold commas: quote them
        csv.writer(fh).writerows([header, *rows])
    md = out / "ranking.md"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c) + " |" for c in rows]
    md.write_text("\n".join(lines) + "\n")
    return table, md


def export_best(tracking_uri: str, name: str, top: int, out: str | Path, sweep_id: str | None = None) -> list[Path]:
    """Write the `top` best trials' configs (rank01-<trial>.yaml, ...) and the full ranking into `out`."""
    if top < 1:
        raise ConfigError(f"top={top} must be >= 1")
    local = tracking_uri.removeprefix("sqlite:///")
    if local != tracking_uri and not Path(local).is_file():  # do not create an empty store just to look
        raise ConfigError(f"sweep={name}: no such sweep: {local} does not exist; run `switchsweep sweep sweep={name}` first")
    tracker = Tracker(tracking_uri)
    sweep_id, metric, ranked = rank_trials(tracker, name, sweep_id)
    if not ranked:
        raise ConfigError(f"sweep {sweep_id} has no trials yet: resume it with `switchsweep sweep sweep={name} --resume`")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for r in ranked[:top]:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                cfg = OmegaConf.load(tracker.download(r.run_id, "config.yaml", tmp))
            except Exception as e:  # a trial whose artifact store is gone: say which, keep the others
                raise ConfigError(f"trial {r.trial_id}: its config.yaml artifact cannot be read ({type(e).__name__}): "
                                  "check the MLflow artifact store") from e
        stem = f"rank{r.rank:02d}-{r.trial_id}"
        cfg.train.out_dir = str(out / stem)
        path = out / f"{stem}.yaml"
        header = f"# {sweep_id} rank {r.rank}: {metric}={r.value:.6g} after {r.steps} steps ({r.status})\n"
        path.write_text(header + OmegaConf.to_yaml(cfg))
        written.append(path)
    write_ranking(ranked, metric, out)
    return written
