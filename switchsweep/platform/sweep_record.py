"""The one record of a sweep: `sweep.json` in its folder, read and written only here.

`SweepRecord` alone decides whether a sweep is running, interrupted or finished, and `TrialEntry.end`
how each of its trials ended (`TrialEnd`, decided in one place: `TrialEnd.of`). The other places that
hold something about a sweep mirror it and never decide it:
- MLflow run statuses are written from the record's transitions (`TrialEnd.mlflow_status`), at the
  same moment, for people and the UI (`sweeps.callbacks.TrialTracking`);
- Optuna's trial states are told from the same ends (`TrialEnd.optuna_state`, `sweeps.search`);
- Tune's experiment folder (`tune/`) is what *continues* an interrupted sweep (pending trials,
  searcher and scheduler state); it is never asked whether a trial or the sweep is done.
A driver holds `driver.lock` (an advisory lock the OS drops when the driver dies, even on SIGKILL)
while it runs the sweep, so a record saying "running" with no lock held is an interrupted sweep.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from switchsweep.platform.errors import ConfigError
from switchsweep.platform.files import atomic_write_text
from switchsweep.platform.sweep_dir import STATE_FILE, SweepDir

RUNNING, INTERRUPTED, FINISHED = "running", "interrupted", "finished"


class TrialEnd(str, Enum):
    """Where a trial stands: running, or over as finished (every step trained), stopped (early, by the
    scheduler) or failed. Each maps once to MLflow's run status and Optuna's trial state."""

    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"

    @classmethod
    def of(cls, step: int, train_steps: int, failed: bool = False) -> TrialEnd:
        """How a trial that is over ended: the one place "finished" is decided."""
        if failed:
            return cls.FAILED
        return cls.FINISHED if step >= train_steps else cls.STOPPED

    @classmethod
    def of_group(cls, ends: Iterable[TrialEnd]) -> TrialEnd:
        """A configuration's, from its seeds': failed if any failed, else running if any runs, else stopped
        if any was stopped early, else finished."""
        ends = set(ends)
        return next((e for e in (cls.FAILED, cls.RUNNING, cls.STOPPED) if e in ends), cls.FINISHED)

    @property
    def over(self) -> bool:
        return self is not TrialEnd.RUNNING

    @property
    def mlflow_status(self) -> str:
        return _MLFLOW[self]

    @property
    def optuna_state(self) -> str:
        """The name of Optuna's `TrialState` for a configuration whose seed ended so."""
        return _OPTUNA[self]

    @classmethod
    def from_mlflow(cls, status: str) -> TrialEnd:
        """The end an MLflow run status mirrors (a sweep whose record is not on this machine)."""
        return next((end for end, s in _MLFLOW.items() if s == status), cls.RUNNING)


_MLFLOW = {
    TrialEnd.RUNNING: "RUNNING",
    TrialEnd.FINISHED: "FINISHED",
    TrialEnd.STOPPED: "KILLED",
    TrialEnd.FAILED: "FAILED",
}
_OPTUNA = {
    TrialEnd.RUNNING: "RUNNING",
    TrialEnd.FINISHED: "COMPLETE",
    TrialEnd.STOPPED: "PRUNED",
    TrialEnd.FAILED: "FAIL",
}


@dataclass
class TrialEntry:
    """One trial as the driver saw it: how it stands, how far it trained, its attempts and timings."""

    status: TrialEnd = TrialEnd.RUNNING
    step: int = 0
    attempt: int = 1  # the attempt running now (an inline trial's count grows with each of its restarts)
    loop_s: float | None = None  # training seconds over every attempt
    wall_s: float | None = None  # from the trial's start to its last report or its end
    overhead_s: float | None = None  # wall_s - loop_s, at its end
    reason: str = ""  # why it failed; set while running too when a restart would fail the same way
    timings: dict[str, float] = field(default_factory=dict)  # epoch seconds of its phases, gate and report seconds

    @property
    def over(self) -> bool:
        return self.status.over

    def to_json(self) -> dict[str, Any]:
        plain = {k: v for k, v in dataclasses.asdict(self).items() if k != "timings" and v not in (None, "")}
        return {**plain, "status": self.status.value, **self.timings}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrialEntry:
        known = {f.name for f in dataclasses.fields(cls)} - {"timings"}
        entry = cls(**{k: v for k, v in data.items() if k in known})
        entry.status = TrialEnd(entry.status)
        entry.timings = {k: float(v) for k, v in data.items() if k not in known}
        return entry


