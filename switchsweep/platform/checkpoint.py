"""Checkpoints, written atomically and loaded with `weights_only=True`."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from switchsweep.platform.errors import CheckpointError
from switchsweep.platform.files import atomic_write
from switchsweep.platform.storage import read_bytes, write_bytes

FORMAT = "switchsweep-checkpoint"
REQUIRED_KEYS = ("format", "step", "model", "ema", "optimizer", "rng", "config")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f))


def save_to_storage(obj: Any, path: str) -> None:
    """`torch.save` to a local path or a storage URI (s3://...), whole or not at all."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())


def load_from_storage(path: str) -> Any | None:
    """`torch.load` (weights only, onto the CPU) from a local path or a storage URI; None where there is none."""
    data = read_bytes(path)
    return None if data is None else torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    return atomic_torch_save({"format": FORMAT, **payload}, path)


def load_checkpoint(path: str | os.PathLike, setting: str = "train.resume", mmap: bool = False) -> dict[str, Any]:
    """Load and check a checkpoint; every failure is one CheckpointError line naming `setting`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{setting}={path}: no such checkpoint file: give the path of a ckpt.pt")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises many types for truncated or foreign files
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{setting}={path}: corrupt or not a checkpoint ({reason}): point it at an intact ckpt.pt"
        ) from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{setting}={path}: not a switchsweep checkpoint: point it at a ckpt.pt written by switchsweep train"
        )
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise CheckpointError(
            f"{setting}={path}: checkpoint lacks {', '.join(missing)}: point it at a complete ckpt.pt"
        )
    return payload
