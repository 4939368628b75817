"""Driver-side bookkeeping of trials (a Tune callback): Tune may stop a trial's process at any
report, so its end (wall time, orchestration overhead, MLflow status) is recorded here."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from switchsweep.platform.tracking import PARENT_TAG, TRIAL_TAG, Tracker

TRIAL_SUMMARY = "trial.json"  # written once a trial is over (finished, stopped early or failed)


class TrialTracking(Callback):
    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, sweep_dir: str, train_steps: int):
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.sweep_dir, self.train_steps = Path(sweep_dir), train_steps
        self.started: dict[str, float] = {}
        self.last: dict[str, dict[str, Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Tune checkpoints callbacks with the experiment; keep only the settings (clocks restart on resume).
        return {**self.__dict__, "started": {}, "last": {}}

    def _run_id(self, trial_id: str) -> str | None:
        runs = Tracker(self.tracking_uri).search(
            self.experiment_id, f"tags.`{PARENT_TAG}` = '{self.parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'")
        return runs[0].info.run_id if runs else None

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.started[trial.trial_id] = time.perf_counter()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.last[trial.trial_id] = result

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._finish(trial.trial_id, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._finish(trial.trial_id, failed=True)

    def _finish(self, trial_id: str, failed: bool) -> None:
        last = self.last.get(trial_id, {})
        step = int(last.get("step", 0))
        summary: dict[str, Any] = {"trial_id": trial_id, "step": step, "complete": step >= self.train_steps and not failed}
        if trial_id in self.started and "loop_s" in last:
            wall = time.perf_counter() - self.started[trial_id]
            summary.update(wall_s=wall, loop_s=float(last["loop_s"]), overhead_s=wall - float(last["loop_s"]))
        run_id = self._run_id(trial_id)
        if run_id is not None:
            tracker = Tracker(self.tracking_uri)
            timing = {k: summary[k] for k in ("wall_s", "overhead_s") if k in summary}
            if timing:
                tracker.log_metrics(run_id, {f"trial_{k}": v for k, v in timing.items()}, step=step)
            if not failed and not summary["complete"]:
                tracker.set_tags(run_id, {"switchsweep.stopped_early": "true"})
            tracker.set_status(run_id, "FAILED" if failed else "FINISHED" if summary["complete"] else "KILLED")
        out = self.sweep_dir / "trials" / trial_id
        out.mkdir(parents=True, exist_ok=True)
        (out / TRIAL_SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
