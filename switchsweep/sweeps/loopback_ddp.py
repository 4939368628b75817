"""A Ray Train torch backend whose DDP rendezvous store listens on 127.0.0.1 only (local instances).

torch's TCPStore binds every interface whatever host it is given. On a local instance all of a
trial's workers run on this machine, so rank 0 binds the store's socket to loopback itself and hands
it to the store; the other ranks connect to it there. Clusters keep Ray Train's own setup.

Nothing here imports torch at module level: Train's controller process unpickles this config and
references these functions to run them on the workers, and importing torch (through
`ray.train.torch`) would lengthen every trial's controller start (benchmarks/sweep_overhead.py). torch is
imported where it runs: in the workers, which need it anyway.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import ray
from ray.exceptions import GetTimeoutError
from ray.train.backend import Backend, BackendConfig
from ray.train.constants import DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S, TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S

from switchsweep.sweeps.compat import TORCH_FRAMEWORK, set_torch_distributed_env_vars, shutdown_torch

logger = logging.getLogger(__name__)
_SERVED: dict[str, Any] = {}  # rank 0's listening socket and store, alive as long as its process group


def _serve(world_size: int, timeout_s: int) -> int:
    """On rank 0: a TCPStore on a socket bound to 127.0.0.1; returns its port."""
    import torch.distributed as dist

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(max(8, 2 * world_size))
    port = sock.getsockname()[1]
    # Not waiting for the other ranks here: they connect once this returns the port.
    store = dist.TCPStore(
        "127.0.0.1",
        port,
        world_size,
        is_master=True,
        timeout=timedelta(seconds=timeout_s),
        wait_for_workers=False,
        master_listen_fd=sock.fileno(),
    )
    _SERVED.update(sock=sock, store=store)
    return port


def _join(backend: str, world_rank: int, world_size: int, port: int, timeout_s: int) -> None:
    import torch.distributed as dist

    set_torch_distributed_env_vars()
    timeout = timedelta(seconds=timeout_s)
    if world_rank == 0:
        store = _SERVED["store"]
    else:
        store = dist.TCPStore("127.0.0.1", port, world_size, is_master=False, timeout=timeout)
    dist.init_process_group(backend=backend, store=store, rank=world_rank, world_size=world_size, timeout=timeout)


def _leave(destroy_process_group: bool) -> None:
    shutdown_torch(destroy_process_group)
    _SERVED.clear()


def _device_context():
    """Train's torch context for the train function (the worker's CUDA device), built in the worker."""
    from ray.train.torch.config import TorchConfigContextManager

    return TorchConfigContextManager()


class _LoopbackBackend(Backend):
    share_cuda_visible_devices = True  # as Train's torch backend: every local GPU visible to every worker

    def on_start(self, worker_group, backend_config: LoopbackTorchConfig) -> None:
        gpus = worker_group.get_resources_per_worker().get("GPU", 0)
        backend = backend_config.backend or ("nccl" if gpus > 0 else "gloo")
        n, timeout_s = len(worker_group), backend_config.timeout_s
        port = worker_group.execute_single(0, _serve, world_size=n, timeout_s=timeout_s)
        ray.get(
            [
                worker_group.execute_single_async(
                    i, _join, backend=backend, world_rank=i, world_size=n, port=port, timeout_s=timeout_s
                )
                for i in range(n)
            ]
        )

    def on_shutdown(self, worker_group, backend_config: LoopbackTorchConfig) -> None:
        # As Train's torch backend, with its setting: a hung process group must not hold the trial's end.
        default = DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S
        timeout_s = int(os.environ.get(TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S, default))
        try:
            ray.get(worker_group.execute_async(_leave, destroy_process_group=len(worker_group) > 1), timeout=timeout_s)
        except GetTimeoutError:
            logger.warning("torch process group shutdown timed out after %s s", timeout_s)


@dataclass
class LoopbackTorchConfig(BackendConfig):
    """TorchTrainer's `torch_config` for a local instance: TorchConfig's backend and timeout, a loopback rendezvous."""

    backend: str | None = None  # None: nccl with GPUs, else gloo
    timeout_s: int = 1800

    @property
    def backend_cls(self):
        return _LoopbackBackend

    @property
    def train_func_context(self):
        return _device_context

    @property
    def framework(self):
        return TORCH_FRAMEWORK

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
