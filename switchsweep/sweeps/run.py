"""The sweep driver: validate, open the MLflow parent run, start Ray, run (or resume) the Tuner,
then write the results table and the best trial onto the parent run.

The sweep's state lives in one record, `sweep.json` (`platform.sweep_record`): this driver holds the
sweep's lock while it runs and decides from the record alone whether the sweep is finished.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from switchsweep.dashboards.report import make_report
from switchsweep.platform.compose import load_sweep_config, override_key
from switchsweep.platform.config import resolve_paths
from switchsweep.platform.errors import ConfigError
from switchsweep.platform.export import rank_trials, verdict_sentences, write_ranking
from switchsweep.platform.ranking import Ranked
from switchsweep.platform.runtime import check_cluster, ray_temp_dir, resolve_worker_cpus, start_ray
from switchsweep.platform.storage import check_credentials
from switchsweep.platform.sweep_config import (
    REPORTED_METRICS,
    SHARED_SCHEMES,
    SweepJobConfig,
    baseline_model,
    driver_bundle,
    is_local_address,
    trains_inline,
    trial_resources,
)
from switchsweep.platform.sweep_dir import SweepDir
from switchsweep.platform.sweep_record import (
    FINISHED,
    INTERRUPTED,
    RUNNING,
    DriverLock,
    SweepRecord,
    stored_sweeps,
    sweep_status,
    sweeps,
)
from switchsweep.platform.tracking import (
    BEST_GROUP_TAG,
    BEST_RUN_TAG,
    BEST_TRIAL_TAG,
    CHECKPOINT_ARTIFACT,
    CHECKPOINT_TAG,
    GIT_TAG,
    IN_MLFLOW,
    METRIC_TAG,
    MODE_TAG,
    OBJECTIVES_TAG,
    ROLE_TAG,
    SWEEP_TAG,
    Tracker,
    default_tracking_uri,
    git_commit,
    reachable,
)
from switchsweep.platform.uris import is_database, is_local_store, redact
from switchsweep.sweeps.asha import ResumableASHA
from switchsweep.sweeps.callbacks import TrialTracking
from switchsweep.sweeps.console import NEW_OUTPUT_ENV, SweepReporter
from switchsweep.sweeps.gate import rung_steps
from switchsweep.sweeps.search import SeededStudySearch, default_tpe_startup
from switchsweep.sweeps.space import config_from_dict, param_space, reporter_columns, trial_bases
from switchsweep.sweeps.trial import KEPT_CHECKPOINTS, TrialJob, run_trial
from switchsweep.sweeps.tune_state import repair as repair_tune_state
from switchsweep.trainers.data.latents import check_prepared
from switchsweep.trainers.evaluation.features import build_feature_net, reference_features
from switchsweep.trainers.loop.trainer import resolve_device

# Settings a resumed sweep may change: where and how it runs, never what it searches.
RESUME_KEYS = ("sweep", "sweep.id", "sweep.resume", "sweep.extend", "sweep.root", "sweep.tracking_uri")
RESUME_PREFIXES = ("sweep.ray.",)
# Settings of one command, not of the sweep it runs.
COMMAND_KEYS = ("sweep.resume", "sweep.id", "sweep.extend")


@dataclass
class SweepResult:
    sweep_id: str
    sweep_dir: Path
    tracking_uri: str
    experiment: str
    experiment_id: str
    parent_run_id: str
    ranked: list[Ranked]  # best first
    interrupted: bool
    report: Path | None = None  # the HTML report, unless it could not be written
    failed: dict[str, str] = dataclasses.field(default_factory=dict)  # trial id -> why it failed
    verdicts: list[str] = dataclasses.field(default_factory=list)  # best against the baseline; how racing ended


def _where_it_runs(override: str) -> bool:
    """An override a resumed sweep may change (RESUME_KEYS, RESUME_PREFIXES)."""
    key = override_key(override)
    return key in RESUME_KEYS or key.startswith(RESUME_PREFIXES)


def _stored(overrides: Sequence[str]) -> list[str]:
    """The overrides that define the sweep (not how this one command was started)."""
    return [o for o in overrides if override_key(o) not in COMMAND_KEYS]


def sweeps_root(job: SweepJobConfig) -> Path:
    return Path(job.sweep.root).expanduser().resolve() / "sweeps" / job.sweep.name


def sweep_storage(job: SweepJobConfig, sweep_id: str) -> str:
    """Where a sweep's Tune state and Train checkpoints live: <storage_path>/<name>/<id>, so sweeps that
    share a storage_path (a bucket) never touch each other's state. The default storage_path,
    <root>/sweeps, puts them in the sweep's own folder."""
    base = job.sweep.ray.storage_path or str(sweeps_root(job).parent)
    return _join(base, job.sweep.name, sweep_id)


