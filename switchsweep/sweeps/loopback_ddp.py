"""A Ray Train torch backend whose DDP rendezvous store listens on 127.0.0.1 only (local instances).

torch's TCPStore binds every interface whatever host it is given. On a local instance all of a
trial's workers run on this machine, so rank 0 binds the store's socket to loopback itself and hands
it to the store; the other ranks connect to it there. Clusters keep Ray Train's own setup.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import ray
import torch.distributed as dist
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

_SERVED: dict[str, Any] = {}  # rank 0's listening socket and store, alive as long as its process group


def _serve(world_size: int, timeout_s: int) -> int:
    """On rank 0: a TCPStore on a socket bound to 127.0.0.1; returns its port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(max(8, 2 * world_size))
    port = sock.getsockname()[1]
    # Not waiting for the other ranks here: they connect once this returns the port.
    store = dist.TCPStore("127.0.0.1", port, world_size, is_master=True, timeout=timedelta(seconds=timeout_s),
                          wait_for_workers=False, master_listen_fd=sock.fileno())
    _SERVED.update(sock=sock, store=store)
    return port


def _join(backend: str, world_rank: int, world_size: int, port: int, timeout_s: int) -> None:
    timeout = timedelta(seconds=timeout_s)
    if world_rank == 0:
        store = _SERVED["store"]
    else:
        store = dist.TCPStore("127.0.0.1", port, world_size, is_master=False, timeout=timeout)
    dist.init_process_group(backend=backend, store=store, rank=world_rank, world_size=world_size, timeout=timeout)


class _LoopbackBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: TorchConfig) -> None:
        gpus = worker_group.get_resources_per_worker().get("GPU", 0)
        backend = backend_config.backend or ("nccl" if gpus > 0 else "gloo")
        n, timeout_s = len(worker_group), backend_config.timeout_s
        port = worker_group.execute_single(0, _serve, world_size=n, timeout_s=timeout_s)
        worker_group.execute(_set_torch_distributed_env_vars)  # LOCAL_RANK and friends, as Ray Train sets them
        ray.get([worker_group.execute_single_async(i, _join, backend=backend, world_rank=i, world_size=n, port=port,
                                                   timeout_s=timeout_s) for i in range(n)])


@dataclass
class LoopbackTorchConfig(TorchConfig):
    @property
    def backend_cls(self):
        return _LoopbackBackend
