"""Every file of a sweep's folder (`<root>/sweeps/<name>/<id>/`), named once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STATE_FILE = "sweep.json"  # the sweep's record (`platform.sweep_record`)
LOCK_FILE = "driver.lock"  # held by the one driver running the sweep
JOURNAL_FILE = "optuna.journal"  # the Optuna study of a tpe/random sweep
ASHA_FILE = "asha.pkl"  # ASHA's rungs, kept across driver restarts (`sweeps.asha`)
RANKING_CSV, RANKING_MD = "ranking.csv", "ranking.md"  # also written by `switchsweep export` into its folder
REPORT_FILE = "report.html"


@dataclass(frozen=True)
class SweepDir:
    path: Path

    @property
    def state(self) -> Path:
        return self.path / STATE_FILE

    @property
    def lock(self) -> Path:
        return self.path / LOCK_FILE

    @property
    def journal(self) -> Path:
        return self.path / JOURNAL_FILE

    @property
    def asha(self) -> Path:
        return self.path / ASHA_FILE

    @property
    def report(self) -> Path:
        return self.path / REPORT_FILE
