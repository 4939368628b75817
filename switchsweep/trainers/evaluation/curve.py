"""A learning curve: the EMA model evaluated every `every` steps of a training run, as a sweep's trials are."""

from __future__ import annotations

import time

from switchsweep.trainers.evaluation.evaluate import evaluate_model
from switchsweep.trainers.loop.trainer import Trainer, TrainHooks


class LearningCurve(TrainHooks):
    """Hooks that keep each evaluation's metrics (with the step and the training loss) in `points`, and the
    process CPU seconds spent training, evaluations left out, in `train_cpu_s`."""

    def __init__(self, every: int):
        self.report_every = every
        self.points: list[dict[str, float]] = []
        self.train_cpu_s = 0.0
        self._mark = time.process_time()

    def on_report(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        self.train_cpu_s += time.process_time() - self._mark
        cfg = trainer.cfg
        report, _ = evaluate_model(trainer.ema.model, trainer.diffusion, cfg.data, cfg.eval, trainer.device)
        self.points.append({**report, "step": step, "loss": metrics["loss"]})
        self._mark = time.process_time()