def _join(base: str, *parts: str) -> str:
    """A path under a local directory or a URI (s3://bucket/x)."""
    return str(Path(base, *parts)) if "://" not in base else "/".join([base.rstrip("/"), *parts])


def find_sweep(job: SweepJobConfig, finished: bool | None = None) -> Path:
    """The sweep named by sweep.id, else the latest one that is (not) finished (None: either): on this
    machine, else in the sweep's storage (a new head after the old one was lost), copied here first."""
    root = sweeps_root(job)
    flag = {True: "--extend", False: "--resume", None: f"sweep={job.sweep.name}"}[finished]
    if job.sweep.id:
        path = root / job.sweep.id
        if not SweepRecord.exists(path) and not _from_storage(job, None):  # its status is checked below
            raise ConfigError(f"sweep.id={job.sweep.id}: no such sweep under {root}: check the id (ls {root})")
        status = sweep_status(path)
        if finished is not None and (status == FINISHED) != finished:
            hint = "resume it with --resume first" if finished else "add trials with --extend N instead"
            if status == RUNNING:
                hint = "its driver is still running: wait for it or stop it"
            raise ConfigError(f"{flag}: sweep {job.sweep.id} is {status}: {hint}")
        return path
    found = [p for p in sweeps(root) if finished is None or (sweep_status(p) == FINISHED) == finished]
    if not found and (fetched := _from_storage(job, finished)):
        found = [fetched]
    if not found:
        what = {True: "finished ", False: "interrupted ", None: ""}[finished]
        hint = (
            f"start one without {flag}"
            if finished is not None
            else f"run `switchsweep sweep sweep={job.sweep.name}` first"
        )
        raise ConfigError(f"{flag}: no {what}{job.sweep.name} sweep under {root}: {hint}")
    return found[-1]


def _from_storage(job: SweepJobConfig, finished: bool | None) -> Path | None:
    """The sweep (sweep.id's, else the latest one that is (not) finished) whose state the sweep's storage
    keeps but this machine does not, copied into its folder here; None if there is none."""
    base = job.sweep.ray.storage_path
    if not base:  # the default storage is this machine's own sweeps folder
        return None
    kept = [
        (folder, record)
        for folder, record in stored_sweeps(_join(base, job.sweep.name))
        if (not job.sweep.id or record.sweep_id == job.sweep.id)
        and (finished is None or (record.status == FINISHED) == finished)
        and not SweepRecord.exists(sweeps_root(job) / record.sweep_id)
    ]
    if not kept:
        return None
    folder, record = kept[-1]
    local = SweepDir(sweeps_root(job) / record.sweep_id)
    local.copy_from(folder)
    print(f"switchsweep: sweep {record.sweep_id}'s state comes from {redact(folder)}", file=sys.stderr)
    return local.path


def expected_trials(job: SweepJobConfig, record: SweepRecord) -> int:
    """Tune trials the sweep runs at least: configurations (grid rows, or sampled ones plus every
    extension) times seeds, plus the baseline's seeds (racing adds more, `race_budget`)."""
    s = job.sweep
    configs = len(s.grid) if s.search == "grid" else s.num_trials + sum(record.extensions)
    return (configs + (baseline_model(s) is not None)) * s.seeds


def race_budget(job: SweepJobConfig) -> int:
    """Racing trials at most: `race_seeds` rounds over the N best configurations and the baseline."""
    s = job.sweep
    return s.race_seeds * (min(s.race, s.num_trials) + (baseline_model(s) is not None)) if s.race else 0


