"""What crosses a trial's process boundary: the `WorkerSpec` its Tune side hands every worker, and the
shape of what workers report back. Nothing heavy to import: Train's controller unpickles the spec."""

from __future__ import annotations

from dataclasses import dataclass

from switchsweep.config.schema import Config

PROGRESS = "progress.json"  # beside ckpt.pt in every reported checkpoint: training seconds so far
# Wall-clock times (epoch seconds) of a trial's phases, reported with every result so the driver's
# record can break a trial's overhead down (benchmarks/sweep_overhead.py): the Train job's start, the
# worker's process start, the train function's call, the worker's start once the trial code is
# imported, the loop's start, this report; seconds spent waiting at rungs and in reports (checkpoint
# upload, and an inline trial's wait for Tune to take its result), and seconds of the loop spent in its
# evaluations (sampling, metrics, routing and samples logged). An inline trial has no worker process of
# its own.
PHASES = (
    "t_fit_start",
    "t_worker_process",
    "t_train_fn",
    "t_worker_start",
    "t_loop_start",
    "t_report",
    "gate_s",
    "report_s",
    "eval_s",
)
# A report carries them nested under one key: Tune's console shows a report's top-level numbers as its
# metric columns, and these are the record's, not a user's.
PHASES_KEY = "phases"


@dataclass(frozen=True)
class SweepReports:
    """Where and when every trial of a sweep reports: the same for the trial's Tune side (`TrialJob`) and
    its workers (`WorkerSpec`)."""

    sweep_id: str
    tracking_uri: str
    storage: str  # the sweep's folder of Tune and Train state: an absolute path or URI every node reaches
    eval_every: int
    rung_steps: tuple[int, ...] = ()  # ASHA decides here: rank 0 waits for it (sweeps.gate)
    log_checkpoints: str = "last"  # last: the final checkpoint in MLflow only; false/best: in Train storage


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a trial's worker needs: its one validated training config and where it reports."""

    config: Config  # the sweep's sample.per_class included: the grid is drawn at each evaluation
    run_id: str  # the trial's MLflow run
    reports: SweepReports
    trial_id: str
    attempt: int
    fit_start: float  # epoch seconds: the Train job's start
    train_fn_start: float | None = None  # epoch seconds: the train function's call (PHASES' t_train_fn)
