"""Every file of a sweep's folder (`<root>/sweeps/<name>/<id>/`), named once, and the copy of its state
kept in the sweep's storage (`<storage_path>/<name>/<id>/`, a bucket on a cluster): the record, the Optuna
journal and ASHA's rungs, which a driver on another machine resumes from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STATE_FILE = "sweep.json"  # the sweep's record (`platform.sweep_record`)
LOCK_FILE = "driver.lock"  # held by the one driver running the sweep
JOURNAL_FILE = "optuna.journal"  # the Optuna study of a tpe/random sweep
ASHA_FILE = "asha.pkl"  # ASHA's rungs, kept across driver restarts (`sweeps.asha`)
RANKING_CSV, RANKING_MD = "ranking.csv", "ranking.md"  # also written by `switchsweep export` into its folder
REPORT_FILE = "report.html"
# What a lost machine's disk must not take with it, in the order it is copied: the record last, so that a copy
# cut short never has a record newer than the search state beside it.
KEPT_IN_STORAGE = (JOURNAL_FILE, ASHA_FILE, STATE_FILE)


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

    def copy_to(self, storage: str) -> None:
        """Write the sweep's state into its storage folder, each file whole or not at all."""
        from switchsweep.platform.storage import storage_join, write_bytes

        for name in KEPT_IN_STORAGE:
            local = self.path / name
            if local.is_file():
                write_bytes(storage_join(storage, name), local.read_bytes())

    def copy_from(self, storage: str) -> None:
        """Bring the sweep's state from its storage folder into this (new) folder."""
        from switchsweep.platform.storage import read_bytes, storage_join, write_bytes

        for name in KEPT_IN_STORAGE:
            data = read_bytes(storage_join(storage, name))
            if data is not None:
                write_bytes(str(self.path / name), data)