def _search_alg(job: SweepJobConfig, sweep_dir: Path, sweep_id: str, base: dict[str, Any]) -> SeededStudySearch | None:
    """The searcher; an --extend samples more configurations only (its baseline and racing are done)."""
    s = job.sweep
    if s.search == "grid":
        return None
    objectives = list(s.objectives) or [s.metric]
    # The study lives in a journal file beside the sweep, so the search itself can be inspected and resumed.
    return SeededStudySearch(
        space=s.space,
        base=base,
        journal=str(SweepDir(sweep_dir).journal),
        study_name=sweep_id,
        objectives=objectives,
        modes=[REPORTED_METRICS[m] for m in objectives],
        search=s.search,
        seed=s.seed,
        tpe_startup=s.tpe_startup or default_tpe_startup(s.num_trials),
        seeds=s.seeds,
        train_steps=job.train.steps,
        configs=s.extend or s.num_trials,
        baseline=not s.extend and baseline_model(s) is not None,
        race=0 if s.extend else s.race,
        race_seeds=s.race_seeds,
    )


def _asha_rungs(job: SweepJobConfig) -> tuple[int, int]:
    """ASHA's (grace period, max_t) in evaluations."""
    evals = math.ceil(job.train.steps / job.sweep.eval_every)
    return min(job.sweep.grace_period, evals), evals


def _rung_steps(job: SweepJobConfig) -> list[int]:
    if not job.sweep.asha:
        return []
    grace, evals = _asha_rungs(job)
    return rung_steps(grace, job.sweep.reduction_factor, evals, job.sweep.eval_every, job.train.steps)


def _scheduler(job: SweepJobConfig, sweep_dir: Path) -> ResumableASHA | None:
    s = job.sweep
    if not s.asha:
        return None
    grace, evals = _asha_rungs(job)
    # One ASHA state per sweep: a resume or an --extend compares new results with every earlier one.
    return ResumableASHA(
        SweepDir(sweep_dir).asha,
        gate=sweep_dir.name,
        time_attr="training_iteration",
        max_t=evals,
        grace_period=grace,
        reduction_factor=s.reduction_factor,
    )


def _warm_feature_cache(job: SweepJobConfig) -> None:
    """Train/load the feature network and the real-data reference features once, here, so trials
    only read the cache (and never race to write it)."""
    net = build_feature_net(job.eval, resolve_device(job.eval.device))
    reference_features(job.data, net, job.eval.cache_dir)


def _open(job: SweepJobConfig, overrides: Sequence[str]) -> SweepRecord:
    """The sweep's record (its folder: `path`): a new one, the interrupted one being resumed, or the
    finished one being extended."""
    s = job.sweep
    if s.resume or s.extend:
        if s.resume and s.extend:
            raise ConfigError("--resume and --extend together: resume the interrupted sweep first, then extend it")
        if s.extend and s.search == "grid":
            raise ConfigError(
                f"--extend with sweep={s.name}: a grid runs a fixed set of rows; start a new sweep "
                "(e.g. with more sweep.seeds) instead"
            )
        sweep_dir = find_sweep(job, finished=bool(s.extend))
        record = SweepRecord.load(sweep_dir)
        changed = [o for o in overrides if not _where_it_runs(o) and o not in record.overrides]
        if changed:
            raise ConfigError(
                f"{changed[0]}: a resumed or extended sweep keeps its search and training config; "
                "drop it or start a new sweep"
            )
        if s.extend:
            record.extensions.append(s.extend)
            record.tune_dir = f"tune-ext{len(record.extensions)}"
        return record
    sweep_id = s.id or f"{s.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    sweep_dir = sweeps_root(job) / sweep_id
    if sweep_dir.exists():
        raise ConfigError(
            f"sweep {sweep_id} already exists at {sweep_dir}: resume it with --resume or pick another sweep.id"
        )
    # Credentials in URIs are never stored: a resume is given them again.
    kept = [redact(o) for o in _stored(overrides)]
    return SweepRecord(sweep_dir, sweep_id=sweep_id, name=s.name, overrides=kept, storage=sweep_storage(job, sweep_id))


