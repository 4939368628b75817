"""One sweep trial: a Tune function that runs one Ray Train TorchTrainer DDP job of the training loop,
or, for a one-worker trial on this machine (`sweep.ray.inline`), the loop itself in its own process.

The Tune side (`run_trial`) opens the trial's MLflow child run and runs the Train job; the Train
side (`run_worker`, through `sweeps.train_entry`) runs `trainers.loop.trainer.train` on every worker. Every
`sweep.eval_every` steps rank 0 evaluates the EMA model, logs metrics, routing matrices and samples
to MLflow, and every rank reports the metrics (with rank 0's checkpoint) to Ray, which passes them
on to Tune and ASHA; at ASHA's rungs rank 0 then waits for its decision (`sweeps.gate`).

Failures: `run_trial` restarts a Train job whose workers died (up to `sweep.ray.max_failures`
times, each from the last checkpoint) but ends the trial at once on a deterministic failure
(`sweeps.failures`), tagging its MLflow run with the reason and the worker log's tail. An inline
trial is restarted by Tune instead (its process may be what died); a restart of one that failed
deterministically ends again at once. A restarted attempt logs only the steps MLflow does not have
yet, and its `loop_s` adds to the earlier attempts'.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import torch.distributed as dist
from omegaconf import OmegaConf
from ray import tune
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks import DatasetsCallback  # pinned Ray: see _TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from switchsweep.platform.checkpoint import load_checkpoint
from switchsweep.platform.naming import run_name
from switchsweep.platform.sweep_config import RayConfig, trains_inline, worker_bundle
from switchsweep.platform.tracking import (
    ATTEMPTS_TAG,
    CHECKPOINT_ARTIFACT,
    CHECKPOINT_TAG,
    EVAL_NOISE_ARTIFACT,
    FAILURE_TAG,
    GIT_TAG,
    GROUP_TAG,
    IN_MLFLOW,
    MODEL_TAG,
    RESUMED_TAG,
    SEED_TAG,
    ResilientLog,
    Tracker,
    eval_noise_name,
    flatten,
)
from switchsweep.sweeps.failures import LogTail, TrialFailure, is_deterministic, reason, trial_failure
from switchsweep.sweeps.gate import wait_at_gate
from switchsweep.sweeps.loopback_ddp import LoopbackTorchConfig
from switchsweep.sweeps.space import GROUP, ROW, SEED, apply_params, config_from_dict
from switchsweep.sweeps.train_entry import train_worker
from switchsweep.trainers.evaluation.evaluate import evaluate_model
from switchsweep.trainers.loop.trainer import Trainer, TrainHooks, train


@dataclass
class TrialJob:
    """Everything a trial needs, as plain data (Tune ships it to every trial process)."""

    bases: list[dict[str, Any]]  # one training dict per grid row; one for tpe/random
    sweep_id: str
    storage_path: str  # the sweep's own folder of Tune and Train state: an absolute path or URI all nodes share
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    eval_every: int
    ray: RayConfig
    git_commit: str
    log_checkpoints: str = "last"  # last: final checkpoint in MLflow only; false/best: in Train storage
    done_trials: list[str] = dataclasses.field(default_factory=list)  # over by the sweep's record: never run again
    rung_steps: list[int] = dataclasses.field(default_factory=list)  # ASHA decides here: wait for it (sweeps.gate)


PROGRESS = "progress.json"  # beside ckpt.pt in every reported checkpoint: training seconds so far
# Wall-clock times (epoch seconds) of a trial's phases, reported with every result so the driver's
# record can break a trial's overhead down (benchmarks/sweep_overhead.py): the Train job's start, the
# worker's process start, the train function's call (sweeps.train_entry), the worker's start once the
# trial code is imported, the loop's start, this report; and seconds spent waiting at rungs and in reports
# (checkpoint upload, and an inline trial's wait for Tune to take its result). An inline trial has no
# worker process of its own.
PHASES = (
    "t_fit_start",
    "t_worker_process",
    "t_train_fn",
    "t_worker_start",
    "t_loop_start",
    "t_report",
    "gate_s",
    "report_s",
)
# A report carries them nested under one key: Tune's console shows a report's top-level numbers as its
# metric columns, and these are the record's, not a user's.
PHASES_KEY = "phases"
FAILURE_REASON = "failure_reason"  # in a failed trial's error: parsed back by the driver


def process_start_time() -> float | None:
    """When this process started (epoch seconds, 10 ms resolution), from Linux's /proc; None elsewhere."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


