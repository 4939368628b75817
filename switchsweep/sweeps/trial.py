"""One sweep trial, the Tune side: a Tune function that opens the trial's MLflow child run and runs one
Ray Train TorchTrainer DDP job of `sweeps.worker.run_worker`, or, for a one-worker trial on this machine
(`sweep.ray.inline`), runs it in its own process. Its workers are handed one `WorkerSpec`
(`sweeps.worker_spec`) holding the trial's one validated config.

Failures: `run_trial` restarts a Train job whose workers died (up to `sweep.ray.max_failures`
times, each from the last checkpoint) but ends the trial at once on a deterministic failure
(`sweeps.failures`), through the one failure path, `fail_trial`. An inline trial is restarted by Tune
instead (its process may be what died); the sweep's record counts its attempts and carries a
deterministic failure, which the restart ends with again instead of training.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf
from ray import tune
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
from ray.tune.integration.ray_train import TuneReportCallback

from switchsweep.config.naming import run_name
from switchsweep.config.resources import trains_inline, worker_bundle
from switchsweep.config.schema import Config, to_config
from switchsweep.config.sweep_schema import RayConfig
from switchsweep.platform.sweep_record import SweepRecord, TrialEntry
from switchsweep.platform.tracking import (
    ATTEMPTS_TAG,
    GIT_TAG,
    GROUP_TAG,
    MODEL_TAG,
    SEED_TAG,
    Tracker,
    flatten,
)
from switchsweep.sweeps.compat import TorchTrainerWithoutDatasets
from switchsweep.sweeps.failures import TrialFailure, fail_again, fail_trial, reason, trial_failure
from switchsweep.sweeps.loopback_ddp import LoopbackTorchConfig
from switchsweep.sweeps.space import GROUP, ROW, SEED, apply_params
from switchsweep.sweeps.train_entry import train_worker
from switchsweep.sweeps.worker import TuneSession, run_worker
from switchsweep.sweeps.worker_spec import SweepReports, WorkerSpec

# Checkpoints kept a trial (Tune's for an inline trial, Train's for a Train job): two, because the state a
# restore reads can still name the one before the latest when the driver is lost between Ray deleting it
# and saving that state; with one, such a trial could not go on from any.
KEPT_CHECKPOINTS = 2


@dataclass
class TrialJob:
    """Everything a trial needs, as plain data (Tune ships it to every trial process)."""

    bases: list[dict[str, Any]]  # one training dict per grid row; one for tpe/random
    reports: SweepReports
    sweep_dir: str  # the sweep's record: an inline trial (on the driver's machine) reads its attempts there
    experiment_id: str
    parent_run_id: str
    ray: RayConfig
    git_commit: str
    done_trials: list[str] = dataclasses.field(default_factory=list)  # over by the sweep's record: never run again


def trial_group(params: dict[str, Any]) -> str:
    """The configuration a trial belongs to: its sampled group, or its grid row."""
    return str(params.get(GROUP) or f"row{int(params.get(ROW, 0)):02d}")


def trial_config(job: TrialJob, params: dict[str, Any]) -> Config:
    """The trial's one validated config, handed as it is to every worker."""
    cfg = apply_params(job.bases[params.get(ROW, 0)], params)
    cfg.train.out_dir = "."  # each worker trains in scratch space on its own node (run_worker)
    cfg.train.progress = False
    cfg.train.resume = None
    return to_config(cfg)


def _worker_spec(job: TrialJob, cfg: Config, run_id: str, trial_id: str, attempt: int) -> WorkerSpec:
    return WorkerSpec(cfg, run_id, job.reports, trial_id, attempt, fit_start=time.time())


