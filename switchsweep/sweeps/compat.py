"""Every private part of Ray (Core, Tune, Train) and Optuna the sweeps rely on, and only here.

Each is held together by the exact pins in pyproject.toml alone: `tests/test_compat.py` checks every one
against the installed versions and names the one an upgrade moved, and fails if any other module of the
package touches a private name of those libraries.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import ray
from ray import tune
from ray.train.v2._internal.util import TrainingFramework
from ray.tune import CLIReporter
from ray.tune.schedulers import ASHAScheduler

if TYPE_CHECKING:  # Train's workers import this module: no Optuna there
    import optuna

# What a Train backend config answers for `framework`: Train's own torch backend's.
TORCH_FRAMEWORK = TrainingFramework.TORCH


def canonical_address(address: str) -> str | None:
    """A Ray address as host:port ("auto": the running cluster's; None where none runs), as `ray.init` reads it."""
    from ray._private.services import canonicalize_bootstrap_address

    return canonicalize_bootstrap_address(address)


def init_on_loopback(**kwargs: Any) -> None:
    """`ray.init` of a local instance whose node address is 127.0.0.1 (with `keep_local_instance_on_loopback`)."""
    ray.init(_node_ip_address="127.0.0.1", **kwargs)


def session_temp_dir() -> str:
    """Ray's temp folder on this machine (sessions' logs and Tune's staging folders), once connected."""
    return ray._private.worker._global_node.get_temp_dir_path()


def keep_local_instance_on_loopback() -> None:
    """Keep a local instance on 127.0.0.1. On Linux Ray swaps a loopback node address for the machine's
    own and then binds its servers (GCS, raylet, agents, workers) to every interface; the switch that
    keeps a node local is read at import in this process and from the environment in the ones it starts."""
    from ray._private import ray_constants

    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def restored_parts(tuner: tune.Tuner) -> tuple[list[Any], Any, Any]:
    """The callbacks, searcher and scheduler of a tuner from `Tuner.restore`, as they were unpickled."""
    local = tuner._local_tuner
    return list(local.get_run_config().callbacks or []), local._tune_config.search_alg, local._tune_config.scheduler


def set_torch_distributed_env_vars() -> None:
    """LOCAL_RANK and friends in a Train worker, as Train's torch backend sets them."""
    from ray.train.torch.config import _set_torch_distributed_env_vars

    _set_torch_distributed_env_vars()


def shutdown_torch(destroy_process_group: bool) -> None:
    """Train's torch backend's end of a worker: its process group destroyed, CUDA caches freed."""
    from ray.train.torch.config import _shutdown_torch

    _shutdown_torch(destroy_process_group=destroy_process_group)


def _torch_trainer_without_datasets() -> type:
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks import DatasetsCallback

    class TorchTrainerWithoutDatasets(TorchTrainer):
        """TorchTrainer without Ray Data's dataset manager: the workers load their own data, and the manager
        is one more process on the critical path of every Train job's start."""

        def _create_default_callbacks(self) -> list:
            return [cb for cb in super()._create_default_callbacks() if not isinstance(cb, DatasetsCallback)]

    TorchTrainerWithoutDatasets.__module__ = __name__
    TorchTrainerWithoutDatasets.__qualname__ = TorchTrainerWithoutDatasets.__name__
    return TorchTrainerWithoutDatasets


def __getattr__(name: str) -> Any:
    # Train's controller imports this module (the loopback backend) and must not import torch, which
    # TorchTrainer does: that class is made on first use, and pickles by its name here.
    if name == "TorchTrainerWithoutDatasets":
        globals()[name] = _torch_trainer_without_datasets()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ReporterWithoutBestLine(CLIReporter):
    """Tune's classic trial table without its "current best trial" line, which looks up every parameter
    column in the best trial's config (a baseline trial lacks the searched keys)."""

    def _current_best_trial(self, trials: list) -> tuple[None, str | None]:
        return None, self._metric


def forget_trial(scheduler: ASHAScheduler, trial_id: str) -> None:
    """Drop a trial ASHA was told of but must not rank (it never entered a rung)."""
    scheduler._trial_info.pop(trial_id, None)


def storage_id(trial: optuna.trial.Trial) -> int:
    """An asked Optuna trial's id in its study's storage: what `optuna.trial.Trial(study, id)` takes to
    report to it again after a restore, where its number alone is not enough."""
    return trial._trial_id