@dataclass
class SweepRecord:
    """The sweep's record; `save` writes it whole and atomically (a reader never sees half of it)."""

    path: Path  # the sweep's folder
    sweep_id: str = ""
    name: str = ""
    overrides: list[str] = field(default_factory=list)  # what composed it, credentials redacted
    created: float = field(default_factory=time.time)
    status: str = RUNNING
    tune_dir: str = "tune"  # Tune's experiment of the current run (each --extend starts its own)
    extensions: list[int] = field(default_factory=list)  # configurations each --extend added
    experiment_id: str = ""
    parent_run_id: str = ""
    tracking_uri: str = ""  # redacted
    # The sweep's folder in its storage (a bucket on a cluster), where every save copies the sweep's state.
    storage: str = ""
    # sweep.budget's account: limit, unit, spent (device-hours), skipped (trials not started), reached
    budget: dict[str, Any] = field(default_factory=dict)
    trials: dict[str, TrialEntry] = field(default_factory=dict)

    @classmethod
    def load(cls, sweep_dir: str | Path) -> SweepRecord:
        path = Path(sweep_dir)
        state = SweepDir(path).state
        return cls._parse(path, state.read_text(), str(state))

    @classmethod
    def _parse(cls, path: Path, text: str, where: str) -> SweepRecord:
        try:
            data = json.loads(text)
            trials = {t: TrialEntry.from_json(e) for t, e in data.pop("trials", {}).items()}
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(path=path, trials=trials, **{k: v for k, v in data.items() if k in known})
        except (ValueError, TypeError, AttributeError) as e:  # not JSON, or not the record's shape
            raise ConfigError(
                f"{where}: not a readable sweep record ({type(e).__name__}): move that folder aside and start a new "
                "sweep, or put back the record a backup holds"
            ) from None

    @staticmethod
    def exists(sweep_dir: str | Path) -> bool:
        return SweepDir(Path(sweep_dir)).state.is_file()

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("path", "trials")}
        return {**data, "trials": {t: e.to_json() for t, e in self.trials.items()}}

    def save(self) -> None:
        folder = SweepDir(self.path)
        atomic_write_text(folder.state, json.dumps(self.to_json(), indent=2) + "\n")
        if self.storage and not _is_folder(self.storage, self.path):
            folder.copy_to(self.storage)

    def budget_reached(self) -> None:
        """The budget affords no next trial: the sweep starts no more."""
        self.budget["reached"] = True
        self.save()

    def set_status(self, status: str) -> None:
        self.status = status
        self.save()

    def trials_over(self) -> dict[str, TrialEntry]:
        return {t: e for t, e in self.trials.items() if e.over}

    def failed(self) -> dict[str, str]:
        """Failed trials and why."""
        return {t: e.reason for t, e in self.trials.items() if e.status is TrialEnd.FAILED}

    def ends(self) -> dict[str, TrialEnd]:
        return {t: e.status for t, e in self.trials.items()}

    # Trial transitions, each saved at once: the driver records them as Tune reports them.
    def trial_started(self, trial_id: str) -> TrialEntry | None:
        """A trial (re)starts: a new entry, or one more attempt for a restarted one (but one that will only
        fail again, `trial_will_fail_again`); None if it is over."""
        entry = self.trials.get(trial_id)
        if entry is not None and entry.over:
            return None
        if entry is None:
            entry = self.trials[trial_id] = TrialEntry()
            entry.timings["t_trial_start"] = time.time()
        elif not entry.reason:
            entry.attempt += 1
        self.save()
        return entry

    def trial_reported(
        self,
        trial_id: str,
        *,
        step: int | None,
        loop_s: float | None,
        attempt: int | None,
        wall_s: float | None,
        timings: dict[str, float],
    ) -> None:
        entry = self.trials.setdefault(trial_id, TrialEntry())
        entry.step = entry.step if step is None else int(step)
        entry.loop_s = entry.loop_s if loop_s is None else float(loop_s)
        entry.attempt = entry.attempt if attempt is None else int(attempt)
        entry.wall_s = entry.wall_s if wall_s is None else wall_s
        entry.timings.update(timings)
        self.save()

    def trial_will_fail_again(self, trial_id: str, reason: str) -> None:
        """A restarted trial's failure that its next attempt would repeat: the restart ends with it."""
        self.trials.setdefault(trial_id, TrialEntry()).reason = reason
        self.save()

    def trial_ended(
        self,
        trial_id: str,
        train_steps: int,
        failure: str | None,
        wall_s: float | None,
        mirror: Callable[[TrialEntry], None] | None = None,
    ) -> TrialEntry | None:
        """Record how a trial ended (`TrialEnd.of` its last step); None if it was recorded over already
        (a restored Tune may report the same end again). `mirror` writes the end elsewhere (MLflow) before
        the record is saved, so a driver killed in between records it again on resume."""
        entry = self.trials.setdefault(trial_id, TrialEntry())
        if entry.over:
            return None
        entry.status = TrialEnd.of(entry.step, train_steps, failed=failure is not None)
        entry.reason = failure or ""
        entry.timings["t_trial_end"] = time.time()
        if wall_s is not None and entry.loop_s is not None:
            entry.wall_s, entry.overhead_s = wall_s, wall_s - entry.loop_s
        if mirror is not None:
            mirror(entry)
        self.save()
        return entry


