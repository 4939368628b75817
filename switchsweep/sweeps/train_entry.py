"""The function each Ray Train job runs, in a module with nothing heavy to import: Train's controller
process imports the module of the function it is handed only to pass it on to the workers, and
importing `sweeps.worker` there (torch, MLflow, the models) would delay every trial."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any


def train_worker(config: dict[str, Any]) -> None:
    """`config["spec"]`: the trial's `sweeps.worker_spec.WorkerSpec`."""
    called = time.time()  # before the imports: the sweep's record times them (worker_spec.PHASES)
    from switchsweep.sweeps.worker import run_worker  # in the worker, which needs all of it

    run_worker(replace(config["spec"], train_fn_start=called))
