"""ASHA whose rungs survive a driver restart.

Tune checkpoints a sweep's searcher and callbacks but not its scheduler: `Tuner.restore` brings back the
ASHA object as it was built, with empty rungs, so a resumed sweep would forget every result recorded
before the interruption and let through the trials it would have stopped. This one keeps its state in a
file beside the sweep, written after every decision and read back on first use after a restore.

It also opens the sweep's rung gate (`sweeps.gate`) for each trial it lets go on. Trials marked to train
every step (`sweeps.space.FULL`: the baseline's and racing seeds) are neither stopped nor recorded in
the rungs, which compare the search's configurations only.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from switchsweep.platform.files import atomic_write
from switchsweep.sweeps.compat import forget_trial
from switchsweep.sweeps.gate import start_gate
from switchsweep.sweeps.space import FULL

_OWN = ("_state_file", "_loaded", "_gate", "_gate_actor")


class ResumableASHA(ASHAScheduler):
    def __init__(self, state_file: str | Path, gate: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self._state_file = str(state_file)
        self._loaded = False
        self._gate = gate  # the sweep's id, naming its rung gate; None: trials do not wait at rungs
        self._gate_actor = None

    def relocate(self, state_file: str | Path) -> None:
        """Keep the state in `state_file` from now on (a resumed sweep's folder on another machine)."""
        self._state_file = str(state_file)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        path = Path(self._state_file)
        if path.is_file():
            with open(path, "rb") as fh:
                self.__dict__.update(pickle.load(fh))

    def _save(self) -> None:
        atomic_write(
            self._state_file, lambda fh: pickle.dump({k: v for k, v in self.__dict__.items() if k not in _OWN}, fh)
        )

    def on_trial_add(self, tune_controller, trial) -> None:
        self._load()
        # the gate is up before the trial's first report; a restored scheduler may lack either attribute
        if getattr(self, "_gate", None) and getattr(self, "_gate_actor", None) is None:
            self._gate_actor = start_gate(self._gate)
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._load()
        if trial.config.get(FULL):
            action = TrialScheduler.CONTINUE
        else:
            action = super().on_trial_result(tune_controller, trial, result)
            self._save()
        gate = getattr(self, "_gate_actor", None)
        if gate is not None and action == TrialScheduler.CONTINUE and "step" in result:
            gate.open.remote(trial.trial_id, int(result["step"]))
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._load()
        if trial.config.get(FULL):
            forget_trial(self, trial.trial_id)
        else:
            super().on_trial_complete(tune_controller, trial, result)
        self._save()

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._load()
        super().on_trial_remove(tune_controller, trial)
        self._save()
