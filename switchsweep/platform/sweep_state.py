"""The one record of a sweep's state: `sweep.json` in its folder, written only by the sweep's driver.

It alone decides whether a sweep is running, interrupted or finished, and which of its trials are
over and how each ended (finished, stopped early, failed with a reason). The other places that
hold something about a sweep never decide it:
- Tune's experiment folder (`tune/`) is what *continues* an interrupted sweep (pending trials,
  searcher and scheduler state); it is never asked whether a trial or the sweep is done.
- MLflow run statuses and tags are written from this record's transitions, at the same moment
  (`sweeps.callbacks.TrialTracking`), for people and the UI to read.
- Optuna's trial states are told by the searcher from the same Tune events.
A driver holds `driver.lock` (an advisory lock the OS drops when the driver dies, even on SIGKILL)
while it runs the sweep, so a record saying "running" with no lock held is an interrupted sweep.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from switchsweep.platform.errors import ConfigError
from switchsweep.platform.files import atomic_write_text
from switchsweep.platform.sweep_dir import LOCK_FILE, STATE_FILE

RUNNING, INTERRUPTED, FINISHED = "running", "interrupted", "finished"
# How a trial ended: trained every step, stopped early by the scheduler, or failed (with a reason).
TRIAL_FINISHED, TRIAL_STOPPED, TRIAL_FAILED = "finished", "stopped", "failed"
TRIAL_OVER = (TRIAL_FINISHED, TRIAL_STOPPED, TRIAL_FAILED)


def load(sweep_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(sweep_dir) / STATE_FILE).read_text())


def save(sweep_dir: str | Path, state: dict[str, Any]) -> None:
    """Write the record atomically (a reader never sees half of it)."""
    atomic_write_text(Path(sweep_dir) / STATE_FILE, json.dumps(state, indent=2) + "\n")


def update_trial(sweep_dir: str | Path, trial_id: str, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into one trial's entry and save; returns the entry."""
    state = load(sweep_dir)
    entry = state.setdefault("trials", {}).setdefault(trial_id, {})
    entry.update(fields)
    save(sweep_dir, state)
    return entry


def trials_over(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t: e for t, e in state.get("trials", {}).items() if e.get("status") in TRIAL_OVER}


def is_locked(sweep_dir: str | Path) -> bool:
    """Whether a live driver holds the sweep's lock."""
    path = Path(sweep_dir) / LOCK_FILE
    if not path.is_file():
        return False
    with open(path) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def status(sweep_dir: str | Path, state: dict[str, Any] | None = None) -> str:
    """running, interrupted or finished: "running" only while a driver holds the lock."""
    state = load(sweep_dir) if state is None else state
    recorded = state.get("status", INTERRUPTED)
    return INTERRUPTED if recorded == RUNNING and not is_locked(sweep_dir) else recorded


def sweeps(root: str | Path) -> Iterator[Path]:
    """Sweep folders under `root`, oldest first."""
    found = [(load(p.parent).get("created", 0.0), p.parent) for p in Path(root).glob(f"*/{STATE_FILE}")]
    return (p for _, p in sorted(found))


class DriverLock:
    """Held by the one driver running a sweep (`acquire`); a second one is refused in one line."""

    def __init__(self, sweep_dir: str | Path):
        self.path = Path(sweep_dir) / LOCK_FILE
        self.fh = None

    @property
    def held(self) -> bool:
        return self.fh is not None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise ConfigError(
                f"sweep {self.path.parent.name} is being run by {holder}: wait for it to end or stop it, then --resume"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"driver pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        self.fh = fh

    def release(self) -> None:
        if self.fh is not None:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None
