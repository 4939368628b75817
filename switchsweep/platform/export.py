"""`switchsweep export`: the best trials of a sweep, read from MLflow, as runnable configs plus a ranking.

Each exported YAML is the trial's resolved training config with `train.out_dir` pointed beside it, so
`switchsweep train --config <file>` runs it as it is. Only the training config is written: tracking
URIs, hosts and credentials never are.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from switchsweep.platform.errors import ConfigError
from switchsweep.platform.naming import variant_label
from switchsweep.platform.ranking import (
    BETTER,
    LEARNED_ACCURACY,
    RACE_OPEN,
    RACE_SEPARATED,
    RACE_SPENT,
    WORSE,
    Ranked,
    TrialRecord,
    best_design,
    compare_to_best,
    race_state,
    rank_groups,
)
from switchsweep.platform.sweep_config import METRIC_SE, REPORTED_METRICS
from switchsweep.platform.sweep_dir import RANKING_CSV, RANKING_MD
from switchsweep.platform.sweep_record import SweepRecord, TrialEnd
from switchsweep.platform.tracking import (
    EVAL_NOISE_ARTIFACT,
    FAILURE_TAG,
    GROUP_TAG,
    METRIC_TAG,
    MODE_TAG,
    OBJECTIVES_TAG,
    SEED_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    Tracker,
    eval_noise_name,
)
from switchsweep.platform.uris import redact, require_store

RANK_COLUMNS = (
    "rank",
    "group",
    "trial_id",
    "seeds",
    "status",
    "steps",
    "variant",
    "lambda_dp",
    "prior_alpha",
    "params_M",
    "gflops",
    "steps_per_s",
    "class_accuracy",
    "class_accuracy_se",
    "learned",
)


def is_plain_dit(params: dict[str, str]) -> bool:
    """The plain DiT of the paper's comparisons (a grid's reference row): DiT with the constant loss weighting."""
    return params.get("model.name") == "dit" and params.get("train.loss_weighting", "constant") == "constant"


def _parent(tracker: Tracker, experiment_id: str, name: str, sweep_id: str | None):
    parent = tracker.parent_run(experiment_id, sweep_id)
    if parent is None:
        which = f"sweep.id={sweep_id}" if sweep_id else f"a {name} sweep"
        raise ConfigError(
            f"{which} is not in {redact(tracker.uri)}: list sweeps in the MLflow UI (make ui) or run one first"
        )
    return parent


@dataclass
class SweepRanking:
    sweep_id: str
    metric: str
    objectives: list[str]
    ranked: list[Ranked]  # best first
    parent_run_id: str = ""
    parent_params: dict[str, str] = field(default_factory=dict)  # the sweep's settings as logged
    ends: dict[str, TrialEnd] = field(default_factory=dict)  # each trial's, as the ranking read them

    @property
    def best(self) -> Ranked | None:
        return best_design(self.ranked)

    @property
    def baseline(self) -> Ranked | None:
        return next((r for r in self.ranked if r.baseline), None)


def _pm(diff: float, half_width: float) -> str:
    return f"{diff:+.4g}" + ("" if math.isnan(half_width) else f" +- {half_width:.2g}")


def accuracy_text(r: Ranked) -> str:
    """Class accuracy as a percentage, e.g. 97.2%, or "" where no classifier scored the samples."""
    return "" if math.isnan(r.accuracy) else f"{100 * r.accuracy:.1f}%"


def _raise_budget(r: Ranked) -> str:
    p = r.params
    steps, lr = p.get("train.steps", "?"), p.get("train.lr", "?")
    return f"raise train.steps (now {steps}) or train.lr (now {lr}) and sweep again"


def learned_sentence(ranking: SweepRanking) -> str:
    """Which finished configurations have not learned to draw their classes (`Ranked.learned`), and what to
    raise ("" where every one has, or no classifier scores the samples)."""
    done = [r for r in ranking.ranked if r.complete]
    behind = [r for r in done if not r.learned]
    if not behind:
        return ""
    names = ", ".join(f"{r.group} {variant_label(r.params)} ({accuracy_text(r)})" for r in behind)
    share = f"{100 * LEARNED_ACCURACY:.0f}%"
    if len(behind) == len(done):
        return (
            f"No configuration has learned to draw its classes (class accuracy below {share}: {names}), so no "
            f"winner is named: {_raise_budget(behind[0])}."
        )
    return f"Not learned (class accuracy below {share}), not ranked against the rest: {names}."


def verdict_sentences(ranking: SweepRanking) -> list[str]:
    """The closing lines of a sweep, in the console, ranking.md and the report."""
    return [x for x in (learned_sentence(ranking), baseline_sentence(ranking), race_sentence(ranking)) if x]


def baseline_sentence(ranking: SweepRanking) -> str:
    """One sentence: whether the best design beats the baseline, by how much, with its paired 95%
    interval and what the interval holds ("" without a baseline, or where either has not learned)."""
    best, base, metric = ranking.best, ranking.baseline, ranking.metric
    if base is None:
        return ""
    label = variant_label(base.params)
    if not base.complete or math.isnan(base.value):
        return f"The baseline {label} did not finish ({base.status}): no comparison with it."
    if not base.learned or (best is not None and best.complete and not best.learned):
        who = [x for x in (best, base) if x is not None and x.complete and not x.learned]
        return (
            f"No comparison with the baseline {label}: {' and '.join(f'{x.group} ({accuracy_text(x)})' for x in who)} "
            f"{'has' if len(who) == 1 else 'have'} not learned to draw {'its' if len(who) == 1 else 'their'} classes; "
            f"{_raise_budget(who[0])}."
        )
    if best is None or not best.complete or math.isnan(best.base_diff):
        return f"No design finished to compare with the baseline {label} ({metric} {value_text(base)})."
    how = {BETTER: "beats", WORSE: "is worse than"}.get(best.vs_baseline, "does not separate from")
    return (
        f"The best design, {best.group} {variant_label(best.params)}, {how} the baseline {label}: {metric} "
        f"{best.value:.4g} against {base.value:.4g}, a difference of {_pm(best.base_diff, best.base_half_width)} "
        f"(95%, {best.base_basis})."
    )


def race_sentence(ranking: SweepRanking) -> str:
    """What racing (`sweep.race`) ended with: the best separated from the runner-up (or the baseline), or
    its budget spent."""
    p = ranking.parent_params
    seeds, budget = int(p.get("sweep.seeds", 1)), int(p.get("sweep.race_seeds", 0))
    state, leaders = race_state(ranking.ranked, seeds, int(p.get("sweep.race", 0)), budget)
    if not state:
        return ""
    if state == RACE_OPEN and not leaders:
        return "Racing has not run yet: the search is not over."
    lead, other = leaders
    versus = "the baseline" if other.baseline else f"the runner-up {other.group}"
    extra = min(lead.seeds, other.seeds) - seeds
    if state == RACE_SEPARATED:
        return f"Racing separated {lead.group} from {versus} at 95% ({extra} extra seed(s) each, {lead.seeds} in all)."
    ended = "its budget is spent" if state == RACE_SPENT else "it was interrupted"
    return f"Racing did not separate {lead.group} from {versus} at 95%: {ended} ({extra} of {budget} extra seeds each)."


def rank_trials(
    tracker: Tracker, name: str, sweep_id: str | None = None, sweeps_dir: Path | None = None
) -> SweepRanking:
    """The sweep's configurations best first (see `platform.ranking`), from its MLflow child runs and how
    its record (in `sweeps_dir`, the folder of the sweeps of that name) says each trial ended. A sweep
    whose record is not on this machine (a cluster's sweep ranked from a laptop) is ranked from the run
    statuses that mirror it."""
    experiment_id = tracker.find_experiment(name)
    if experiment_id is None:
        raise ConfigError(
            f"sweep={name}: no such sweep in {redact(tracker.uri)}: run `switchsweep sweep sweep={name}` first"
        )
    parent = _parent(tracker, experiment_id, name, sweep_id)
    tags = parent.data.tags
    metric, mode = tags[METRIC_TAG], tags[MODE_TAG]
    objectives = [o for o in tags.get(OBJECTIVES_TAG, "").split(",") if o]
    folder = sweeps_dir / tags[SWEEP_TAG] if sweeps_dir is not None else None
    ends = SweepRecord.load(folder).ends() if folder is not None and SweepRecord.exists(folder) else None
    records = []
    for run in tracker.children(experiment_id, parent.info.run_id):
        t = run.data.tags
        trial_id = t.get(TRIAL_TAG, "")
        records.append(
            TrialRecord(
                trial_id=trial_id,
                run_id=run.info.run_id,
                end=ends.get(trial_id, TrialEnd.RUNNING) if ends is not None else TrialEnd.from_mlflow(run.info.status),
                steps=int(run.data.metrics.get("step", 0)),
                group=t.get(GROUP_TAG, t.get(TRIAL_TAG, "")),
                seed_index=int(t.get(SEED_TAG, 0)),
                params=dict(run.data.params),
                metrics=dict(run.data.metrics),
                failure=t.get(FAILURE_TAG, ""),
            )
        )
    ranked = rank_groups(
        records, metric, mode, METRIC_SE.get(metric), objectives, [REPORTED_METRICS[o] for o in objectives]
    )
    if not objectives:
        reference = next((r.group for r in ranked if is_plain_dit(r.params)), None)
        compare_to_best(
            ranked,
            _paired_noise(tracker, metric, {r.trial_id: r for r in records}),
            mode,
            reference if parent.data.params.get("sweep.search") == "grid" else None,
        )
    return SweepRanking(
        tags[SWEEP_TAG],
        metric,
        objectives,
        ranked,
        parent.info.run_id,
        dict(parent.data.params),
        {r.trial_id: r.end for r in records},
    )


def _paired_noise(tracker: Tracker, metric: str, records: dict[str, TrialRecord]) -> Callable[[str, str], float]:
    """The evaluation noise of the difference of two trials' last evaluations (`trainers.evaluation.metrics.noise_sd`
    of their paired noise values, as the trials logged them), NaN where either lacks them."""

    @functools.cache
    def values(trial: str) -> np.ndarray | None:
        r = records.get(trial)
        if r is None or metric not in METRIC_SE:
            return None
        path = f"{EVAL_NOISE_ARTIFACT}/{eval_noise_name(r.steps)}"
        if not tracker.has_artifact(r.run_id, path):
            return None
        with tempfile.TemporaryDirectory() as tmp:
            logged = json.loads(tracker.download(r.run_id, path, tmp).read_text())
        return np.asarray(logged[metric]) if metric in logged else None

    def paired(a: str, b: str) -> float:
        va, vb = values(a), values(b)
        if va is None or vb is None or va.shape != vb.shape:
            return math.nan
        return float(np.std(va - vb, ddof=1))

    return paired


def value_text(r: Ranked) -> str:
    """mean +- 95% half-width, e.g. 159.1 +- 6.3, or the value alone when its noise is unknown."""
    if math.isnan(r.value):
        return "nan"
    return f"{r.value:.4g}" if math.isnan(r.half_width) else f"{r.value:.4g} +- {r.half_width:.2g}"


def _cells(r: Ranked, objectives: list[str]) -> list[str]:
    p, m = r.params, r.metrics
    switch = p.get("model.name") == "switch_dit"

    def num(value: float, fmt: str) -> str:
        return "" if math.isnan(value) else format(value, fmt)

    return [
        str(r.rank),
        r.group,
        r.trial_id,
        str(r.seeds),
        r.status,
        str(r.steps),
        variant_label(p),
        f"{float(p['model.lambda_dp']):.4g}" if switch else "",
        p.get("model.prior_alpha", "") if switch else "",
        num(m.get("params", math.nan) * 1e-6, ".3f"),
        num(m.get("gflops", math.nan), ".4f"),
        num(m.get("steps_per_sec", math.nan), ".2f"),
        num(r.accuracy, ".3f"),
        num(r.accuracy_se, ".3f"),
        "" if math.isnan(r.accuracy) else ("yes" if r.learned else "not learned"),
        num(r.value, ".6g"),
        num(r.std, ".3g"),
        num(r.noise, ".3g"),
        num(r.half_width, ".3g"),
        r.vs_best,
        num(r.diff, "+.4g"),
        num(r.diff_half_width, ".3g"),
        r.diff_basis,
        r.vs_baseline,
        num(r.base_diff, "+.4g"),
        num(r.base_half_width, ".3g"),
        *([("yes" if r.pareto else "")] if objectives else []),
        *(num(r.objectives[o], ".6g") for o in objectives[1:]),
        r.failure,
    ]


def write_ranking(ranking: SweepRanking, out: Path) -> tuple[Path, Path]:
    """ranking.csv (every column, machine-readable) and ranking.md (the same rows for people)."""
    metric, objectives = ranking.metric, ranking.objectives
    header = [
        *RANK_COLUMNS,
        metric,
        f"{metric}_sd_seeds",
        f"{metric}_noise",
        f"{metric}_ci95",
        "vs_best",
        "diff_to_best",
        "diff_ci95",
        "diff_basis",
        "vs_baseline",
        "diff_to_baseline",
        "baseline_ci95",
        *(["pareto"] if objectives else []),
        *(f"{o}_mean" for o in objectives[1:]),
        "failure",
    ]
    rows = [_cells(r, objectives) for r in ranking.ranked]
    table = out / RANKING_CSV
    with open(table, "w", newline="") as fh:  # labels such as switch_dit(M=3,k=2) hold commas: quote them
        csv.writer(fh).writerows([header, *rows])
    md = out / RANKING_MD
    lines = [
        f"{metric}: mean over seeds; ci95: half-width of its 95% interval (t over seeds, or 1.96 x the "
        f"metric's evaluation noise with one seed, which leaves out training-seed noise); diff_to_best: the "
        "difference to the best, paired seed by seed, with its 95% half-width (diff_ci95) and what that interval "
        "holds (diff_basis); vs_best: worse where that interval leaves out zero, else tied; the same against the "
        "sweep's baseline (group baseline) where it has one: diff_to_baseline, baseline_ci95, vs_baseline. "
        "kid_x1e3: KID x 10^3. class_accuracy: the share of samples the data's classifier assigns to the class "
        f"they were drawn for (class_accuracy_se: its evaluation noise); below {LEARNED_ACCURACY:.0%} a "
        "configuration has not learned (learned: not learned) and is ranked after those that have.",
        "",
        *(part for line in verdict_sentences(ranking) for part in (line, "")),
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    md.write_text("\n".join(lines) + "\n")
    return table, md


def export_best(
    tracking_uri: str,
    name: str,
    top: int,
    out: str | Path,
    sweep_id: str | None = None,
    sweeps_dir: Path | None = None,
) -> list[Path]:
    """Write the `top` best configurations (rank01-<trial>.yaml, ...; their lowest seed's config) and
    the full ranking into `out`. A multi-objective sweep writes its Pareto set (pareto01-<trial>.yaml, ...)."""
    if top < 1:
        raise ConfigError(f"top={top} must be >= 1")
    tracker = Tracker(require_store(tracking_uri))
    ranking = rank_trials(tracker, name, sweep_id, sweeps_dir)
    if not ranking.ranked:
        raise ConfigError(
            f"sweep {ranking.sweep_id} has no trials yet: resume it with `switchsweep sweep sweep={name} --resume`"
        )
    designs = [r for r in ranking.ranked if not r.baseline]  # the baseline is compared with, not exported
    chosen = [r for r in designs if r.pareto] if ranking.objectives else designs[:top]
    prefix = "pareto" if ranking.objectives else "rank"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, r in enumerate(chosen, 1):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                cfg = OmegaConf.load(tracker.download(r.run_id, "config.yaml", tmp))
            except Exception as e:  # a trial whose artifact store is gone: say which, keep the others
                raise ConfigError(
                    f"trial {r.trial_id}: its config.yaml artifact cannot be read ({type(e).__name__}): "
                    "check the MLflow artifact store"
                ) from e
        stem = f"{prefix}{i:02d}-{r.trial_id}"
        cfg.train.out_dir = str(out / stem)
        path = out / f"{stem}.yaml"
        objectives = "".join(f", {o}={r.objectives[o]:.6g}" for o in ranking.objectives[1:])
        header = (
            f"# {ranking.sweep_id} rank {r.rank}: {ranking.metric}={value_text(r)} over {r.seeds} seed(s){objectives} "
            f"after {r.steps} steps ({r.status})\n"
        )
        path.write_text(header + OmegaConf.to_yaml(cfg))
        written.append(path)
    write_ranking(ranking, out)
    return written