def _open_parent(
    tracker: Tracker,
    job: SweepJobConfig,
    record: SweepRecord,
    experiment_id: str,
    overrides: Sequence[str],
) -> None:
    """Create the sweep's parent run in its experiment once (here, on the driver: trials only add
    child runs), or reopen it on resume."""
    s = job.sweep
    if record.parent_run_id:
        tracker.set_status(record.parent_run_id, "RUNNING")
        return
    parent = tracker.create_run(
        experiment_id,
        record.sweep_id,
        {
            ROLE_TAG: "sweep",
            SWEEP_TAG: record.sweep_id,
            METRIC_TAG: s.metric,
            MODE_TAG: s.mode,
            OBJECTIVES_TAG: ",".join(s.objectives),
            GIT_TAG: git_commit(),
        },
    )
    tracker.log_dict(
        parent,
        {
            "search": s.search,
            "space": [dataclasses.asdict(p) for p in s.space],
            "grid": [list(r) for r in s.grid],
            "num_trials": s.num_trials,
            "seeds": s.seeds,
            "objectives": list(s.objectives),
            "points_to_evaluate": [dict(p) for p in s.points_to_evaluate],
        },
        "search_space.json",
    )
    tracker.log_params(
        parent,
        {
            "sweep.search": s.search,
            "sweep.metric": s.metric,
            "sweep.mode": s.mode,
            "sweep.num_trials": s.num_trials,
            "sweep.seeds": s.seeds,
            "sweep.eval_every": s.eval_every,
            "sweep.objectives": ",".join(s.objectives),
            "sweep.baseline": baseline_model(s) or "none",
            "sweep.race": s.race,
            "sweep.race_seeds": s.race_seeds,
            "train.steps": job.train.steps,
            "sweep.overrides": redact(" ".join(overrides)),
            # what one trial occupies: the report turns wall time into device-hours
            **{
                f"sweep.ray.{k}": getattr(s.ray, k)
                for k in ("num_workers", "use_gpu", "cpus_per_worker", "gpus_per_worker")
            },
        },
    )
    record.experiment_id, record.parent_run_id, record.tracking_uri = experiment_id, parent, redact(tracker.uri)
    record.save()


def _experiment(tracker: Tracker, job: SweepJobConfig) -> str:
    """The sweep's MLflow experiment. On a cluster, trials on other nodes write artifacts where it says:
    refuse a tracking server that hands out a path on some machine's disk instead of serving them
    itself or keeping them in a bucket."""
    storage = job.sweep.ray.storage_path or ""
    # A database store with a bucket beside it: artifacts in the bucket, where every node reaches them.
    shared = is_database(tracker.uri) and (storage.startswith(SHARED_SCHEMES) or job.sweep.ray.shared_fs)
    root = _join(storage, "mlartifacts") if shared else Path(job.sweep.root).expanduser().resolve() / "mlartifacts"
    experiment_id = tracker.experiment(job.sweep.name, root)
    location = tracker.artifact_location(experiment_id)
    if is_local_address(job.sweep.ray.address) or is_local_store(tracker.uri) or not is_local_store(location):
        return experiment_id
    raise ConfigError(
        f"sweep.tracking_uri={redact(tracker.uri)}: its experiment {job.sweep.name!r} keeps artifacts at "
        f"{location}, on one machine's disk: start the server with --serve-artifacts (or "
        "--default-artifact-root s3://...) and use a new sweep.name"
    )


def _tuner(job: SweepJobConfig, trial_job: TrialJob, record: SweepRecord) -> tune.Tuner:
    s = job.sweep
    inline = trains_inline(s.ray)  # the trial's process trains: it holds its worker's resources too
    # Tune snapshots its state at each inline checkpoint (it keeps one a trial) and warns when those come
    # within 5 s of each other: they do in a short trial, and the snapshot is what a resume relies on.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault(NEW_OUTPUT_ENV, "0")
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, job=trial_job), trial_resources(s.ray) if inline else driver_bundle(s.ray)
    )
    storage, name = trial_job.storage_path, record.tune_dir
    tune_path = _join(storage, name)
    if s.resume:  # that it can be restored was checked before any work
        tuner = tune.Tuner.restore(tune_path, trainable=trainable, resume_unfinished=True)
        _relocate(tuner, trial_job, record)
        return tuner
    tracking = TrialTracking(
        trial_job.tracking_uri,
        trial_job.experiment_id,
        trial_job.parent_run_id,
        str(record.path),
        job.train.steps,
        storage,
        trial_job.log_checkpoints,
    )
    searcher = _search_alg(job, record.path, trial_job.sweep_id, trial_job.bases[0])
    if searcher is not None and not s.extend and s.points_to_evaluate:
        searcher.enqueue(s.points_to_evaluate)
    samples = (s.extend or s.num_trials) * s.seeds
    if not s.extend:
        samples += s.seeds * (baseline_model(s) is not None) + race_budget(job)
    return tune.Tuner(
        trainable,
        param_space=param_space(s),
        tune_config=tune.TuneConfig(
            metric=s.metric,
            mode=s.mode,
            search_alg=searcher,
            scheduler=_scheduler(job, record.path),
            num_samples=1 if s.search == "grid" else samples,
            max_concurrent_trials=s.max_concurrent,
        ),
        # A Train job's attempts (restarts from its last checkpoint) are decided in run_trial, an inline trial's
        # here: its process may be what died. Tune keeps an inline trial's last checkpoints (KEPT_CHECKPOINTS).
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            verbose=1,
            callbacks=[tracking],
            progress_reporter=SweepReporter(list(s.objectives) or [s.metric], reporter_columns(s)),
            failure_config=tune.FailureConfig(max_failures=s.ray.max_failures if inline else 0),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=KEPT_CHECKPOINTS),
        ),
    )


