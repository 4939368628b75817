"""A sweep's trials read from MLflow and its record, grouped and ranked with their paired evaluation noise."""

from __future__ import annotations

import functools
import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from switchsweep.config.sweep_schema import METRIC_SE, REPORTED_METRICS
from switchsweep.platform.errors import ConfigError
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
from switchsweep.platform.uris import redact
from switchsweep.results.ranking import Ranked, TrialRecord, best_design, compare_to_best, rank_groups


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


def rank_trials(
    tracker: Tracker, name: str, sweep_id: str | None = None, sweeps_dir: Path | None = None
) -> SweepRanking:
    """The sweep's configurations best first (see `results.ranking`), from its MLflow child runs and how
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
