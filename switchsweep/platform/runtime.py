"""The Ray runtime of a sweep: connect to a cluster or start a local instance, and check that one
trial's resources can ever be granted (otherwise Tune waits forever for a placement group)."""

from __future__ import annotations

import dataclasses
import logging
import os

import ray

from switchsweep.platform.errors import ConfigError
from switchsweep.platform.sweep_config import RayConfig, trial_resources

# Environment of every Ray worker of the sweep: a Train worker group on a loaded machine can take
# longer than the default 60 s to start, and the Train controller's 2 s poll adds up to a poll to
# every report and to every trial's end.
WORKER_ENV = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "180", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


def local_num_cpus(r: RayConfig) -> int:
    """Logical CPUs of a local instance: the cores plus one, because every trial's driver holds a
    fraction of a CPU beside its whole-CPU workers; without the extra one a 1-worker trial per core
    would never fit."""
    return r.num_cpus or (os.cpu_count() or 1) + 1


def resolve_worker_cpus(r: RayConfig, max_concurrent: int) -> RayConfig:
    """Fill in an unset `cpus_per_worker`. Ray caps a worker's torch threads at its CPUs, so on a local
    instance the workers of the concurrent trials share the cores between them; on a cluster, 1."""
    if r.cpus_per_worker is not None:
        return r
    cores = os.cpu_count() or 1
    cpus = 1.0 if r.address else float(max(1, cores // (r.num_workers * max_concurrent)))
    return dataclasses.replace(r, cpus_per_worker=cpus)


def start_ray(r: RayConfig) -> None:
    """Connect to `r.address`, or start a local instance bound to 127.0.0.1 (dashboard on: Train needs
    Ray's state API to free the workers of trials ASHA stops). A process that already initialised Ray
    keeps its instance."""
    if ray.is_initialized():
        return
    quiet = dict(logging_level=logging.WARNING, log_to_driver=False, runtime_env={"env_vars": WORKER_ENV})
    if r.address:
        try:
            ray.init(address=r.address, **quiet)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise ConfigError(f"sweep.ray.address={r.address}: cannot connect ({str(e).splitlines()[0][:160]}): "
                              "start the cluster or drop the setting for a local instance") from e
        return
    _loopback_only()
    ray.init(num_cpus=local_num_cpus(r), include_dashboard=True, dashboard_host="127.0.0.1",
             _node_ip_address="127.0.0.1", **quiet)


def _loopback_only() -> None:
    """Keep a local instance on 127.0.0.1. On Linux Ray swaps a loopback node address for the machine's
    own and then binds its servers (GCS, raylet, agents, workers) to every interface; the switch that
    keeps a node local is read at import in this process and from the environment in the ones it starts."""
    from ray._private import ray_constants

    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def check_resources(r: RayConfig, total: dict[str, float] | None = None) -> None:
    """Refuse a trial that needs more of a resource than the whole cluster has."""
    total = ray.cluster_resources() if total is None else total
    for name, need in trial_resources(r).items():
        have = total.get(name, 0.0)
        if need > have:
            per = f"cpus_per_worker={r.cpus_per_worker}" if name == "CPU" else f"gpus_per_worker={r.gpus_per_worker}"
            raise ConfigError(
                f"sweep.ray.num_workers={r.num_workers} x {per} needs {need:g} {name} per trial but the cluster has "
                f"{have:g}: lower sweep.ray.num_workers or add nodes"
            )