def _relocate(tuner: tune.Tuner, trial_job: TrialJob, record: SweepRecord) -> None:
    """Tune restores the sweep's callback, searcher and scheduler as they were pickled, with the folder and
    MLflow address of the machine that started the sweep; this driver may run on another (a new head after
    the old one was lost): point them at its own (pinned Ray: the restored tuner's private attributes)."""
    restored = tuner._local_tuner
    for callback in restored.get_run_config().callbacks or []:
        if isinstance(callback, TrialTracking):
            callback.sweep_dir, callback.tracking_uri = record.path, trial_job.tracking_uri
    folder = SweepDir(record.path)
    if isinstance(restored._tune_config.search_alg, SeededStudySearch):
        restored._tune_config.search_alg.journal = str(folder.journal)
    if isinstance(restored._tune_config.scheduler, ResumableASHA):
        restored._tune_config.scheduler.relocate(folder.asha)


def _resume_overrides(record: SweepRecord, given: Sequence[str]) -> list[str]:
    """The sweep's stored overrides, with where-it-runs settings given again on the command line taking
    their place; a stored one whose credentials were redacted must be given again."""
    keys = {override_key(o) for o in given if _where_it_runs(o)}
    stored = [o for o in record.overrides if override_key(o) not in keys]
    hidden = [o for o in stored if "***" in o]
    if hidden:
        key = override_key(hidden[0])
        raise ConfigError(
            f"{key}: its credentials were not stored with the sweep: give {key}=... again with --resume "
            "(or put them in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)"
        )
    return [*stored, *filter(_where_it_runs, given)]


def _keep_best_checkpoint(tracker: Tracker, best: Ranked) -> None:
    """sweep.log_checkpoints=best: the best trial's final checkpoint moves from Ray Train's storage to MLflow."""
    from ray.train import Checkpoint

    where = tracker.tags(best.run_id).get(CHECKPOINT_TAG, "")
    if not where.endswith("/ckpt.pt") or where == IN_MLFLOW:
        return
    ckpt = Checkpoint(where.removesuffix("/ckpt.pt"))
    with ckpt.as_directory() as local:
        tracker.log_artifact(best.run_id, Path(local) / "ckpt.pt", str(Path(CHECKPOINT_ARTIFACT).parent))
    tracker.set_tags(best.run_id, {CHECKPOINT_TAG: IN_MLFLOW})
    ckpt.filesystem.delete_dir(ckpt.path)


def _report(tracker: Tracker, name: str, sweep_id: str, sweeps_dir: Path) -> Path | None:
    """The sweep's HTML report. The sweep's results are already saved when it is written, so a
    failure here is reported in one line (with how to rebuild it) rather than failing the sweep."""
    try:
        return make_report(tracker, name, sweep_id, sweeps_dir)
    except Exception as e:  # noqa: BLE001 - any failure: the ranking and MLflow runs stand regardless
        print(
            f"switchsweep sweep: warning: the report was not written ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}); "
            f"rebuild it with `switchsweep report sweep={name} sweep.id={sweep_id}`",
            file=sys.stderr,
        )
        return None


