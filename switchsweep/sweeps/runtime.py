"""The Ray runtime of a sweep: connect to a cluster or start a local instance, and check that one
trial's resources can ever be granted (otherwise Tune waits forever for a placement group)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import ray

from switchsweep.config.resources import check_node_types, node_types, trial_resources
from switchsweep.config.sweep_schema import RayConfig
from switchsweep.platform.errors import ConfigError
from switchsweep.sweeps.compat import canonical_address, init_on_loopback, keep_local_instance_on_loopback

# A local instance has no nodes to be preempted: no Train preemption watcher, one process less per trial.
LOCAL_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
# MLflow's client login (a cluster's server asks for one), passed on to the trials.
MLFLOW_LOGIN = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def worker_env(r: RayConfig) -> dict[str, str]:
    """Environment of every Ray worker of the sweep: a Train worker group may take longer than Train's
    default 60 s to start (a loaded machine; a GPU node's boot and setup, `worker_start_timeout_s`), and
    the Train controller's 2 s poll adds up to a poll to every report and to every trial's end. On a
    cluster, the driver's MLflow login too: trials on other nodes log to a server that asks for one."""
    env = {
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": f"{r.worker_start_timeout_s:g}",
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    }
    if not r.address:
        return {**env, **LOCAL_ENV}
    return {**env, **{k: os.environ[k] for k in MLFLOW_LOGIN if k in os.environ}}


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
    quiet = dict(
        logging_level=logging.WARNING,
        log_to_driver=False,
        runtime_env={"env_vars": worker_env(r)},
    )
    if r.address:
        _check_reachable(r.address)
        with _stderr_kept() as said:
            try:
                ray.init(address=r.address, **quiet)
                return
            except (ConnectionError, ValueError, RuntimeError) as e:
                error, refused = e, "InvalidAuthToken" in said.read_text(errors="replace")
        if refused:
            raise ConfigError(
                f"sweep.ray.address={r.address}: the cluster refused this machine's Ray token: set RAY_AUTH_TOKEN "
                "(or ~/.ray/auth_token) to the cluster's token (`ray get-auth-token` on its head)"
            ) from None
        raise ConfigError(
            f"sweep.ray.address={r.address}: cannot connect ({str(error).splitlines()[0][:160]}): "
            "start the cluster (make cluster-up) or drop the setting for a local instance"
        ) from None
    keep_local_instance_on_loopback()
    init_on_loopback(num_cpus=local_num_cpus(r), include_dashboard=True, dashboard_host="127.0.0.1", **quiet)


def _check_reachable(address: str) -> None:
    """Ray retries an unreachable head for minutes: knock on its port first, for a few seconds."""
    fix = "start the cluster (make cluster-up) or drop the setting for a local instance"
    try:
        target = address.removeprefix("ray://") if address.startswith("ray://") else canonical_address(address)
    except (ConnectionError, ValueError) as e:
        raise ConfigError(f"sweep.ray.address={address}: {str(e).splitlines()[0][:160]}: {fix}") from None
    if target is None:
        raise ConfigError(f"sweep.ray.address={address}: no running Ray cluster was found: {fix}")
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"sweep.ray.address={address}: nothing answers at {target} ({type(e).__name__}): {fix}"
        ) from None


@contextlib.contextmanager
def _stderr_kept() -> Iterator[Path]:
    """Hold this process's stderr (file descriptor 2) in a file meanwhile: Ray's core writes a
    connection's failures there, many lines of them, and only they say why (a refused token)."""
    with tempfile.NamedTemporaryFile(prefix="switchsweep-ray-", suffix=".log") as held:
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            yield Path(held.name)
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def check_cluster(r: RayConfig) -> None:
    """Refuse, before any trial, a trial the connected cluster can never hold: against what a local
    instance has, or against the autoscaler's node types where its config is at hand (a cluster
    without one may add nodes that nothing here knows of)."""
    if not r.address:
        check_resources(r)
        return
    types = node_types(r.cluster_config)
    if types is not None and all(types.values()):  # a type with resources {} is sized by its provider: unknown here
        check_node_types(r, types, [n["Resources"] for n in ray.nodes() if n["Alive"]])


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
