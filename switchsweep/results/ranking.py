"""Ranking a sweep's configurations with their noise: seeds aggregated, intervals, ties with the best,
and the Pareto set of multi-objective sweeps. Pure functions of trial records (no MLflow here).

A configuration (group) is one sampled point or grid row, run once per seed. Its value is the mean
over seeds of the metric at each trial's last evaluation. Its 95% interval is
- with n >= 2 seeds: mean +- t(0.975, n-1) * sd / sqrt(n) (seed-to-seed variation, which includes
  the metric's own sampling noise);
- with one seed: value +- 1.96 * the metric's evaluation noise where the trial reports it (its
  standard error over the generated samples, `kid_x1e3_se` / `fid_se`), else unknown: training-seed noise
  is then not included.
A complete configuration whose interval overlaps the best one's is "tied": not separable from it.
Where the sweep's tracking can pair evaluations (`compare_to_best`), the verdict comes instead from
the configuration's difference to the best, paired seed by seed: the same train.seed and eval.seed
give both the same batches, labels and initial noise, so much of the noise cancels. A sweep's baseline
(`BASELINE_GROUP`) is ranked with the rest but is never the best: every configuration is also
compared with it the same way.

A configuration whose samples the data's classifier assigns to their own class less often than
`LEARNED_ACCURACY` (the mean over seeds of `class_accuracy`) has not learned its task: its metric
ranks noise, so it ranks after every configuration that has learned, is marked `not learned`, and is
never declared better, worse or tied. Where no classifier scores the samples (latents scored by
Inception) nothing is marked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from scipy import stats

from switchsweep.config.sweep_schema import ACCURACY_METRIC
from switchsweep.platform.sweep_record import TrialEnd

BEST, TIED, WORSE, BETTER, NOT_LEARNED = "best", "tied", "worse", "better", "not learned"
# Below this class accuracy a model has not learned to draw its classes (benchmarks/learning.py: every
# evaluation at or above it had KID x 10^3 of at most 70, every one below it 90 or more, and KID rose with
# training beyond its noise only at 18% accuracy or less).
LEARNED_ACCURACY = 0.8
BASELINE_GROUP = "baseline"  # the group of a sweep's baseline (`sweep.baseline`): compared with, never the best


@dataclass
class TrialRecord:
    """One trial: how it ended (the sweep's record decides), steps trained, its configuration and seed,
    last metrics."""

    trial_id: str
    run_id: str
    end: TrialEnd
    steps: int
    group: str
    seed_index: int
    params: dict[str, str]
    metrics: dict[str, float]
    failure: str = ""  # why it failed (FAILED only)

    @property
    def complete(self) -> bool:
        return self.end is TrialEnd.FINISHED


@dataclass
class Ranked:
    """One configuration, best first. `trial_id`/`run_id`/`params` are those of its lowest seed."""

    rank: int
    group: str
    trial_id: str
    run_id: str
    end: TrialEnd  # finished only if every seed finished (`TrialEnd.of_group`)
    steps: int  # the fewest steps any seed trained
    value: float  # mean over seeds of the metric
    std: float  # sd over seeds (nan with one seed)
    noise: float  # mean over seeds of the metric's evaluation noise (its standard error, e.g. kid_x1e3_se; nan if none)
    half_width: float  # of the 95% interval (nan: unknown)
    seeds: int
    params: dict[str, str]
    metrics: dict[str, float]
    trials: list[str] = field(default_factory=list)
    values: list[float] = field(default_factory=list)  # the metric of each seed, in seed order
    objectives: dict[str, float] = field(default_factory=dict)  # mean over seeds, multi-objective sweeps
    vs_best: str = ""  # best / tied / worse (better: the baseline beats the best design) among complete ones
    diff: float = math.nan  # minus the best, paired seed by seed (`compare_to_best`)
    diff_half_width: float = math.nan  # of its 95% interval
    diff_basis: str = ""  # what that interval holds
    vs_baseline: str = ""  # better / tied / worse than the sweep's baseline, from the interval below
    base_diff: float = math.nan  # minus the baseline, paired seed by seed
    base_half_width: float = math.nan
    base_basis: str = ""
    pareto: bool = False
    failure: str = ""  # why its first failed seed failed
    accuracy: float = math.nan  # mean over seeds of class_accuracy (nan: no classifier scores the samples)
    accuracy_se: float = math.nan  # mean over seeds of its evaluation noise

    @property
    def complete(self) -> bool:
        return self.end is TrialEnd.FINISHED

    @property
    def learned(self) -> bool:
        """False only where a classifier says its samples are not yet of their classes (`LEARNED_ACCURACY`)."""
        return not self.accuracy < LEARNED_ACCURACY

    @property
    def status(self) -> str:
        """How rankings print it: MLflow's word for the end (FINISHED, KILLED, FAILED, RUNNING)."""
        return self.end.mlflow_status

    @property
    def baseline(self) -> bool:
        return self.group == BASELINE_GROUP


def interval_half_width(values: Sequence[float], noise: float) -> float:
    """Half-width of the 95% interval of a configuration's mean value (see the module docstring)."""
    n = len(values)
    if n >= 2:
        return float(stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n))
    return 1.96 * noise if math.isfinite(noise) else math.nan


