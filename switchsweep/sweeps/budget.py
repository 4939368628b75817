"""`sweep.budget`: the device-hours a sweep may spend (GPU-hours, or CPU-hours where trials use no GPU).

A trial costs its wall time (the driver's clock, from its start to its end, over every attempt, as the
sweep's record keeps it) times the devices it holds. The sweep never starts a trial that could take it
past its budget: the next trial is assumed to cost as much as the costliest one so far, and each running
trial as much as that or what it has spent already, whichever is more. Before any trial has ended there is
no such figure, so the first trial runs alone. Once the next trial does not fit and none runs, the sweep
starts no more (trials, seeds or racing rounds), finishes, and records what it spent and what it skipped.
A resumed or extended sweep counts what its record already holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from switchsweep.config.resources import worker_bundle
from switchsweep.config.sweep_schema import RayConfig
from switchsweep.platform.sweep_record import SweepRecord, TrialEntry


def devices_per_trial(r: RayConfig) -> tuple[float, str]:
    """What one trial holds while it runs, and its unit: its GPUs, or its CPUs where it uses no GPU."""
    if r.use_gpu:
        return r.num_workers * r.gpus_per_worker, "GPU-hours"
    return float(r.num_workers * worker_bundle(r)["CPU"]), "CPU-hours"


@dataclass(frozen=True)
class Ledger:
    """Device-hours of a sweep's trials: spent (ended and running, so far), the costliest ended trial, and
    what is committed (ended, plus each running trial at the costliest's cost or its own, if more)."""

    spent: float
    committed: float
    costliest: float | None  # None before any trial ended
    running: int

    @classmethod
    def of(cls, trials: Iterable[TrialEntry], devices: float, starting: int = 0) -> Ledger:
        """`starting`: trials handed out that the record does not hold yet (running, nothing spent)."""
        ended, running = [], [0.0] * starting
        for entry in trials:
            (ended if entry.over else running).append((entry.wall_s or 0.0) * devices / 3600)
        costliest = max(ended) if ended else None
        committed = sum(ended) + sum(max(c, costliest or 0.0) for c in running)
        return cls(sum(ended) + sum(running), committed, costliest, len(running))

    def affords_next(self, budget: float) -> bool:
        if self.costliest is None:  # no trial has ended: one at a time, until one tells what a trial costs
            return self.running == 0 and budget > 0
        return self.committed + self.costliest <= budget


class BudgetedSearch(Searcher):
    """A searcher that hands out its inner searcher's trials while the budget affords the next one."""

    def __init__(self, searcher: Searcher, budget: float, devices: float, unit: str, sweep_dir: Path):
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher, self.budget, self.devices, self.unit = searcher, budget, devices, unit
        self.sweep_dir = Path(sweep_dir)
        self.stopped = False
        self.given: set[str] = set()  # trials handed out by this driver (the record holds them once they start)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.stopped:
            return Searcher.FINISHED
        record = SweepRecord.load(self.sweep_dir)
        ledger = Ledger.of(record.trials.values(), self.devices, len(self.given - record.trials.keys()))
        if ledger.affords_next(self.budget):
            config = self.searcher.suggest(trial_id)
            if isinstance(config, dict):
                self.given.add(trial_id)
            return config
        if ledger.running:
            return None  # a running trial may end cheaper than assumed
        self.stopped = True
        record.budget_reached()
        return Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        self.searcher.on_trial_complete(trial_id, result, error)

    # Tune saves a wrapper's own state with get_state and the searcher it wraps (`.searcher`) on its own.
    def get_state(self) -> dict[str, Any]:
        return {"budget": self.budget, "devices": self.devices, "unit": self.unit, "stopped": self.stopped}

    def set_state(self, state: dict[str, Any]) -> None:
        self.budget, self.devices, self.unit = state["budget"], state["devices"], state["unit"]
        self.stopped = state["stopped"]