def trial_group(params: dict[str, Any]) -> str:
    """The configuration a trial belongs to: its sampled group, or its grid row."""
    return str(params.get(GROUP) or f"row{int(params.get(ROW, 0)):02d}")


def trial_config(job: TrialJob, params: dict[str, Any]) -> dict[str, Any]:
    tree = apply_params(job.bases[params.get(ROW, 0)], params)
    tree["train"]["out_dir"] = "."  # each worker trains in scratch space on its own node (run_worker)
    tree["train"]["progress"] = False
    tree["train"]["resume"] = None
    return tree


class TrainSession:
    """Where a Train worker reports to and resumes from: its Train job."""

    own_process = True  # the worker's process was started for the trial: its start is a phase

    def rank(self) -> int:
        return ray.train.get_context().get_world_rank()

    def checkpoint(self) -> Checkpoint | None:
        return ray.train.get_checkpoint()

    def report(self, metrics: dict[str, Any], folder: Path | None) -> None:
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(folder)) if folder else None)


class TuneSession(TrainSession):
    """An inline trial's: Tune itself (one worker, in the trial's process), which keeps its last checkpoint."""

    own_process = False  # Tune's trial process, started before the trial's own timing begins

    def rank(self) -> int:
        return 0

    def checkpoint(self) -> Checkpoint | None:
        return tune.get_checkpoint()

    def report(self, metrics: dict[str, Any], folder: Path | None) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(folder)) if folder else None)