def paired_difference(
    values: Sequence[float],
    baseline: Sequence[float],
    noise: float = math.nan,
    baseline_noise: float = math.nan,
    paired_noise: float = math.nan,
) -> tuple[float, float]:
    """(mean, 95% half-width) of values[i] - baseline[i], pairing seed i with seed i (the same
    train.seed, so the same batches and noise). With two pairs or more, a t interval over the
    differences, which hold training-seed and evaluation noise both. With one pair, 1.96 x the
    evaluation noise of the difference: `paired_noise` where known (the sd of the two evaluations'
    paired noise values: the same eval.seed gives both models the same labels and initial noise), else
    the unpaired sqrt(noise^2 + baseline_noise^2), larger wherever the two evaluations move together."""
    diffs = [a - b for a, b in zip(values, baseline) if math.isfinite(a) and math.isfinite(b)]
    if not diffs:
        return math.nan, math.nan
    if len(diffs) >= 2:
        return float(np.mean(diffs)), interval_half_width(diffs, math.nan)
    return diffs[0], 1.96 * (paired_noise if math.isfinite(paired_noise) else math.hypot(noise, baseline_noise))


def _paired_to(r: Ranked, ref: Ranked, paired_noise: Callable[[str, str], float]) -> tuple[float, float, str]:
    """r minus ref, paired seed by seed (`paired_difference`), with what its interval holds."""
    pairs = min(len(r.values), len(ref.values))
    known = paired_noise(r.trials[0], ref.trials[0]) if pairs == 1 else math.nan
    diff, half_width = paired_difference(r.values, ref.values, r.noise, ref.noise, known)
    if pairs >= 2:
        return diff, half_width, f"paired over {pairs} seeds"
    how = "paired evaluation noise" if math.isfinite(known) else "evaluation noise"
    return diff, half_width, f"1 seed: {how} only, training-seed noise not included"


def verdict(diff: float, half_width: float, mode: str) -> str:
    """better / worse where the 95% interval of a difference leaves out zero, else tied ("" if unknown)."""
    if not (math.isfinite(diff) and math.isfinite(half_width)):
        return ""
    if abs(diff) <= half_width:
        return TIED
    return BETTER if (diff < 0) == (mode == "min") else WORSE


def comparable(ranked: Sequence[Ranked]) -> list[Ranked]:
    """Complete configurations with a finite value that have learned, best first."""
    return [r for r in ranked if r.complete and r.learned and math.isfinite(r.value)]


def best_design(ranked: Sequence[Ranked]) -> Ranked | None:
    """The best configuration of the search: the first complete one that is not the baseline (one that has
    learned where any has), else the first one that is not the baseline (None: only the baseline, or nothing)."""
    designs = [r for r in ranked if not r.baseline]
    return next((r for r in designs if r.complete and math.isfinite(r.value)), designs[0] if designs else None)


def compare_to_best(
    ranked: Sequence[Ranked], paired_noise: Callable[[str, str], float], mode: str = "min", reference: str | None = None
) -> None:
    """Each complete configuration's difference to the best design (`Ranked.diff`, its 95% half-width and
    what the interval holds), paired seed by seed (`paired_difference`; `paired_noise(trial, best_trial)`
    of one-seed pairs, NaN where unknown), and `vs_best` from it (`verdict`); then each one's
    difference to the baseline (`Ranked.base_diff`, `vs_baseline`): the sweep's own, else the group
    `reference` (a grid's plain-DiT row), where there is one."""
    best = best_design(ranked)
    if best is None or not best.complete or not best.learned or not math.isfinite(best.value):
        return
    base = next((r for r in comparable(ranked) if r.baseline), None) or next(
        (r for r in comparable(ranked) if r.group == reference), None
    )
    for r in comparable(ranked):
        if r is not best:
            r.diff, r.diff_half_width, r.diff_basis = _paired_to(r, best, paired_noise)
            r.vs_best = verdict(r.diff, r.diff_half_width, mode) or r.vs_best
        if base is not None and r is not base:
            r.base_diff, r.base_half_width, r.base_basis = _paired_to(r, base, paired_noise)
            r.vs_baseline = verdict(r.base_diff, r.base_half_width, mode)


def separated(values: Sequence[float], other: Sequence[float]) -> bool:
    """Whether two configurations differ at 95%, paired seed by seed over two seeds or more."""
    pairs = min(len(values), len(other))
    diff, half_width = paired_difference(values[:pairs], other[:pairs]) if pairs >= 2 else (math.nan, math.nan)
    return math.isfinite(half_width) and abs(diff) > half_width


RACE_OPEN, RACE_SEPARATED, RACE_SPENT = "open", "separated", "spent"
T = TypeVar("T")


def race_leaders(raced: Sequence[T], is_baseline: Callable[[T], bool]) -> list[T]:
    """The pair racing must separate, from the raced best first: the two best configurations, or the one
    configuration and the baseline when one is raced."""
    designs = [r for r in raced if not is_baseline(r)]
    return designs[:2] if len(designs) >= 2 else [*designs, *[r for r in raced if is_baseline(r)]][:2]


