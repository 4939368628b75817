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
from typing import Any

import ray
import yaml

from switchsweep.platform.errors import ConfigError
from switchsweep.platform.sweep_config import RayConfig, driver_bundle, trial_resources, worker_bundle

# A local instance has no nodes to be preempted: no Train preemption watcher, one process less per trial.
LOCAL_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def worker_env(r: RayConfig) -> dict[str, str]:
    """Environment of every Ray worker of the sweep: a Train worker group may take longer than Train's
    default 60 s to start (a loaded machine; a GPU node's boot and setup, `worker_start_timeout_s`), and
    the Train controller's 2 s poll adds up to a poll to every report and to every trial's end."""
    env = {
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": f"{r.worker_start_timeout_s:g}",
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    }
    return env if r.address else {**env, **LOCAL_ENV}


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
    _loopback_only()
    ray.init(
        num_cpus=local_num_cpus(r),
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        _node_ip_address="127.0.0.1",
        **quiet,
    )


def _check_reachable(address: str) -> None:
    """Ray retries an unreachable head for minutes: knock on its port first, for a few seconds."""
    from ray._private.services import canonicalize_bootstrap_address  # pinned Ray: a private helper

    fix = "start the cluster (make cluster-up) or drop the setting for a local instance"
    try:
        target = (
            address.removeprefix("ray://") if address.startswith("ray://") else canonicalize_bootstrap_address(address)
        )
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


def ray_temp_dir() -> str:
    """Ray's temp folder on this machine (sessions' logs and Tune's staging folders), once connected."""
    return ray._private.worker._global_node.get_temp_dir_path()


def _loopback_only() -> None:
    """Keep a local instance on 127.0.0.1. On Linux Ray swaps a loopback node address for the machine's
    own and then binds its servers (GCS, raylet, agents, workers) to every interface; the switch that
    keeps a node local is read at import in this process and from the environment in the ones it starts."""
    from ray._private import ray_constants

    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


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


def node_types(path: str) -> dict[str, dict[str, Any]] | None:
    """The node types (name -> resources) of an autoscaler config (`ray up` writes it on the head as
    ~/ray_bootstrap_config.yaml), or None where there is none."""
    file = Path(path).expanduser()
    if not file.is_file():
        return None
    try:
        types = yaml.safe_load(file.read_text())["available_node_types"]
        return {name: dict(t.get("resources") or {}) for name, t in types.items()}
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(
            f"sweep.ray.cluster_config={path}: not an autoscaler config with available_node_types "
            f"({type(e).__name__}): point it at the cluster's config or at a missing file"
        ) from None


def _fits(bundle: dict[str, float], have: dict[str, Any]) -> bool:
    return all(float(have.get(name, 0)) >= amount for name, amount in bundle.items() if amount > 0)


def check_node_types(r: RayConfig, types: dict[str, dict[str, Any]], present: list[dict[str, float]]) -> None:
    """On an autoscaling cluster, refuse a trial that no node type (nor a node already up) can ever
    hold: its driver, or one of its workers (a GPU type that the config lacks, say), or, placed on one
    node (STRICT_PACK), all its workers together."""
    nodes = [*types.values(), *present]
    add = "add it to a node type's resources in cluster.yaml or lower the request"
    wanted = [("a trial's driver", driver_bundle(r), add), ("one DDP worker", worker_bundle(r), add)]
    if r.placement_strategy == "STRICT_PACK" and r.num_workers > 1:
        together = {name: amount * r.num_workers for name, amount in worker_bundle(r).items()}
        what = f"its {r.num_workers} DDP workers on one node (placement_strategy=STRICT_PACK)"
        wanted.append(
            (what, together, "add a node type that large to cluster.yaml, or set sweep.ray.placement_strategy=PACK")
        )
    for what, bundle, fix in wanted:
        if any(_fits(bundle, have) for have in nodes):
            continue
        need = ", ".join(f"{name}: {amount:g}" for name, amount in bundle.items())
        missing = [name for name, amount in bundle.items() if not any(float(h.get(name, 0)) >= amount for h in nodes)]
        if missing == ["GPU"] and fix is add:
            fix = "add a GPU node type to cluster.yaml or set sweep.ray.use_gpu=false"
        raise ConfigError(
            f"sweep.ray: {what} needs {{{need}}} but no node type of {r.cluster_config} "
            f"({', '.join(types)}) has it: {fix}"
        )