class SweepHooks(TrainHooks):
    """Rank 0 logs to MLflow; every rank takes part in the evaluation report."""

    own_checkpoints = False  # checkpoints go to Ray Train (and MLflow), not to the trial's folder

    def __init__(self, config: dict[str, Any], loop_s: float, worker_start: float, session: TrainSession):
        self.report_every = config["eval_every"]
        self.cfg = config_from_dict(config["config"])
        self.run_id = config["run_id"]
        self.attempt, self.keep = config["attempt"], config["log_checkpoints"]
        self.sweep_id, self.trial_id, self.rungs = config["sweep_id"], config["trial_id"], set(config["rung_steps"])
        self.loop_s, self.started = loop_s, time.perf_counter()  # seconds of earlier attempts, this one's clock
        self.times = {
            "t_fit_start": config["fit_start"],
            "t_train_fn": config["t_train_fn"],
            "t_worker_start": worker_start,
            "t_loop_start": time.time(),
            "gate_s": 0.0,
            "report_s": 0.0,
        }
        started = process_start_time()
        if started is not None and session.own_process:
            self.times["t_worker_process"] = started
        self.session, self.rank = session, session.rank()
        self.stats: dict[str, float] = {}
        self.log: ResilientLog | None = None
        if self.rank == 0:
            tracker = Tracker(config["tracking_uri"])
            # What an earlier attempt (or a run before a driver restart) logged is not logged again.
            self.log = ResilientLog(tracker, self.run_id, tracker.logged_steps(self.run_id))

    def elapsed(self) -> float:
        return self.loop_s + time.perf_counter() - self.started

    def on_start(self, stats: dict[str, float]) -> None:
        self.started, self.times["t_loop_start"] = time.perf_counter(), time.time()  # the loop starts: its clock too
        self.stats = stats  # reported with every evaluation: compute is an objective of multi-objective sweeps
        self.log.log_metrics(stats, step=0)

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.log.log_metrics(metrics, step)

    def _evaluate_and_log(
        self, trainer: Trainer, step: int, metrics: dict[str, float], ckpt_dir: Path
    ) -> dict[str, float]:
        cfg, log = self.cfg, self.log
        report, noise = evaluate_model(trainer.ema.model, trainer.diffusion, cfg.data, cfg.eval, trainer.device)
        report.update(loss=metrics["loss"], steps_per_sec=metrics["steps_per_sec"], **self.stats)
        logged = {k: v for k, v in report.items() if k not in ("loss", "steps_per_sec", *self.stats)}
        final = step == cfg.train.steps
        art = ckpt_dir.parent / "artifacts"
        # What a paired comparison with another trial reads (platform.export): this evaluation's noise values.
        noise_file = art / EVAL_NOISE_ARTIFACT / eval_noise_name(step)
        noise_file.parent.mkdir(parents=True)
        noise_file.write_text(json.dumps({k: v.tolist() for k, v in noise.items()}))
        log.log_artifacts([noise_file], EVAL_NOISE_ARTIFACT)
        if hasattr(trainer.model, "routing_matrices"):
            mats = trainer.model.routing_matrices()
            folder = art / f"step_{step:07d}"
            folder.mkdir(parents=True)
            for name in ("w_gate", "w_prior_matched", "permutation"):
                np.save(folder / f"{name}.npy", mats[name].numpy())
            from switchsweep.dashboards.routing import routing_heatmap  # matplotlib: rank 0, at evaluations only

            png = routing_heatmap(
                mats["w_gate"].numpy(),
                mats["w_prior_matched"].numpy(),
                trainer.model.depth,
                folder / "routing.png",
                title=f"step {step}",
            )
            log.log_artifacts(sorted(folder.iterdir()), f"routing/step_{step:07d}")
            log.log_image(png, key="routing", step=step)
            # Scalars MLflow's chart view can plot over training: distance to the prior, expert usage.
            usage = {f"usage/block{b}/expert{e}": float(u) for (b, e), u in np.ndenumerate(mats["usage"].numpy())}
            log.log_metrics({"routing_jsd": float(mats["prior_jsd"]), **usage}, step)
        if cfg.sample.per_class > 0:
            # The trainer's own per_class is 0 (no grid at the end of training): pass the sweep's.
            grid = trainer.sample_grid(art / f"samples_{step:07d}.png", per_class=cfg.sample.per_class)
            log.log_image(grid, key="samples", step=step)
        if final and self.keep == "last":  # the last one goes to MLflow instead of Ray Train's storage
            log.log_artifacts(
                [trainer.save(art / Path(CHECKPOINT_ARTIFACT).name)], str(Path(CHECKPOINT_ARTIFACT).parent)
            )
            log.set_tags({CHECKPOINT_TAG: IN_MLFLOW})
        # "step" last: a step MLflow has was logged whole, so a retry skips exactly what it has.
        log.log_metrics({**logged, "loop_s": self.elapsed(), "attempt": self.attempt, "step": step}, step)
        if not (final and self.keep == "last" and log.flush()):  # kept by Ray Train (also when MLflow is down)
            trainer.save(ckpt_dir / "ckpt.pt")
            (ckpt_dir / PROGRESS).write_text(json.dumps({"loop_s": self.elapsed()}))
        return report

    def _orchestration(self, phase: str, seconds: float) -> None:
        """Time spent on orchestration, not training: out of loop_s, into the phase's total."""
        self.started += seconds
        self.times[phase] += seconds

    def on_report(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        scratch = Path(tempfile.mkdtemp(prefix="switchsweep-report-"))
        ckpt_dir = scratch / "checkpoint"
        ckpt_dir.mkdir()
        try:
            report = self._evaluate_and_log(trainer, step, metrics, ckpt_dir) if self.rank == 0 else {}
            if dist.is_initialized():  # every rank reports rank 0's numbers
                box = [report]
                dist.broadcast_object_list(box, src=0)
                report = box[0]
            report = {
                **report,
                "step": step,
                "loop_s": self.elapsed(),
                "attempt": self.attempt,
                PHASES_KEY: {**self.times, "t_report": time.time()},
            }
            has_ckpt = self.rank == 0 and (ckpt_dir / "ckpt.pt").is_file()
            reporting = time.perf_counter()
            self.session.report(report, ckpt_dir if has_ckpt else None)
            self._orchestration("report_s", time.perf_counter() - reporting)
            if self.rank == 0 and step in self.rungs:  # the other ranks wait in the next step's all-reduce
                waiting = time.perf_counter()
                wait_at_gate(self.sweep_id, self.trial_id, step)
                self._orchestration("gate_s", time.perf_counter() - waiting)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def run_worker(config: dict[str, Any], session: TrainSession | None = None) -> None:
    """The Train loop of every worker (or of an inline trial, `session`): resume from Ray's latest
    checkpoint if there is one, then train. A deterministic failure is raised as `TrialFailure`, with
    the tail of this worker's output."""
    worker_start, session = time.time(), session or TrainSession()
    with LogTail() as tail:
        # Scratch on this worker's own node; what outlives the trial goes to MLflow and Train's storage.
        scratch = Path(tempfile.mkdtemp(prefix="switchsweep-trial-"))
        try:
            cfg = config_from_dict(config["config"])
            cfg.train.out_dir = str(scratch / "out")  # nothing lands there: checkpoints go through the hooks
            checkpoint, loop_s, resumed = session.checkpoint(), 0.0, None
            if checkpoint is not None:
                checkpoint.to_directory(str(scratch))
                cfg.train.resume = str(scratch / "ckpt.pt")
                if (scratch / PROGRESS).is_file():
                    loop_s = float(json.loads((scratch / PROGRESS).read_text())["loop_s"])
                resumed = int(load_checkpoint(cfg.train.resume, mmap=True)["step"])
                if resumed >= cfg.train.steps:
                    return  # the last report was made before a restart: nothing left to train
            hooks = SweepHooks(config, loop_s, worker_start, session)
            if resumed is not None and hooks.log is not None:
                hooks.log.set_tags({RESUMED_TAG: resumed})
            # The sample grid is drawn at each evaluation (hooks.cfg), not once at the end.
            cfg = dataclasses.replace(cfg, sample=dataclasses.replace(cfg.sample, per_class=0))
            train(cfg, hooks)
            if hooks.log is not None:
                hooks.log.flush()
        except Exception as e:
            if is_deterministic(e):
                raise TrialFailure(reason(e), tail.text(e)) from None
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _fail(tracker: Tracker, run_id: str, why: str, log_tail: str, attempts: int) -> None:
    """Mark the trial's run with why it failed, after how many attempts, and its worker's last lines;
    the run's status is set by the driver from the sweep's record."""
    tracker.set_tags(run_id, {FAILURE_TAG: why, ATTEMPTS_TAG: attempts})
    tracker.log_text(run_id, log_tail, "failure/worker.log")


class _TorchTrainer(TorchTrainer):
    """TorchTrainer without Ray Data's dataset manager: the workers load their own data, and the manager
    is one more process on the critical path of every Train job's start."""

    def _create_default_callbacks(self) -> list:
        return [cb for cb in super()._create_default_callbacks() if not isinstance(cb, DatasetsCallback)]


def _worker_config(job: TrialJob, tree: dict[str, Any], run_id: str, trial_id: str, attempt: int) -> dict[str, Any]:
    return {
        "config": tree,
        "run_id": run_id,
        "tracking_uri": job.tracking_uri,
        "eval_every": job.eval_every,
        "attempt": attempt,
        "log_checkpoints": job.log_checkpoints,
        "sweep_id": job.sweep_id,
        "trial_id": trial_id,
        "rung_steps": job.rung_steps,
        "fit_start": time.time(),
    }


def run_trial(params: dict[str, Any], job: TrialJob) -> None:
    """The Tune trainable: one trial = one MLflow child run + one TorchTrainer job (restarted from its
    last checkpoint when its workers die), or the training itself (`sweep.ray.inline`). Tune may stop
    it at any report (ASHA, max_t), so what follows the last report (status, where the checkpoint is
    kept) is done by `TrialTracking` instead."""
    trial_id = tune.get_context().get_trial_id()
    if trial_id in job.done_trials:
        return  # ended before a driver restart that Tune's older snapshot does not know of
    tree = trial_config(job, params)
    tracker = Tracker(job.tracking_uri)
    seed = int(params.get(SEED, 0))
    r, inline = job.ray, trains_inline(job.ray)
    run_id, created = tracker.child_run(
        job.experiment_id,
        job.parent_run_id,
        job.sweep_id,
        trial_id,
        name=run_name(flatten(tree), seed),
        tags={
            GIT_TAG: job.git_commit,
            MODEL_TAG: tree["model"]["name"],
            GROUP_TAG: trial_group(params),
            SEED_TAG: seed,
            **({ATTEMPTS_TAG: 1} if inline else {}),
        },
    )
    if created:
        tracker.log_params(run_id, {**flatten(tree), **{f"search.{k}": v for k, v in params.items()}})
        tracker.log_text(run_id, OmegaConf.to_yaml(OmegaConf.create(tree)), "config.yaml")
    if inline:
        _train_inline(job, tree, tracker, run_id, trial_id, created)
        return
    for attempt in range(1, r.max_failures + 2):
        trainer = _TorchTrainer(
            train_worker,  # sweeps.train_entry: the controller imports little
            train_loop_config=_worker_config(job, tree, run_id, trial_id, attempt),
            scaling_config=ScalingConfig(
                num_workers=r.num_workers, use_gpu=r.use_gpu, resources_per_worker=worker_bundle(r)
            ),
            torch_config=None if r.address else LoopbackTorchConfig(),  # a local instance listens on 127.0.0.1 only
            run_config=RunConfig(
                name=f"train-{trial_id}",  # deterministic: each attempt resumes this Train run's last checkpoint
                storage_path=job.storage_path,
                # Restarts are decided here (deterministic failures are not retried), not by Train.
                failure_config=FailureConfig(max_failures=0, controller_failure_limit=3),
                checkpoint_config=CheckpointConfig(num_to_keep=1),
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
            _fail(tracker, run_id, why, failure.log_tail if failure else f"{e}\n", attempt)
            raise RuntimeError(f"{FAILURE_REASON}={why}") from None
        return


def _train_inline(
    job: TrialJob, tree: dict[str, Any], tracker: Tracker, run_id: str, trial_id: str, created: bool
) -> None:
    """Train a one-worker trial in this process, with Tune's session for reports and checkpoints. Tune
    restarts the trial (its process may be what died) from its last checkpoint: the run's tags count
    the attempts and carry a deterministic failure, which a restart ends with again instead of training."""
    tags = {} if created else tracker.tags(run_id)
    if FAILURE_TAG in tags:
        raise RuntimeError(f"{FAILURE_REASON}={tags[FAILURE_TAG]}")
    attempt = int(tags.get(ATTEMPTS_TAG, 0)) + 1
    if not created:
        tracker.set_tags(run_id, {ATTEMPTS_TAG: attempt})
    config = _worker_config(job, tree, run_id, trial_id, attempt)
    try:
        # The trial code is imported already: no imports to time.
        run_worker({**config, "t_train_fn": config["fit_start"]}, TuneSession())
    except TrialFailure as f:
        _fail(tracker, run_id, f.reason, f.log_tail, attempt)
        raise RuntimeError(f"{FAILURE_REASON}={f.reason}") from None
    except Exception as e:
        if attempt <= job.ray.max_failures:
            raise  # Tune restarts the trial
        why = f"{reason(e)} (after {attempt} attempts)"
        _fail(tracker, run_id, why, "".join(traceback.format_exception(e)), attempt)
        raise RuntimeError(f"{FAILURE_REASON}={why}") from None