def race_state(ranked: Sequence[Ranked], seeds: int, race: int, race_seeds: int) -> tuple[str, list[Ranked]]:
    """Where racing (`sweep.race`) stands, and the pair it separates (`race_leaders` of the configurations
    given more than `seeds` seeds): separated (they differ at 95%, `separated`), spent (every raced one got
    `race_seeds` more seeds), open (neither yet), or "" (no racing, or fewer than two to race)."""
    if not race:
        return "", []
    done = comparable(ranked)
    raced = [r for r in done if r.seeds > seeds]
    if not raced:
        candidates = [r for r in done if not r.baseline][:race] + [r for r in done if r.baseline]
        return (RACE_OPEN if len(candidates) >= 2 else ""), []
    leaders = race_leaders(raced, lambda r: r.baseline)
    if len(leaders) < 2:
        return "", leaders
    if separated(leaders[0].values, leaders[1].values):
        return RACE_SEPARATED, leaders
    return (RACE_SPENT if min(r.seeds for r in raced) - seeds >= race_seeds else RACE_OPEN), leaders


def pareto_front(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[bool]:
    """Which points no other point dominates (at least as good in every objective, better in one)."""
    signed = np.array([[v if m == "min" else -v for v, m in zip(p, modes)] for p in points], dtype=float)
    front = []
    for i, p in enumerate(signed):
        dominated = any(np.all(q <= p) and np.any(q < p) for j, q in enumerate(signed) if j != i)
        front.append(not dominated and bool(np.all(np.isfinite(p))))
    return front


def rank_groups(
    records: Sequence[TrialRecord],
    metric: str,
    mode: str,
    noise_metric: str | None = None,
    objectives: Sequence[str] = (),
    modes: Sequence[str] = (),
) -> list[Ranked]:
    """Configurations best first: complete ones by mean value (those that have learned first, then Pareto
    members first in multi-objective sweeps), then incomplete ones (fewer steps: not comparable), each
    with a NaN value last."""
    groups: dict[str, list[TrialRecord]] = {}
    for r in records:
        groups.setdefault(r.group, []).append(r)
    ranked = []
    for name, members in groups.items():
        members = sorted(members, key=lambda r: (r.seed_index, r.trial_id))
        values = [m.metrics.get(metric, math.nan) for m in members]
        finite = [v for v in values if math.isfinite(v)]
        value = float(np.mean(finite)) if len(finite) == len(values) else math.nan
        noises = [m.metrics.get(noise_metric, math.nan) for m in members] if noise_metric else [math.nan]
        noise = float(np.mean(noises))
        accuracy = [m.metrics.get(ACCURACY_METRIC, math.nan) for m in members]
        first = members[0]
        ranked.append(
            Ranked(
                rank=0,
                group=name,
                trial_id=first.trial_id,
                run_id=first.run_id,
                end=TrialEnd.of_group(m.end for m in members),
                steps=min(m.steps for m in members),
                value=value,
                std=float(np.std(finite, ddof=1)) if len(finite) >= 2 else math.nan,
                noise=noise,
                half_width=interval_half_width(finite, noise) if finite else math.nan,
                seeds=len(members),
                params=dict(first.params),
                metrics=dict(first.metrics),
                trials=[m.trial_id for m in members],
                values=values,
                objectives={o: float(np.mean([m.metrics.get(o, math.nan) for m in members])) for o in objectives},
                failure=next((f"{m.trial_id}: {m.failure}" for m in members if m.end is TrialEnd.FAILED), ""),
                accuracy=float(np.mean(accuracy)),
                accuracy_se=float(np.mean([m.metrics.get(f"{ACCURACY_METRIC}_se", math.nan) for m in members])),
            )
        )
    if objectives:
        complete = [r for r in ranked if r.complete]
        for r, on in zip(complete, pareto_front([[r.objectives[o] for o in objectives] for r in complete], modes)):
            r.pareto = on
    sign = 1.0 if mode == "min" else -1.0
    ranked.sort(
        key=lambda r: (
            not r.complete,
            r.complete and not r.learned,
            not r.pareto,
            math.isnan(r.value),
            sign * r.value if not math.isnan(r.value) else 0.0,
            r.group,
        )
    )
    _mark_ties(ranked)
    for i, r in enumerate(ranked):
        r.rank = i + 1
    return ranked


def _mark_ties(ranked: list[Ranked]) -> None:
    """best / tied / worse for complete configurations with a finite value that have learned, `not learned`
    for the others; the best is the first that is not the baseline."""
    for r in ranked:
        if r.complete and not r.learned:
            r.vs_best = NOT_LEARNED
    best = best_design(ranked)
    if best is None or not best.complete or not best.learned or not math.isfinite(best.value):
        return
    best.vs_best = BEST
    for r in comparable(ranked):
        if r is best:
            continue
        if math.isnan(r.half_width) or math.isnan(best.half_width):
            continue  # no noise estimate: say nothing rather than guess
        overlap = abs(r.value - best.value) <= r.half_width + best.half_width
        r.vs_best = TIED if overlap else WORSE
