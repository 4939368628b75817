"""Driver-side bookkeeping of trials (a Tune callback): Tune may stop a trial's process at any
report, so its progress and end are written here, into the sweep's record (`platform.sweep_record`),
and from there onto the trial's MLflow run (status, timing, why it failed)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
from ray.tune import Callback, Checkpoint

from switchsweep.platform.storage import storage_fs
from switchsweep.platform.sweep_record import SweepRecord, TrialEnd, TrialEntry
from switchsweep.platform.tracking import CHECKPOINT_ARTIFACT, CHECKPOINT_TAG, FAILURE_TAG, STOPPED_TAG, Tracker
from switchsweep.sweeps.failures import failure_reason, repeated_failure
from switchsweep.sweeps.worker_spec import PHASES, PHASES_KEY


def train_checkpoints(storage_path: str, trial_id: str) -> tuple[pafs.FileSystem, list[str]]:
    """The folders of a trial's checkpoints in Ray Train's storage (a path or URI), oldest first."""
    fs, base = storage_fs(storage_path)
    return fs, _checkpoint_folders(fs, f"{base}/train-{trial_id}")


def _inline_checkpoints(last: Checkpoint) -> tuple[pafs.FileSystem, list[str]]:
    """Every checkpoint folder Tune keeps for an inline trial (its last one and those kept before it)."""
    return last.filesystem, _checkpoint_folders(last.filesystem, last.path.rsplit("/", 1)[0])


def _checkpoint_folders(fs: pafs.FileSystem, folder: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_"))


def place_checkpoint(
    tracker: Tracker,
    run_id: str,
    storage_path: str,
    trial_id: str,
    keep: str,
    finished: bool,
    inline: Checkpoint | None = None,
) -> None:
    """Keep a trial's final checkpoint once: a finished trial whose checkpoint is in MLflow (keep=last)
    loses Ray's copies; otherwise the run is tagged with where Ray keeps it: Ray Train, or Tune for an
    inline trial (its last checkpoint, `inline`)."""
    fs, folders = _inline_checkpoints(inline) if inline is not None else train_checkpoints(storage_path, trial_id)
    if finished and keep == "last" and tracker.has_artifact(run_id, CHECKPOINT_ARTIFACT):
        # Tune's state may still name an inline trial's folder (its snapshot can be older than the
        # trial's end), and a resume restores what it names: those folders stay, empty.
        clear = fs.delete_dir_contents if inline is not None else fs.delete_dir
        for folder in folders:
            clear(folder)
    elif folders:
        last = inline.path if inline is not None else folders[-1]
        where = last if "://" not in storage_path else f"{storage_path.split('://')[0]}://{last}"
        tracker.set_tags(run_id, {CHECKPOINT_TAG: f"{where}/ckpt.pt"})


class TrialTracking(Callback):
    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        sweep_dir: str,
        train_steps: int,
        storage_path: str,
        log_checkpoints: str,
    ):
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.sweep_dir, self.train_steps = Path(sweep_dir), train_steps
        self.storage_path, self.log_checkpoints = storage_path, log_checkpoints
        self.started: dict[str, tuple[float, float]] = {}  # trial -> (clock at start, wall seconds before it)

    def __getstate__(self) -> dict[str, Any]:
        # Tune checkpoints callbacks with the experiment; clocks restart on resume (the record keeps the totals).
        return {**self.__dict__, "started": {}}

    def _wall(self, trial_id: str) -> float | None:
        if trial_id not in self.started:
            return None
        clock, before = self.started[trial_id]
        return before + time.perf_counter() - clock

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        # Before the trial's function runs: a restarted inline trial reads its attempt from the entry.
        entry = SweepRecord.load(self.sweep_dir).trial_started(trial.trial_id)
        if entry is None:
            return  # over before a driver restart: Tune's snapshot was older than the record
        # A trial Tune restarts (an inline trial whose process died) keeps its clock: its wall counts the restart.
        self.started.setdefault(trial.trial_id, (time.perf_counter(), entry.wall_s or 0.0))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        phases = result.get(PHASES_KEY, {})
        timings = {k: phases[k] for k in PHASES if k in phases}
        SweepRecord.load(self.sweep_dir).trial_reported(
            trial.trial_id,
            step=result.get("step"),
            loop_s=result.get("loop_s"),
            attempt=result.get("attempt"),
            wall_s=self._wall(trial.trial_id),
            timings=timings,
        )

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        why = repeated_failure(_error_text(trial))
        if why is not None:  # deterministic: the restart ends with the same reason instead of training again
            SweepRecord.load(self.sweep_dir).trial_will_fail_again(trial.trial_id, why)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, failure=None)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, failure=failure_reason(_error_text(trial)))

    def _finish(self, trial: Any, failure: str | None) -> None:
        record = SweepRecord.load(self.sweep_dir)
        record.trial_ended(
            trial.trial_id, self.train_steps, failure, self._wall(trial.trial_id), lambda e: self._mirror(trial, e)
        )

    def _mirror(self, trial: Any, entry: TrialEntry) -> None:
        """The trial's end onto its MLflow run: timing, tags, where its checkpoint is kept, its status."""
        tracker = Tracker(self.tracking_uri)
        runs = tracker.children(self.experiment_id, self.parent_run_id, trial.trial_id)
        if not runs:
            return
        run_id = runs[0].info.run_id
        if entry.overhead_s is not None:
            tracker.log_metrics(
                run_id, {"trial_wall_s": entry.wall_s, "trial_overhead_s": entry.overhead_s}, step=entry.step
            )
        tags = {STOPPED_TAG: "true"} if entry.status is TrialEnd.STOPPED else {}
        if entry.status is TrialEnd.FAILED:
            tags[FAILURE_TAG] = entry.reason
        if tags:
            tracker.set_tags(run_id, tags)
        if entry.status is not TrialEnd.FAILED:
            place_checkpoint(
                tracker,
                run_id,
                self.storage_path,
                trial.trial_id,
                self.log_checkpoints,
                finished=entry.status is TrialEnd.FINISHED,
                inline=trial.checkpoint,
            )
        tracker.set_status(run_id, entry.status.mlflow_status)


def _error_text(trial: Any) -> str:
    # The error file is written in the trial's local folder first (storage gets its copy later).
    local = Path(trial.error_file) if trial.error_file else None
    return local.read_text(errors="replace") if local is not None and local.is_file() else (trial.get_error() or "")
