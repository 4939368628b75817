"""One sweep trial: a Tune function that runs one Ray Train TorchTrainer DDP job of the training loop.

The Tune side (`run_trial`) opens the trial's MLflow child run and starts the Train job; the Train
side (`train_worker`) runs `trainers.loop.train` on every worker. Every `sweep.eval_every` steps rank 0
evaluates the EMA model, logs metrics, routing matrices and samples to MLflow, and every rank reports
the metrics (with rank 0's checkpoint) to Ray, which passes them on to Tune and ASHA.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import torch.distributed as dist
from omegaconf import OmegaConf
from ray import tune
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from switchsweep.dashboards.routing import routing_heatmap
from switchsweep.platform.checkpoint import load_checkpoint
from switchsweep.platform.export import run_name
from switchsweep.platform.tracking import GROUP_TAG, SEED_TAG, Tracker, flatten
from switchsweep.sweeps.space import GROUP, ROW, SEED, apply_params, config_from_dict
from switchsweep.trainers.evaluate import evaluate_model
from switchsweep.trainers.loop import Trainer, TrainHooks, train


@dataclass
class TrialJob:
    """Everything a trial needs, as plain data (Tune ships it to every trial process)."""

    bases: list[dict[str, Any]]  # one training dict per grid row; one for tpe/random
    sweep_id: str
    sweep_dir: str  # absolute
    storage_path: str  # absolute path or URI shared by all nodes
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    eval_every: int
    ray: dict[str, Any]
    git_commit: str


def trial_group(params: dict[str, Any]) -> str:
    """The configuration a trial belongs to: its sampled group, or its grid row."""
    return str(params.get(GROUP) or f"row{int(params.get(ROW, 0)):02d}")


def trial_config(job: TrialJob, params: dict[str, Any], trial_id: str) -> dict[str, Any]:
    tree = apply_params(job.bases[params.get(ROW, 0)], params)
    tree["train"]["out_dir"] = str(Path(job.sweep_dir) / "trials" / trial_id)
    tree["train"]["progress"] = False
    tree["train"]["resume"] = None
    return tree


class SweepHooks(TrainHooks):
    """Rank 0 logs to MLflow; every rank takes part in the evaluation report."""

    def __init__(self, config: dict[str, Any], started: float):
        self.report_every = config["eval_every"]
        self.cfg = config_from_dict(config["config"])
        self.run_id = config["run_id"]
        self.tracker = Tracker(config["tracking_uri"])
        self.started = started
        self.rank = ray.train.get_context().get_world_rank()
        self.stats: dict[str, float] = {}

    def on_start(self, stats: dict[str, float]) -> None:
        self.stats = stats  # reported with every evaluation: compute is an objective of multi-objective sweeps
        self.tracker.log_metrics(self.run_id, stats, step=0)

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.tracker.log_metrics(self.run_id, metrics, step)

    def _evaluate_and_log(self, trainer: Trainer, step: int, metrics: dict[str, float], ckpt_dir: Path) -> dict[str, float]:
        cfg = self.cfg
        report = evaluate_model(trainer.ema.model, trainer.diffusion, cfg.data, cfg.eval, trainer.device)
        report.update(loss=metrics["loss"], steps_per_sec=metrics["steps_per_sec"], **self.stats)
        logged = {k: v for k, v in report.items() if k not in ("loss", "steps_per_sec", *self.stats)}
        self.tracker.log_metrics(self.run_id, {**logged, "step": step}, step)
        trainer.save(ckpt_dir / "ckpt.pt")
        art = ckpt_dir.parent / "artifacts"
        if hasattr(trainer.model, "routing_matrices"):
            mats = trainer.model.routing_matrices()
            folder = art / f"step_{step:07d}"
            folder.mkdir(parents=True)
            for name in ("w_gate", "w_prior_matched", "permutation"):
                np.save(folder / f"{name}.npy", mats[name].numpy())
            png = routing_heatmap(mats["w_gate"].numpy(), mats["w_prior_matched"].numpy(), trainer.model.depth,
                                  folder / "routing.png", title=f"step {step}")
            self.tracker.log_artifacts(self.run_id, sorted(folder.iterdir()), f"routing/step_{step:07d}")
            self.tracker.log_image(self.run_id, png, key="routing", step=step)
            # Scalars MLflow's chart view can plot over training: distance to the prior, expert usage.
            usage = {f"usage/block{b}/expert{e}": float(u) for (b, e), u in np.ndenumerate(mats["usage"].numpy())}
            self.tracker.log_metrics(self.run_id, {"routing_jsd": float(mats["prior_jsd"]), **usage}, step)
        if cfg.sample.per_class > 0:
            # The trainer's own per_class is 0 (no grid at the end of training): pass the sweep's.
            grid = trainer.sample_grid(art / f"samples_{step:07d}.png", per_class=cfg.sample.per_class)
            self.tracker.log_image(self.run_id, grid, key="samples", step=step)
        if step == cfg.train.steps:
            self.tracker.log_artifact(self.run_id, ckpt_dir / "ckpt.pt", "checkpoint")
        return report

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
            report = {**report, "step": step, "loop_s": time.perf_counter() - self.started}
            ray.train.report(report, checkpoint=Checkpoint.from_directory(str(ckpt_dir)) if self.rank == 0 else None)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def train_worker(config: dict[str, Any]) -> None:
    """The Train loop of every worker: resume from Ray's latest checkpoint if there is one, then train."""
    started = time.perf_counter()
    hooks = SweepHooks(config, started)
    # The sample grid is drawn at each evaluation (hooks.cfg), not once at the end.
    cfg = dataclasses.replace(hooks.cfg, sample=dataclasses.replace(hooks.cfg.sample, per_class=0))
    checkpoint = ray.train.get_checkpoint()
    scratch = Path(tempfile.mkdtemp(prefix="switchsweep-resume-"))
    try:
        if checkpoint is not None:
            checkpoint.to_directory(str(scratch))
            cfg.train.resume = str(scratch / "ckpt.pt")
            if int(load_checkpoint(cfg.train.resume, mmap=True)["step"]) >= cfg.train.steps:
                return  # the last report was made before a restart: nothing left to train
        train(cfg, hooks)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run_trial(params: dict[str, Any], job: TrialJob) -> None:
    """The Tune trainable: one trial = one MLflow child run + one TorchTrainer job. Tune may stop it
    at any report (ASHA, max_t), so what follows the last report is done by `TrialTracking` instead."""
    trial_id = tune.get_context().get_trial_id()
    tree = trial_config(job, params, trial_id)
    tracker = Tracker(job.tracking_uri)
    seed = int(params.get(SEED, 0))
    run_id, created = tracker.child_run(
        job.experiment_id, job.parent_run_id, job.sweep_id, trial_id, name=run_name(flatten(tree), seed),
        tags={"switchsweep.git_commit": job.git_commit, "switchsweep.model": tree["model"]["name"],
              GROUP_TAG: trial_group(params), SEED_TAG: seed},
    )
    if created:
        tracker.log_params(run_id, flatten(tree))
        tracker.log_params(run_id, {f"search.{k}": v for k, v in params.items()})
        tracker.log_text(run_id, OmegaConf.to_yaml(OmegaConf.create(tree)), "config.yaml")
    r = job.ray
    resources = {"CPU": r["cpus_per_worker"], **({"GPU": r["gpus_per_worker"]} if r["use_gpu"] else {})}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"config": tree, "run_id": run_id, "tracking_uri": job.tracking_uri, "eval_every": job.eval_every},
        scaling_config=ScalingConfig(num_workers=r["num_workers"], use_gpu=r["use_gpu"], resources_per_worker=resources),
        run_config=RunConfig(
            name=f"train-{trial_id}",  # deterministic: a restarted trial resumes this Train run
            storage_path=job.storage_path,
            failure_config=FailureConfig(max_failures=r["max_failures"], controller_failure_limit=3),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()
