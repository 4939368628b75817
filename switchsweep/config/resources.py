"""A trial's resources (its driver's and its DDP workers' bundles), and against an autoscaling cluster's node
types, read from its autoscaler config: whether any node the cluster can launch can ever hold it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from switchsweep.config.sweep_schema import RayConfig, is_local_address
from switchsweep.platform.errors import ConfigError

# The custom resource cluster.yaml's one-GPU node type declares (platform=cluster's sweep.ray.one_gpu_resource):
# one-GPU work asks for it, so it never splits a multi-GPU node.
ONE_GPU_NODE = "ONE_GPU_NODE"


def worker_bundle(r: RayConfig) -> dict[str, float]:
    """Resources of one DDP worker (`cpus_per_worker` resolved)."""
    one_gpu = r.use_gpu and r.one_gpu_resource and r.num_workers == 1 and r.gpus_per_worker <= 1
    marker = {r.one_gpu_resource: 1.0} if one_gpu else {}
    return {
        "CPU": r.cpus_per_worker,
        **({"GPU": r.gpus_per_worker} if r.use_gpu else {}),
        **r.worker_resources,
        **marker,
    }


def trains_inline(r: RayConfig) -> bool:
    """Whether a trial trains in its Tune trial's process (`sweep.ray.inline`): one worker, every node local."""
    return r.inline and r.num_workers == 1 and is_local_address(r.address)


def driver_bundle(r: RayConfig) -> dict[str, float]:
    """Resources of a trial's driver (the Tune function that starts its Train job): a custom resource
    that pins it to the head, or a fraction of a CPU anywhere (Ray refuses an empty request)."""
    return {r.driver_resource: 1.0} if r.driver_resource else {"CPU": r.trainable_cpus}


def trial_resources(r: RayConfig) -> dict[str, float]:
    """Resources one trial holds at once: its driver plus its DDP workers (an inline trial's process is both)."""
    need = dict(driver_bundle(r))
    for name, amount in worker_bundle(r).items():
        need[name] = need.get(name, 0.0) + r.num_workers * amount
    return need


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
