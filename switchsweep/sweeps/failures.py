"""Why a trial failed, and whether another attempt could help.

A non-finite loss, an invalid config, a bad checkpoint and running out of memory happen again on
every attempt from the same checkpoint, so they end the trial at once (deterministic). Anything else
(a killed worker, a lost node, a network error) is worth a restart from the last checkpoint.
"""

from __future__ import annotations

import collections
import io
import re
import sys
import traceback
from collections.abc import Iterator
from typing import Any, NoReturn

import torch

from switchsweep.platform.errors import CheckpointError, ConfigError, TrainingError
from switchsweep.platform.tracking import ATTEMPTS_TAG, FAILURE_TAG, Tracker

DETERMINISTIC = (TrainingError, ConfigError, CheckpointError, torch.OutOfMemoryError, MemoryError)
_OOM_TEXT = ("out of memory", "can't allocate memory")  # allocator errors raised as plain RuntimeError
FAILURE_REASON = "failure_reason"  # marks the reason in a failed trial's error, for the driver to read back
_REASON = re.compile(rf"{FAILURE_REASON}=(.+)")


class TrialFailure(Exception):
    """Raised by a worker for a failure that another attempt would repeat; carries its log's tail."""

    def __init__(self, reason: str, log_tail: str = ""):
        super().__init__(reason)
        self.reason, self.log_tail = reason, log_tail

    def __reduce__(self) -> tuple:  # crosses process boundaries through Ray
        return TrialFailure, (self.reason, self.log_tail)


def is_deterministic(e: BaseException) -> bool:
    return isinstance(e, DETERMINISTIC) or (isinstance(e, RuntimeError) and any(t in str(e) for t in _OOM_TEXT))


def reason(e: BaseException) -> str:
    """One line: the exception's type and the first line of its message."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


def _causes(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack = [e]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack += [e.__cause__, e.__context__, *getattr(e, "worker_failures", {}).values()]
        stack += [getattr(e, "controller_failure", None)]


def trial_failure(e: BaseException) -> TrialFailure | None:
    """The deterministic failure inside what `TorchTrainer.fit` raised, if there is one."""
    return next((c for c in _causes(e) if isinstance(c, TrialFailure)), None)


class LogTail:
    """Copies what the process writes to stdout/stderr into a ring of its last lines, while still
    writing it through (a failed trial's last lines become an MLflow artifact)."""

    def __init__(self, lines: int = 200):
        self.ring: collections.deque[str] = collections.deque(maxlen=lines)
        self.partial = io.StringIO()

    class _Tee:
        def __init__(self, stream: Any, tail: LogTail):
            self.stream, self.tail = stream, tail

        def write(self, text: str) -> int:
            self.tail.add(text)
            return self.stream.write(text)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.stream, name)

    def add(self, text: str) -> None:
        self.partial.write(text)
        *full, rest = self.partial.getvalue().split("\n")
        self.ring.extend(full)
        self.partial = io.StringIO(rest)
        self.partial.seek(0, io.SEEK_END)

    def __enter__(self) -> LogTail:
        self.saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = self._Tee(sys.stdout, self), self._Tee(sys.stderr, self)
        return self

    def __exit__(self, *exc: Any) -> None:
        sys.stdout, sys.stderr = self.saved

    def text(self, error: BaseException | None = None) -> str:
        lines = [*self.ring, self.partial.getvalue()] if self.partial.getvalue() else list(self.ring)
        if error is not None:
            lines += ["", *"".join(traceback.format_exception(error)).splitlines()]
        return "\n".join(lines) + "\n"


def fail_trial(tracker: Tracker, run_id: str, why: str, log_tail: str, attempts: int) -> NoReturn:
    """End a trial as failed, the one way: its run tagged with why and after how many attempts, its worker's
    last lines as an artifact, and the reason raised for the driver (`failure_reason`), which records the
    end and sets the run's status from it."""
    tracker.set_tags(run_id, {FAILURE_TAG: why, ATTEMPTS_TAG: attempts})
    tracker.log_text(run_id, log_tail, "failure/worker.log")
    fail_again(why)


def fail_again(why: str) -> NoReturn:
    """End a restart of a trial that `fail_trial` ended already, with the same reason (its run keeps
    what the failed attempt tagged and logged)."""
    raise RuntimeError(f"{FAILURE_REASON}={why}")


def repeated_failure(error_text: str) -> str | None:
    """The reason `fail_trial` put in a trial's error: a failure another attempt would repeat."""
    found = _REASON.search(error_text)
    return found.group(1).strip() if found else None


def failure_reason(error_text: str | None) -> str:
    """Why a trial failed: the reason `fail_trial` raised, else the error's last line."""
    text = error_text or ""
    repeated = repeated_failure(text)
    if repeated is not None:
        return repeated
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "the trial's process failed without an error message"
