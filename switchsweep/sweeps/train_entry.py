"""The function each Ray Train job runs, in a module of its own with nothing heavy to import: Train's
controller process imports the module of the function it is handed only to pass it on to the workers,
and importing `sweeps.trial` there (torch, MLflow, the models) would delay every trial."""

from __future__ import annotations

import time
from typing import Any


def train_worker(config: dict[str, Any]) -> None:
    called = time.time()  # before the imports: the sweep's record times them (sweeps.trial.PHASES)
    from switchsweep.sweeps.trial import run_worker  # in the worker, which needs all of it

    run_worker({**config, "t_train_fn": called})