def run_sweep(job: SweepJobConfig, overrides: Sequence[str]) -> SweepResult:
    """Run (or resume) the sweep. Everything that can fail on bad input (the configs every trial can
    reach, the cluster's resources, a missing Tune state to resume) is checked before the sweep's
    directory, MLflow runs or Ray exist."""
    record = _open(job, overrides)
    sweep_dir = record.path
    if (
        job.sweep.resume or job.sweep.extend
    ):  # the job as it was composed when the sweep started; only where it runs may change
        overrides = _resume_overrides(record, overrides)
        job = load_sweep_config(overrides)
    else:
        overrides = _stored(overrides)
    s = job.sweep
    job = dataclasses.replace(job, sweep=dataclasses.replace(s, ray=resolve_worker_cpus(s.ray, s.max_concurrent)))
    s = job.sweep
    bases = [resolve_paths(b) for b in trial_bases(job, overrides)]
    if job.data.name == "latents":
        check_prepared(config_from_dict(bases[0]).data)  # absolute paths, as the trials will see them
    storage = sweep_storage(job, record.sweep_id)
    if s.resume and not tune.Tuner.can_restore(_join(storage, record.tune_dir)):
        raise ConfigError(
            f"--resume: sweep {record.sweep_id} has no Tune state under {storage} to continue from "
            "(interrupted before its first trial started, or sweep.ray.storage_path changed): "
            "start a new sweep, or pass the storage_path it used"
        )
    check_credentials(storage, "sweep.ray.storage_path")  # both before Ray starts
    uri = reachable(s.tracking_uri or default_tracking_uri(s.root))
    lock = DriverLock(sweep_dir)
    if sweep_dir.exists():  # resume or extend: a second driver is refused before anything starts
        lock.acquire()
    try:
        start_ray(s.ray)
        check_cluster(s.ray)
        if s.resume:
            repaired = repair_tune_state(_join(storage, record.tune_dir), ray_temp_dir())
            if repaired:
                print(f"switchsweep sweep: {repaired}", file=sys.stderr)
        tracker = Tracker(uri)
        experiment_id = _experiment(tracker, job)
        if not lock.held:  # a new sweep's folder appears here, once its input is known to be good
            lock.acquire()
        _open_parent(tracker, job, record, experiment_id, overrides)
        return _drive(job, tracker, record, bases, storage)
    finally:
        lock.release()


def _drive(
    job: SweepJobConfig,
    tracker: Tracker,
    record: SweepRecord,
    bases: list[dict[str, Any]],
    storage: str,
) -> SweepResult:
    """Run the Tuner to its end (or an interrupt) under the sweep's lock, then rank and report."""
    s, keep = job.sweep, str(job.sweep.log_checkpoints).lower()  # `false` arrives as a YAML boolean
    _warm_feature_cache(job)
    trial_job = TrialJob(
        bases=bases,
        sweep_id=record.sweep_id,
        sweep_dir=str(record.path),
        storage_path=storage,
        tracking_uri=tracker.uri,
        experiment_id=record.experiment_id,
        parent_run_id=record.parent_run_id,
        eval_every=s.eval_every,
        ray=s.ray,
        git_commit=git_commit(),
        log_checkpoints=keep,
        done_trials=sorted(record.trials_over()),
        rung_steps=_rung_steps(job),
    )
    record.set_status(RUNNING)
    _tuner(job, trial_job, record).fit()
    record = SweepRecord.load(record.path)  # the trials' entries, as TrialTracking recorded them
    over, parent = record.trials_over(), record.parent_run_id
    ranking = rank_trials(tracker, s.name, record.sweep_id, sweeps_root(job))
    ranked = ranking.ranked
    # Racing runs a number of trials known only at its end: any trial started and not over is one cut short.
    interrupted = len(over) < expected_trials(job, record) or len(record.trials) > len(over)
    if ranked:
        tracker.log_artifacts(parent, write_ranking(ranking, record.path))
    best = ranking.best
    if best is not None:
        if keep == "best" and best.complete:
            _keep_best_checkpoint(tracker, best)
        tracker.set_tags(parent, {BEST_TRIAL_TAG: best.trial_id, BEST_GROUP_TAG: best.group, BEST_RUN_TAG: best.run_id})
        if not math.isnan(best.value):
            tracker.log_metrics(parent, {f"best_{s.metric}": best.value}, step=0)
    record.set_status(INTERRUPTED if interrupted else FINISHED)
    report = _report(tracker, s.name, record.sweep_id, sweeps_root(job)) if ranked else None
    tracker.set_status(parent, "KILLED" if interrupted else "FINISHED")
    return SweepResult(
        record.sweep_id,
        record.path,
        redact(tracker.uri),
        s.name,
        record.experiment_id,
        parent,
        ranked,
        interrupted,
        report,
        record.failed(),
        verdict_sentences(ranking),
    )
