"""The sweep driver: validate, open the MLflow parent run, start Ray, run (or resume) the Tuner,
then write the results table and the best trial onto the parent run."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ray import tune

from switchsweep.dashboards.report import make_report
from switchsweep.platform.compose import load_sweep_config
from switchsweep.platform.errors import ConfigError, SwitchsweepError
from switchsweep.platform.export import rank_trials, write_ranking
from switchsweep.platform.ranking import Ranked
from switchsweep.platform.runtime import check_resources, resolve_worker_cpus, start_ray
from switchsweep.platform.sweep_config import REPORTED_METRICS, SweepJobConfig
from switchsweep.platform.tracking import OBJECTIVES_TAG, ROLE_TAG, SWEEP_TAG, Tracker, default_tracking_uri, git_commit
from switchsweep.sweeps.asha import ResumableASHA
from switchsweep.sweeps.callbacks import TRIAL_SUMMARY, TrialTracking
from switchsweep.sweeps.search import SeededStudySearch, default_tpe_startup
from switchsweep.sweeps.space import param_space, trial_bases
from switchsweep.sweeps.trial import TrialJob, run_trial
from switchsweep.trainers.features import build_feature_net, reference_features
from switchsweep.trainers.loop import resolve_device

STATE_FILE = "sweep.json"
# Overrides a resumed sweep may change: where and how it runs, never what it searches.
RESUME_OVERRIDES = ("sweep=", "sweep.id=", "sweep.resume=", "sweep.extend=", "sweep.ray.", "sweep.root=",
                    "sweep.tracking_uri=")


@dataclass
class SweepResult:
    sweep_id: str
    sweep_dir: Path
    tracking_uri: str
    experiment: str
    parent_run_id: str
    ranked: list[Ranked]  # best first
    interrupted: bool
    report: Path | None = None  # the HTML report, unless it could not be written


def sweeps_root(job: SweepJobConfig) -> Path:
    return Path(job.sweep.root).expanduser().resolve() / "sweeps" / job.sweep.name


def find_sweep(job: SweepJobConfig, finished: bool | None = None) -> Path:
    """The sweep named by sweep.id, else the latest one that is (not) finished (None: either)."""
    root = sweeps_root(job)
    flag = {True: "--extend", False: "--resume", None: f"sweep={job.sweep.name}"}[finished]
    if job.sweep.id:
        path = root / job.sweep.id
        if not (path / STATE_FILE).is_file():
            raise ConfigError(f"sweep.id={job.sweep.id}: no such sweep under {root}: check the id (ls {root})")
        status = json.loads((path / STATE_FILE).read_text())["status"]
        if finished is not None and (status == "finished") != finished:
            hint = "resume it with --resume first" if finished else "add trials with --extend N instead"
            raise ConfigError(f"{flag}: sweep {job.sweep.id} is {status}: {hint}")
        return path
    states = sorted(root.glob(f"*/{STATE_FILE}"), key=lambda p: json.loads(p.read_text())["created"])
    found = [p.parent for p in states
             if finished is None or (json.loads(p.read_text())["status"] == "finished") == finished]
    if not found:
        what = {True: "finished ", False: "interrupted ", None: ""}[finished]
        hint = f"start one without {flag}" if finished is not None else f"run `switchsweep sweep sweep={job.sweep.name}` first"
        raise ConfigError(f"{flag}: no {what}{job.sweep.name} sweep under {root}: {hint}")
    return found[-1]


def expected_trials(job: SweepJobConfig, state: dict[str, Any]) -> int:
    """Tune trials the sweep runs in all: configurations (grid rows, or sampled ones plus every
    extension) times seeds."""
    s = job.sweep
    configs = len(s.grid) if s.search == "grid" else s.num_trials + sum(state.get("extensions", []))
    return configs * s.seeds


def _write_state(sweep_dir: Path, state: dict[str, Any]) -> None:
    tmp = sweep_dir / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(sweep_dir / STATE_FILE)


def _search_alg(job: SweepJobConfig, sweep_dir: Path, sweep_id: str, base: dict[str, Any]) -> SeededStudySearch | None:
    s = job.sweep
    if s.search == "grid":
        return None
    objectives = list(s.objectives) or [s.metric]
    # The study lives in a journal file beside the sweep, so the search itself can be inspected and resumed.
    return SeededStudySearch(
        space=s.space, base=base, journal=str(sweep_dir / "optuna.journal"), study_name=sweep_id, objectives=objectives,
        modes=[REPORTED_METRICS[m] for m in objectives], search=s.search, seed=s.seed,
        tpe_startup=s.tpe_startup or default_tpe_startup(s.num_trials), seeds=s.seeds, train_steps=job.train.steps)


def _scheduler(job: SweepJobConfig, sweep_dir: Path) -> ResumableASHA | None:
    s = job.sweep
    if not s.asha:
        return None
    evals = math.ceil(job.train.steps / s.eval_every)
    # One ASHA state per sweep: a resume or an --extend compares new results with every earlier one.
    return ResumableASHA(sweep_dir / "asha.pkl", time_attr="training_iteration", max_t=evals,
                         grace_period=min(s.grace_period, evals), reduction_factor=s.reduction_factor)


def _warm_feature_cache(job: SweepJobConfig) -> None:
    """Train/load the feature network and the real-data reference features once, here, so trials
    only read the cache (and never race to write it)."""
    net = build_feature_net(job.eval, resolve_device(job.eval.device))
    reference_features(job.data, net, job.eval.cache_dir)


def _open(job: SweepJobConfig, overrides: Sequence[str]) -> tuple[Path, dict[str, Any]]:
    """The sweep's directory and state: a new one, the interrupted one being resumed, or the
    finished one being extended."""
    s = job.sweep
    if s.resume or s.extend:
        if s.resume and s.extend:
            raise ConfigError("--resume and --extend together: resume the interrupted sweep first, then extend it")
        if s.extend and s.search == "grid":
            raise ConfigError(f"--extend with sweep={s.name}: a grid runs a fixed set of rows; start a new sweep "
                              "(e.g. with more sweep.seeds) instead")
        sweep_dir = find_sweep(job, finished=bool(s.extend))
        state = json.loads((sweep_dir / STATE_FILE).read_text())
        changed = [o for o in overrides if not o.lstrip("+").startswith(RESUME_OVERRIDES) and o not in state["overrides"]]
        if changed:
            raise ConfigError(f"{changed[0]}: a resumed or extended sweep keeps its search and training config; "
                              "drop it or start a new sweep")
        if s.extend:
            state["extensions"] = [*state.get("extensions", []), s.extend]
            state["tune_dir"] = f"tune-ext{len(state['extensions'])}"
        return sweep_dir, state
    sweep_id = s.id or f"{s.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    sweep_dir = sweeps_root(job) / sweep_id
    if sweep_dir.exists():
        raise ConfigError(f"sweep {sweep_id} already exists at {sweep_dir}: resume it with --resume or pick another sweep.id")
    kept = [o for o in overrides if not o.lstrip("+").startswith(("sweep.resume=", "sweep.id=", "sweep.extend="))]
    state = {"sweep_id": sweep_id, "name": s.name, "created": time.time(), "status": "running", "overrides": kept,
             "tune_dir": "tune"}
    return sweep_dir, state


def _open_parent(tracker: Tracker, job: SweepJobConfig, state: dict[str, Any], sweep_dir: Path, root: Path,
                 overrides: Sequence[str]) -> None:
    """Create the experiment and the sweep's parent run once (here, on the driver: trials only add
    child runs), or reopen it on resume."""
    s = job.sweep
    if "parent_run_id" in state:
        tracker.set_status(state["parent_run_id"], "RUNNING")
        return
    experiment_id = tracker.experiment(s.name, root / "mlartifacts")
    parent = tracker.create_run(experiment_id, state["sweep_id"], {
        ROLE_TAG: "sweep", SWEEP_TAG: state["sweep_id"], "switchsweep.metric": s.metric, "switchsweep.mode": s.mode,
        OBJECTIVES_TAG: ",".join(s.objectives), "switchsweep.git_commit": git_commit()})
    tracker.log_dict(parent, {"search": s.search, "space": [dataclasses.asdict(p) for p in s.space],
                              "grid": [list(r) for r in s.grid], "num_trials": s.num_trials, "seeds": s.seeds,
                              "objectives": list(s.objectives), "points_to_evaluate": [dict(p) for p in s.points_to_evaluate]},
                     "search_space.json")
    tracker.log_params(parent, {"sweep.search": s.search, "sweep.metric": s.metric, "sweep.mode": s.mode,
                                "sweep.num_trials": s.num_trials, "sweep.seeds": s.seeds, "sweep.eval_every": s.eval_every,
                                "sweep.objectives": ",".join(s.objectives),
                                "train.steps": job.train.steps, "sweep.overrides": " ".join(overrides),
                                # what one trial occupies: the report turns wall time into device-hours
                                **{f"sweep.ray.{k}": getattr(s.ray, k) for k in
                                   ("num_workers", "use_gpu", "cpus_per_worker", "gpus_per_worker")}})
    state.update(experiment_id=experiment_id, parent_run_id=parent, tracking_uri=tracker.uri)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    _write_state(sweep_dir, state)


def _tuner(job: SweepJobConfig, trial_job: TrialJob, sweep_dir: Path, state: dict[str, Any]) -> tune.Tuner:
    s = job.sweep
    trainable = tune.with_resources(tune.with_parameters(run_trial, job=trial_job), {"cpu": s.ray.trainable_cpus})
    storage = trial_job.storage_path
    name = state.get("tune_dir", "tune")
    tune_path = str(Path(storage) / name) if "://" not in storage else f"{storage.rstrip('/')}/{name}"
    if s.resume and tune.Tuner.can_restore(tune_path):
        return tune.Tuner.restore(tune_path, trainable=trainable, resume_unfinished=True)
    tracking = TrialTracking(trial_job.tracking_uri, trial_job.experiment_id, trial_job.parent_run_id, str(sweep_dir),
                             job.train.steps)
    searcher = _search_alg(job, sweep_dir, trial_job.sweep_id, trial_job.bases[0])
    if searcher is not None and not s.extend and s.points_to_evaluate:
        searcher.enqueue(s.points_to_evaluate)
    configs = s.extend or s.num_trials
    return tune.Tuner(
        trainable,
        param_space=param_space(s),
        tune_config=tune.TuneConfig(
            metric=s.metric, mode=s.mode, search_alg=searcher, scheduler=_scheduler(job, sweep_dir),
            num_samples=1 if s.search == "grid" else configs * s.seeds, max_concurrent_trials=s.max_concurrent,
        ),
        run_config=tune.RunConfig(name=name, storage_path=storage, failure_config=tune.FailureConfig(max_failures=1),
                                  verbose=1, callbacks=[tracking]),
    )


def _report(tracker: Tracker, name: str, sweep_id: str, sweeps_dir: Path) -> Path | None:
    """The sweep's HTML report. The sweep's results are already saved when it is written, so a
    failure here is reported in one line (with how to rebuild it) rather than failing the sweep."""
    try:
        return make_report(tracker, name, sweep_id, sweeps_dir)
    except Exception as e:  # noqa: BLE001 - any failure: the ranking and MLflow runs stand regardless
        print(f"switchsweep sweep: warning: the report was not written ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
              f"rebuild it with `switchsweep report sweep={name} sweep.id={sweep_id}`", file=sys.stderr)
        return None


def run_sweep(job: SweepJobConfig, overrides: Sequence[str]) -> SweepResult:
    """Run (or resume) the sweep. Everything that can fail on bad input (the configs every trial can
    reach, the cluster's resources) is checked before the sweep's directory or MLflow runs exist."""
    sweep_dir, state = _open(job, overrides)
    if job.sweep.resume or job.sweep.extend:  # the job as it was composed when the sweep started; only where it runs may change
        overrides = [*state["overrides"], *(o for o in overrides if o.lstrip("+").startswith(RESUME_OVERRIDES))]
        job = load_sweep_config(overrides)
    else:
        overrides = state["overrides"]
    s = job.sweep
    job = dataclasses.replace(job, sweep=dataclasses.replace(s, ray=resolve_worker_cpus(s.ray, s.max_concurrent)))
    s = job.sweep
    bases = trial_bases(job, overrides)
    start_ray(s.ray)
    if not s.ray.address:  # a remote cluster may autoscale to more than it has now
        check_resources(s.ray)
    root = Path(s.root).expanduser().resolve()
    tracker = Tracker(s.tracking_uri or default_tracking_uri(root))
    _open_parent(tracker, job, state, sweep_dir, root, overrides)
    _warm_feature_cache(job)
    trial_job = TrialJob(
        bases=bases, sweep_id=state["sweep_id"], sweep_dir=str(sweep_dir),
        storage_path=s.ray.storage_path or str(sweep_dir), tracking_uri=tracker.uri,
        experiment_id=state["experiment_id"], parent_run_id=state["parent_run_id"],
        eval_every=s.eval_every, ray=dataclasses.asdict(s.ray), git_commit=git_commit(),
    )
    if s.extend:
        state["status"] = "running"
        _write_state(sweep_dir, state)
    grid = _tuner(job, trial_job, sweep_dir, state).fit()
    expected = expected_trials(job, state)
    # Tune returns normally on Ctrl+C; a trial is over once TrialTracking has written its summary.
    interrupted = len(list((sweep_dir / "trials").glob(f"*/{TRIAL_SUMMARY}"))) < expected
    parent = state["parent_run_id"]
    ranking = rank_trials(tracker, s.name, state["sweep_id"])
    ranked = ranking.ranked
    if ranked:
        tracker.log_artifacts(parent, write_ranking(ranking, sweep_dir))
        best = ranked[0]
        tracker.set_tags(parent, {"switchsweep.best_trial": best.trial_id, "switchsweep.best_group": best.group,
                                  "switchsweep.best_run_id": best.run_id})
        if not math.isnan(best.value):
            tracker.log_metrics(parent, {f"best_{s.metric}": best.value}, step=0)
    state["status"] = "interrupted" if interrupted else "finished"
    _write_state(sweep_dir, state)
    report = _report(tracker, s.name, state["sweep_id"], sweeps_root(job)) if ranked else None
    tracker.set_status(parent, "KILLED" if interrupted else "FINISHED")
    if grid.num_errors and grid.num_errors == expected:
        raise SwitchsweepError(f"every trial failed; their errors are under {sweep_dir}/tune")
    return SweepResult(state["sweep_id"], sweep_dir, tracker.uri, s.name, parent, ranked, interrupted, report)
