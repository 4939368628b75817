"""A trial's worker side: what runs `trainers.loop.trainer.train` on each Ray Train worker (or in an
inline trial's process) and reports to Ray and MLflow. Every `sweep.eval_every` steps rank 0 evaluates
the EMA model and logs its metrics, routing matrices and samples to MLflow, and every rank reports the
metrics (with rank 0's checkpoint) to Ray, which passes them on to Tune and ASHA; at ASHA's rungs rank 0
then waits for its decision (`sweeps.gate`). A restarted attempt logs only the steps MLflow does not have
yet, and its `loop_s` adds to the earlier attempts'."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import torch.distributed as dist
from ray import tune
from ray.train import Checkpoint

from switchsweep.platform.checkpoint import load_checkpoint
from switchsweep.platform.storage import check_credentials
from switchsweep.platform.tracking import (
    CHECKPOINT_ARTIFACT,
    CHECKPOINT_TAG,
    EVAL_NOISE_ARTIFACT,
    HOST_TAG,
    IN_MLFLOW,
    RESUMED_TAG,
    SAMPLES_KEY,
    ResilientLog,
    Tracker,
    eval_noise_name,
)
from switchsweep.sweeps.failures import LogTail, TrialFailure, is_deterministic, reason
from switchsweep.sweeps.gate import wait_at_gate
from switchsweep.sweeps.worker_spec import PHASES_KEY, PROGRESS, WorkerSpec
from switchsweep.trainers.evaluation.evaluate import evaluate_model
from switchsweep.trainers.loop.trainer import Trainer, TrainHooks, train


def process_start_time() -> float | None:
    """When this process started (epoch seconds, 10 ms resolution), from Linux's /proc; None elsewhere."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


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
    """Rank 0 logs to MLflow; every rank takes part in the evaluation report. The trainer's config is the
    one config of the trial (`trainer.cfg`); the hooks keep only the sample grid's size, which the
    trainer's own end-of-training grid does without."""

    own_checkpoints = False  # checkpoints go to Ray Train (and MLflow), not to the trial's folder

    def __init__(self, spec: WorkerSpec, loop_s: float, worker_start: float, session: TrainSession):
        self.spec, self.report_every = spec, spec.reports.eval_every
        self.per_class, self.rungs = spec.config.sample.per_class, set(spec.reports.rung_steps)
        self.loop_s, self.started = loop_s, time.perf_counter()  # seconds of earlier attempts, this one's clock
        self.times = {
            "t_fit_start": spec.fit_start,
            "t_train_fn": spec.train_fn_start or spec.fit_start,
            "t_worker_start": worker_start,
            "t_loop_start": time.time(),
            "gate_s": 0.0,
            "report_s": 0.0,
            "eval_s": 0.0,
        }
        started = process_start_time()
        if started is not None and session.own_process:
            self.times["t_worker_process"] = started
        self.session, self.rank = session, session.rank()
        self.stats: dict[str, float] = {}
        self.log: ResilientLog | None = None
        if self.rank == 0:
            tracker = Tracker(spec.reports.tracking_uri)
            # What an earlier attempt (or a run before a driver restart) logged is not logged again.
            self.log = ResilientLog(tracker, spec.run_id, tracker.logged_steps(spec.run_id))

    def elapsed(self) -> float:
        return self.loop_s + time.perf_counter() - self.started

    def on_start(self, stats: dict[str, float]) -> None:
        self.started, self.times["t_loop_start"] = time.perf_counter(), time.time()  # the loop starts: its clock too
        self.stats = stats  # reported with every evaluation: compute is an objective of multi-objective sweeps
        self.log.log_metrics(stats, step=0)

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.log.log_metrics(metrics, step)

    def _evaluate(self, trainer: Trainer, step: int, metrics: dict[str, float], art: Path) -> dict[str, float]:
        """The EMA model's metrics, and this evaluation's noise values (what a paired comparison with
        another trial reads, `results.trials`) as an artifact."""
        cfg = trainer.cfg
        report, noise = evaluate_model(trainer.ema.model, trainer.diffusion, cfg.data, cfg.eval, trainer.device)
        report.update(loss=metrics["loss"], steps_per_sec=metrics["steps_per_sec"], **self.stats)
        noise_file = art / EVAL_NOISE_ARTIFACT / eval_noise_name(step)
        noise_file.parent.mkdir(parents=True)
        noise_file.write_text(json.dumps({k: v.tolist() for k, v in noise.items()}))
        self.log.log_artifacts([noise_file], EVAL_NOISE_ARTIFACT)
        return report

    def _export_routing(self, trainer: Trainer, step: int, art: Path) -> None:
        """Routing matrices, their heatmap, and scalars MLflow's chart view can plot over training:
        distance to the prior, expert usage."""
        if not hasattr(trainer.model, "routing_matrices"):
            return
        log, mats = self.log, trainer.model.routing_matrices()
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
        usage = {f"usage/block{b}/expert{e}": float(u) for (b, e), u in np.ndenumerate(mats["usage"].numpy())}
        log.log_metrics({"routing_jsd": float(mats["prior_jsd"]), **usage}, step)

    def _draw_samples(self, trainer: Trainer, step: int, art: Path) -> None:
        if self.per_class > 0:
            grid = trainer.sample_grid(art / f"samples_{step:07d}.png", per_class=self.per_class)
            self.log.log_image(grid, key=SAMPLES_KEY, step=step)

    def _checkpoint_to_mlflow(self, trainer: Trainer, art: Path) -> None:
        name = Path(CHECKPOINT_ARTIFACT)
        self.log.log_artifacts([trainer.save(art / name.name)], str(name.parent))
        self.log.set_tags({CHECKPOINT_TAG: IN_MLFLOW})

    def _checkpoint_to_train(self, trainer: Trainer, ckpt_dir: Path) -> None:
        """Into the folder reported with the metrics: Ray Train's storage keeps it."""
        trainer.save(ckpt_dir / "ckpt.pt")
        (ckpt_dir / PROGRESS).write_text(json.dumps({"loop_s": self.elapsed()}))

    def _evaluate_and_log(
        self, trainer: Trainer, step: int, metrics: dict[str, float], ckpt_dir: Path
    ) -> dict[str, float]:
        art = ckpt_dir.parent / "artifacts"
        evaluating = time.perf_counter()
        report = self._evaluate(trainer, step, metrics, art)
        self._export_routing(trainer, step, art)
        self._draw_samples(trainer, step, art)
        self.times["eval_s"] += time.perf_counter() - evaluating
        # The last checkpoint goes to MLflow instead of Ray Train's storage (log_checkpoints=last).
        in_mlflow = step == trainer.cfg.train.steps and self.spec.reports.log_checkpoints == "last"
        if in_mlflow:
            self._checkpoint_to_mlflow(trainer, art)
        logged = {k: v for k, v in report.items() if k not in ("loss", "steps_per_sec", *self.stats)}
        # "step" last: a step MLflow has was logged whole, so a retry skips exactly what it has.
        self.log.log_metrics({**logged, "loop_s": self.elapsed(), "attempt": self.spec.attempt, "step": step}, step)
        if not (in_mlflow and self.log.flush()):  # kept by Ray Train (also when MLflow is down)
            self._checkpoint_to_train(trainer, ckpt_dir)
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
                "attempt": self.spec.attempt,
                PHASES_KEY: {**self.times, "t_report": time.time()},
            }
            has_ckpt = self.rank == 0 and (ckpt_dir / "ckpt.pt").is_file()
            reporting = time.perf_counter()
            self.session.report(report, ckpt_dir if has_ckpt else None)
            self._orchestration("report_s", time.perf_counter() - reporting)
            if self.rank == 0 and step in self.rungs:  # the other ranks wait in the next step's all-reduce
                waiting = time.perf_counter()
                wait_at_gate(self.spec.reports.sweep_id, self.spec.trial_id, step)
                self._orchestration("gate_s", time.perf_counter() - waiting)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def restore(checkpoint: Checkpoint, scratch: Path) -> bool:
    """Copy the trial's checkpoint, as Ray hands it back, into `scratch`. False when it is gone: a head lost
    between Ray deleting an older checkpoint and copying out the state that names the newer one leaves a
    restore naming the deleted one; the trial then trains from step 0 (MLflow's points are not logged twice)."""
    try:
        checkpoint.to_directory(str(scratch))
    except FileNotFoundError:
        pass
    if (scratch / "ckpt.pt").is_file():
        return True
    print(f"switchsweep: this trial's checkpoint {checkpoint.path} is gone: it trains from step 0", file=sys.stderr)
    return False