def run_trial(params: dict[str, Any], job: TrialJob) -> None:
    """The Tune trainable: one trial = one MLflow child run + one TorchTrainer job (restarted from its
    last checkpoint when its workers die), or the training itself (`sweep.ray.inline`). Tune may stop
    it at any report (ASHA, max_t), so what follows the last report (status, where the checkpoint is
    kept) is done by `TrialTracking` instead."""
    trial_id = tune.get_context().get_trial_id()
    if trial_id in job.done_trials:
        return  # ended before a driver restart that Tune's older snapshot does not know of
    cfg = trial_config(job, params)
    tree = OmegaConf.to_container(OmegaConf.structured(cfg))  # as logged: params and config.yaml
    tracker = Tracker(job.reports.tracking_uri)
    seed = int(params.get(SEED, 0))
    r, inline = job.ray, trains_inline(job.ray)
    run_id, created = tracker.child_run(
        job.experiment_id,
        job.parent_run_id,
        job.reports.sweep_id,
        trial_id,
        name=run_name(flatten(tree), seed),
        tags={
            GIT_TAG: job.git_commit,
            MODEL_TAG: tree["model"]["name"],
            GROUP_TAG: trial_group(params),
            SEED_TAG: seed,
        },
    )
    if created:
        tracker.log_params(run_id, {**flatten(tree), **{f"search.{k}": v for k, v in params.items()}})
        tracker.log_text(run_id, OmegaConf.to_yaml(OmegaConf.create(tree)), "config.yaml")
    if inline:
        _train_inline(job, cfg, tracker, run_id, trial_id)
        return
    for attempt in range(1, r.max_failures + 2):
        trainer = TorchTrainerWithoutDatasets(
            train_worker,  # sweeps.train_entry: the controller imports little
            train_loop_config={"spec": _worker_spec(job, cfg, run_id, trial_id, attempt)},
            scaling_config=ScalingConfig(
                num_workers=r.num_workers,
                use_gpu=r.use_gpu,
                resources_per_worker=worker_bundle(r),
                placement_strategy=r.placement_strategy,
            ),
            torch_config=None if r.address else LoopbackTorchConfig(),  # a local instance listens on 127.0.0.1 only
            run_config=RunConfig(
                name=f"train-{trial_id}",  # deterministic: each attempt resumes this Train run's last checkpoint
                storage_path=job.reports.storage,
                # Restarts are decided here (deterministic failures are not retried), not by Train.
                failure_config=FailureConfig(max_failures=0, controller_failure_limit=3),
                checkpoint_config=CheckpointConfig(num_to_keep=KEPT_CHECKPOINTS),
                callbacks=[TuneReportCallback()],
            ),
        )
        try:
            trainer.fit()
        except TrainingFailedError as e:
            failure = trial_failure(e)
            if failure is None and attempt <= r.max_failures:
                continue
            why = failure.reason if failure else f"{reason(e)} (after {attempt} attempts)"
            fail_trial(tracker, run_id, why, failure.log_tail if failure else f"{e}\n", attempt)
        return


def _train_inline(job: TrialJob, cfg: Config, tracker: Tracker, run_id: str, trial_id: str) -> None:
    """Train a one-worker trial in this process, with Tune's session for reports and checkpoints. Tune
    restarts the trial (its process may be what died) from its last checkpoint; the sweep's record
    counts the attempts and carries a deterministic failure, which a restart ends with again."""
    # The driver wrote this trial's entry before it started (`TrialTracking.on_trial_start`).
    entry = SweepRecord.load(job.sweep_dir).trials.get(trial_id, TrialEntry())
    attempt = entry.attempt
    if entry.reason:
        fail_again(entry.reason)
    tracker.set_tags(run_id, {ATTEMPTS_TAG: attempt})
    spec = _worker_spec(job, cfg, run_id, trial_id, attempt)
    try:
        # The trial code is imported already: no imports to time.
        run_worker(spec, TuneSession())
    except TrialFailure as f:
        fail_trial(tracker, run_id, f.reason, f.log_tail, attempt)
    except Exception as e:
        if attempt <= job.ray.max_failures:
            raise  # Tune restarts the trial
        fail_trial(
            tracker, run_id, f"{reason(e)} (after {attempt} attempts)", "".join(traceback.format_exception(e)), attempt
        )
