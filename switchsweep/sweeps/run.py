"""The sweep driver: validate, open the MLflow parent run, start Ray, run (or resume) the Tuner,
then write the results table and the best trial onto the parent run.

The sweep's state lives in one record, `sweep.json` (`platform.sweep_record`): this driver holds the
sweep's lock while it runs and decides from the record alone whether the sweep is finished. Where the
sweep lives is `sweeps.locate`'s, its Tuner `sweeps.tuner`'s, its MLflow parent run `sweeps.parent_run`'s.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune

from switchsweep.config.compose import load_sweep_config
from switchsweep.config.resources import worker_bundle
from switchsweep.config.schema import DataConfig, resolve_paths
from switchsweep.config.sweep_schema import RayConfig, SweepJobConfig, is_local_address
from switchsweep.dashboards.report import make_report
from switchsweep.platform.errors import ConfigError
from switchsweep.platform.storage import check_credentials, is_uri
from switchsweep.platform.sweep_record import FINISHED, INTERRUPTED, RUNNING, DriverLock, SweepRecord
from switchsweep.platform.tracking import (
    BEST_GROUP_TAG,
    BEST_RUN_TAG,
    BEST_TRIAL_TAG,
    Tracker,
    default_tracking_uri,
    git_commit,
    reachable,
)
from switchsweep.platform.uris import redact
from switchsweep.results.ranking import Ranked
from switchsweep.results.tables import write_ranking
from switchsweep.results.trials import rank_trials
from switchsweep.results.verdicts import verdict_sentences
from switchsweep.sweeps.budget import Ledger, devices_per_trial
from switchsweep.sweeps.compat import session_temp_dir
from switchsweep.sweeps.locate import (
    SweepCommand,
    join,
    open_record,
    resume_overrides,
    stored,
    sweep_storage,
    sweeps_root,
)
from switchsweep.sweeps.parent_run import experiment, keep_best_checkpoint, open_parent
from switchsweep.sweeps.runtime import check_cluster, resolve_worker_cpus, start_ray
from switchsweep.sweeps.space import config_from_dict, trial_bases
from switchsweep.sweeps.trial import TrialJob
from switchsweep.sweeps.tune_state import repair as repair_tune_state
from switchsweep.sweeps.tuner import build_tuner, expected_trials, sweep_rung_steps
from switchsweep.sweeps.worker_spec import SweepReports
from switchsweep.trainers.data.latents import check_prepared
from switchsweep.trainers.evaluation.features import build_feature_net, reference_features, reference_source
from switchsweep.trainers.loop.trainer import resolve_device

REFERENCE_TASK = "switchsweep-reference-features"  # the cluster's task that computes them (Ray's state API)


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
    budget: dict[str, Any] = dataclasses.field(default_factory=dict)  # the record's account of sweep.budget


def _warm_feature_cache(job: SweepJobConfig) -> None:
    """Train/load the feature network and the real-data reference features once, before any trial, so
    trials only read the cache (and never race to write it): here on one machine; on a cluster as a task
    with a trial worker's resources, on a GPU where trials train rather than on the head's CPU."""
    r = job.sweep.ray
    if is_local_address(r.address):
        _reference_features(job)
        return
    bundle = worker_bundle(r)
    task = ray.remote(_reference_features).options(
        name=REFERENCE_TASK, num_cpus=bundle.pop("CPU"), num_gpus=bundle.pop("GPU", 0), resources=bundle
    )
    try:
        ray.get(task.remote(job))
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, ConfigError):  # its one line, not Ray's traceback
            raise e.cause from None
        raise


def _check_reference_reachable(data: DataConfig, manifest: dict[str, Any], r: RayConfig) -> None:
    """On a cluster the real images of the evaluation (the reference batch, or the ImageFolder) are read on
    GPU nodes: a path on this machine alone is refused before any trial."""
    source = reference_source(data, manifest)
    if is_local_address(r.address) or is_uri(source) or r.shared_fs:
        return
    raise ConfigError(
        f"data.ref_batch={data.ref_batch or 'null'}: on a cluster the reference features are computed on a GPU "
        f"node, which cannot read {source} on this machine: give data.ref_batch=s3://BUCKET/ref.npz (e.g. ADM's "
        "VIRTUAL_imagenet256_labeled.npz copied into the bucket), or a data.root every node mounts with "
        "sweep.ray.shared_fs=true"
    )


def _reference_features(job: SweepJobConfig) -> None:
    net = build_feature_net(job.eval, resolve_device(job.eval.device))
    reference_features(job.data, net, job.eval.cache_dir)


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


def run_sweep(job: SweepJobConfig, overrides: Sequence[str], command: SweepCommand | None = None) -> SweepResult:
    """Run (or resume) the sweep. Everything that can fail on bad input (the configs every trial can
    reach, the cluster's resources, a missing Tune state to resume) is checked before the sweep's
    directory, MLflow runs or Ray exist."""
    command = command or SweepCommand()
    record = open_record(job, overrides, command)
    sweep_dir = record.path
    if command.continues:  # the job as it was composed when the sweep started; only where it runs may change
        overrides = resume_overrides(record, overrides)
        job = load_sweep_config(overrides)
    else:
        overrides = stored(overrides)
    s = job.sweep
    job = dataclasses.replace(job, sweep=dataclasses.replace(s, ray=resolve_worker_cpus(s.ray, s.max_concurrent)))
    s = job.sweep
    bases = [resolve_paths(b) for b in trial_bases(job, overrides)]
    if job.data.name == "latents":
        data = config_from_dict(bases[0]).data  # absolute paths, as the trials will see them
        _check_reference_reachable(data, check_prepared(data), s.ray)
    storage = sweep_storage(job, record.sweep_id)
    if command.resume and not tune.Tuner.can_restore(join(storage, record.tune_dir)):
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
        if command.resume:
            repaired = repair_tune_state(join(storage, record.tune_dir), session_temp_dir())
            if repaired:
                print(f"switchsweep sweep: {repaired}", file=sys.stderr)
        tracker = Tracker(uri)
        experiment_id = experiment(tracker, job)
        if not lock.held:  # a new sweep's folder appears here, once its input is known to be good
            lock.acquire()
        open_parent(tracker, job, record, experiment_id, overrides)
        return _drive(job, tracker, record, bases, storage, command)
    finally:
        lock.release()


def _drive(
    job: SweepJobConfig,
    tracker: Tracker,
    record: SweepRecord,
    bases: list[dict[str, Any]],
    storage: str,
    command: SweepCommand,
) -> SweepResult:
    """Run the Tuner to its end (or an interrupt) under the sweep's lock, then rank and report."""
    s, keep = job.sweep, str(job.sweep.log_checkpoints).lower()  # `false` arrives as a YAML boolean
    _warm_feature_cache(job)
    reports = SweepReports(record.sweep_id, tracker.uri, storage, s.eval_every, tuple(sweep_rung_steps(job)), keep)
    trial_job = TrialJob(
        bases=bases,
        reports=reports,
        sweep_dir=str(record.path),
        experiment_id=record.experiment_id,
        parent_run_id=record.parent_run_id,
        ray=s.ray,
        git_commit=git_commit(),
        done_trials=sorted(record.trials_over()),
    )
    devices, unit = devices_per_trial(s.ray)
    record.budget = {"limit": s.budget, "unit": unit} if s.budget is not None else {}
    record.set_status(RUNNING)
    build_tuner(job, trial_job, record, command).fit()
    record = SweepRecord.load(record.path)  # the trials' entries, as TrialTracking recorded them
    over, parent = record.trials_over(), record.parent_run_id
    if record.budget:
        record.budget["spent"] = round(Ledger.of(record.trials.values(), devices).spent, 6)
        if record.budget.get("reached"):
            record.budget["skipped"] = max(0, expected_trials(job, record) - len(record.trials))
        record.save()
    ranking = rank_trials(tracker, s.name, record.sweep_id, sweeps_root(job))
    ranked = ranking.ranked
    # Racing runs a number of trials known only at its end: any trial started and not over is one cut short.
    # A budget reached ends the sweep with trials never started: finished, not interrupted.
    short = len(over) < expected_trials(job, record) and not record.budget.get("reached")
    interrupted = short or len(record.trials) > len(over)
    if ranked:
        tracker.log_artifacts(parent, write_ranking(ranking, record.path))
    best = ranking.best
    if best is not None:
        if keep == "best" and best.complete:
            keep_best_checkpoint(tracker, best)
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
        record.budget,
    )
