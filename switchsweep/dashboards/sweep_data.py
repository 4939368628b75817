"""What the sweep report shows, read from MLflow (through `platform`): the ranking, each trial's
curves and stop point, its routing matrices at every evaluation, and the Optuna study's importances."""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna

from switchsweep.config.naming import run_name
from switchsweep.config.sweep_schema import ACCURACY_METRIC as ACCURACY
from switchsweep.platform.sweep_dir import SweepDir
from switchsweep.platform.sweep_record import TrialEnd
from switchsweep.platform.tracking import SAMPLES_KEY, SEED_TAG, TRIAL_TAG, Tracker
from switchsweep.results.trials import SweepRanking, rank_trials

CURVES = ("loss", "routing_jsd", ACCURACY)  # besides the sweep's metric
TIME_BINS = 100  # timesteps are averaged in bins for the routing images: 1000 rows would bloat the page


@dataclass
class TrialData:
    trial_id: str
    run_id: str
    name: str  # its MLflow run name (design and seed)
    group: str
    end: TrialEnd  # as the sweep's record says
    params: dict[str, str]
    metrics: dict[str, float]  # last values
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> [(step, value)]
    routing: list[tuple[int, np.ndarray, np.ndarray]] = field(
        default_factory=list
    )  # (step, w_gate, matched prior), binned
    samples: tuple[int, bytes] | None = None  # (step, PNG) of its last sample grid; first seeds only

    @property
    def stopped_early(self) -> bool:
        return self.end is TrialEnd.STOPPED


@dataclass
class SweepData:
    name: str
    ranking: SweepRanking
    trials: list[TrialData]  # in ranking order
    importances: dict[str, float] | None  # None: no study, or too few finished configurations
    importance_note: str = ""

    @property
    def metric(self) -> str:
        return self.ranking.metric

    @property
    def search(self) -> str:
        return self.ranking.parent_params.get("sweep.search", "")


def bin_rows(matrix: np.ndarray, bins: int = TIME_BINS) -> np.ndarray:
    """[T, U] -> [bins, U]: each output row is the mean of consecutive rows (the fraction of
    timesteps in that bin that select the unit)."""
    return np.stack([chunk.mean(0) for chunk in np.array_split(matrix, min(bins, len(matrix)))])


def _routing(tracker: Tracker, run_id: str) -> list[tuple[int, np.ndarray, np.ndarray]]:
    steps = [a.path for a in tracker.client.list_artifacts(run_id, "routing") if a.is_dir]
    if not steps:
        return []
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        local = tracker.download(run_id, "routing", tmp)
        for path in sorted(steps):
            folder = local / Path(path).name
            step = int(folder.name.removeprefix("step_"))
            out.append(
                (step, bin_rows(np.load(folder / "w_gate.npy")), bin_rows(np.load(folder / "w_prior_matched.npy")))
            )
    return out


def last_samples(tracker: Tracker, run_id: str) -> tuple[int, bytes] | None:
    """(step, PNG bytes) of the run's last logged sample grid, None without one."""
    grids = []
    for a in tracker.client.list_artifacts(run_id, "images"):
        parts = Path(a.path).name.split("+")
        if len(parts) >= 3 and parts[0] == SAMPLES_KEY and parts[1] == "step" and a.path.endswith(".png"):
            grids.append((int(parts[2]), a.path))
    if not grids:
        return None
    step, path = max(grids)
    with tempfile.TemporaryDirectory() as tmp:
        return step, tracker.download(run_id, path, tmp).read_bytes()


def study_importances(journal: Path, keys: list[str]) -> tuple[dict[str, float] | None, str]:
    """fANOVA importances of the searched settings for the study's first objective, over its finished
    configurations, on the resolved settings (k itself, not the fraction Optuna samples; they are the
    trials' user attributes)."""
    if not journal.is_file():
        return None, "no Optuna study (grid sweeps search none)"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    summaries = optuna.get_all_study_summaries(storage)
    if not summaries:
        return None, f"the study journal {journal} holds no study"
    study = optuna.load_study(study_name=summaries[0].study_name, storage=storage)
    done = [
        t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and all(k in t.user_attrs for k in keys)
    ]
    varying = [k for k in keys if len({t.user_attrs[k] for t in done}) > 1]
    if len(done) < 3 or not varying:
        return None, (
            f"{len(done)} finished configuration(s) with {len(varying)} varying setting(s): importances need "
            "at least 3 and 1 (PRUNED configurations are left out: their values are partial)"
        )
    dists = {}
    for k in varying:
        values = [t.user_attrs[k] for t in done]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        dists[k] = (
            optuna.distributions.FloatDistribution(float(min(values)), float(max(values)))
            if numeric
            else optuna.distributions.CategoricalDistribution(sorted(set(map(str, values))))
        )
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" line for a throwaway study
    try:
        resolved = optuna.create_study(direction=study.directions[0].name.lower())
    finally:
        optuna.logging.set_verbosity(level)
    for t in done:
        params = {
            k: (
                float(t.user_attrs[k])
                if isinstance(dists[k], optuna.distributions.FloatDistribution)
                else str(t.user_attrs[k])
            )
            for k in varying
        }
        resolved.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=t.values[0]))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    imp = optuna.importance.get_param_importances(resolved, evaluator=evaluator)
    return {k: float(v) for k, v in imp.items()}, f"fANOVA over {len(done)} finished configurations"


def _space_keys(tracker: Tracker, parent_run_id: str) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        space = json.loads(tracker.download(parent_run_id, "search_space.json", tmp).read_text())
    return [p["key"] for p in space.get("space", [])]


def collect(tracker: Tracker, name: str, sweep_id: str | None, sweeps_dir: Path) -> SweepData:
    """Everything the report shows of one sweep (the latest of `name` when `sweep_id` is None);
    `sweeps_dir` holds the sweeps of that name, each with its Optuna journal if it searched."""
    ranking = rank_trials(tracker, name, sweep_id, sweeps_dir)
    experiment_id = tracker.find_experiment(name)
    runs = {r.data.tags.get(TRIAL_TAG, ""): r for r in tracker.children(experiment_id, ranking.parent_run_id)}
    trials = []
    for group in ranking.ranked:
        for trial_id in group.trials:
            run = runs[trial_id]
            params, seed = dict(run.data.params), int(run.data.tags.get(SEED_TAG, 0))
            t = TrialData(
                trial_id=trial_id,
                run_id=run.info.run_id,
                name=run.info.run_name or run_name(params, seed),
                group=group.group,
                end=ranking.ends[trial_id],
                params=params,
                metrics=dict(run.data.metrics),
            )
            for key in (ranking.metric, *CURVES):
                history = tracker.client.get_metric_history(run.info.run_id, key)
                t.curves[key] = sorted((m.step, m.value) for m in history if math.isfinite(m.value))
            t.routing = _routing(tracker, run.info.run_id)
            if trial_id == group.trials[0]:
                t.samples = last_samples(tracker, run.info.run_id)
            trials.append(t)
    journal = SweepDir(sweeps_dir / ranking.sweep_id).journal
    importances, note = study_importances(journal, _space_keys(tracker, ranking.parent_run_id))
    return SweepData(name, ranking, trials, importances, note)