def _is_folder(storage: str, path: Path) -> bool:
    """Whether `storage` names the local folder `path` itself (the default storage: the sweep's own folder)."""
    return "://" not in storage and Path(storage).expanduser().resolve() == path.resolve()


def is_locked(sweep_dir: str | Path) -> bool:
    """Whether a live driver holds the sweep's lock."""
    path = SweepDir(Path(sweep_dir)).lock
    if not path.is_file():
        return False
    with open(path) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def sweep_status(sweep_dir: str | Path) -> str:
    """running, interrupted or finished: "running" only while a driver holds the lock."""
    recorded = SweepRecord.load(sweep_dir).status
    return INTERRUPTED if recorded == RUNNING and not is_locked(sweep_dir) else recorded


def sweeps(root: str | Path) -> Iterator[Path]:
    """Sweep folders under `root`, oldest first."""
    found = [SweepRecord.load(p.parent) for p in Path(root).glob(f"*/{STATE_FILE}")]
    return (r.path for r in sorted(found, key=lambda r: r.created))


def stored_sweeps(base: str) -> list[tuple[str, SweepRecord]]:
    """The sweeps whose state is kept under `base` (`<storage_path>/<name>`), oldest first: each one's folder
    there and its record as last saved (a driver that died mid-sweep left it "running")."""
    from switchsweep.platform.storage import list_folders, read_bytes, storage_join

    found = []
    for folder in list_folders(base):
        state = storage_join(folder, STATE_FILE)
        data = read_bytes(state)
        if data is not None:
            found.append((folder, SweepRecord._parse(Path(folder), data.decode(), state)))
    return sorted(found, key=lambda f: f[1].created)


class DriverLock:
    """Held by the one driver running a sweep (`acquire`); a second one is refused in one line."""

    def __init__(self, sweep_dir: str | Path):
        self.path = SweepDir(Path(sweep_dir)).lock
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