def run_worker(spec: WorkerSpec, session: TrainSession | None = None) -> None:
    """The Train loop of every worker (or of an inline trial, `session`): resume from Ray's latest
    checkpoint if there is one, then train. A deterministic failure is raised as `TrialFailure`, with
    the tail of this worker's output."""
    worker_start, session = time.time(), session or TrainSession()
    with LogTail() as tail:
        # Scratch on this worker's own node; what outlives the trial goes to MLflow and Train's storage.
        scratch = Path(tempfile.mkdtemp(prefix="switchsweep-trial-"))
        try:
            check_credentials(spec.reports.storage, "sweep.ray.storage_path")  # this node's, before any training
            # Nothing lands in out_dir (checkpoints go through the hooks), and the sample grid is drawn at
            # each evaluation (SweepHooks), not once at the end.
            cfg = spec.config
            train_cfg = dataclasses.replace(cfg.train, out_dir=str(scratch / "out"), resume=None)
            checkpoint, loop_s, resumed = session.checkpoint(), 0.0, None
            if checkpoint is not None and restore(checkpoint, scratch):
                train_cfg = dataclasses.replace(train_cfg, resume=str(scratch / "ckpt.pt"))
                if (scratch / PROGRESS).is_file():
                    loop_s = float(json.loads((scratch / PROGRESS).read_text())["loop_s"])
                resumed = int(load_checkpoint(train_cfg.resume, mmap=True)["step"])
                if resumed >= cfg.train.steps:
                    return  # the last report was made before a restart: nothing left to train
            hooks = SweepHooks(spec, loop_s, worker_start, session)
            if hooks.log is not None:
                resumed_tag = {} if resumed is None else {RESUMED_TAG: resumed}
                hooks.log.set_tags({HOST_TAG: socket.gethostname(), **resumed_tag})
            train(dataclasses.replace(cfg, train=train_cfg, sample=dataclasses.replace(cfg.sample, per_class=0)), hooks)
            if hooks.log is not None:
                hooks.log.flush()
        except Exception as e:
            if is_deterministic(e):
                raise TrialFailure(reason(e), tail.text(e)) from None
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
