"""Prepared VAE latents: the folder `switchsweep prepare` writes, read back for training, and the VAE
that turns sampled latents into images for evaluation.

A folder is usable once its `manifest.json` exists: it is written last, after every shard, so a
prepare that stopped half-way leaves a folder training refuses. Shards are pairs of .npy files
(latents [n, C, h, w] float16, already multiplied by the VAE's scale factor, and int64 labels),
read memory-mapped. The folder may be in a bucket (`data.path=s3://...`): each node reads it from
its own verified copy (`trainers.data.bucket`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch
from torch import Tensor

from switchsweep.config.schema import DataConfig
from switchsweep.platform.errors import ConfigError
from switchsweep.platform.files import atomic_write
from switchsweep.platform.storage import is_uri, read_bytes, storage_fs, storage_join
from switchsweep.trainers.data.bucket import MANIFEST, local_copy

SHARDS = "shards"
FORMAT = 1
VAE_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- the VAE ----------------------------------------------------------------------------------
def vae_config(folder: str | os.PathLike, setting: str = "data.vae") -> dict[str, Any]:
    """The folder's AutoencoderKL config, checked without loading weights: one line if it is not one."""
    path = Path(folder).expanduser()
    fix = "give a local diffusers AutoencoderKL folder (config.json and diffusion_pytorch_model.safetensors)"
    if not path.is_dir():
        raise ConfigError(f"{setting}={folder}: no such folder: {fix}")
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"{setting}={folder}: config.json is missing or unreadable ({type(e).__name__}): {fix}"
        ) from None
    if config.get("_class_name") != "AutoencoderKL":
        raise ConfigError(
            f"{setting}={folder}: config.json describes {config.get('_class_name')!r}, not an AutoencoderKL: {fix}"
        )
    if not any((path / w).is_file() for w in VAE_WEIGHTS):
        raise ConfigError(f"{setting}={folder}: no {VAE_WEIGHTS[0]} in the folder: {fix}")
    return config


def vae_config_hash(config: dict[str, Any]) -> str:
    """What the latents depend on in the VAE's config (diffusers' bookkeeping keys left out)."""
    kept = {k: v for k, v in config.items() if not k.startswith("_")}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def latent_geometry(config: dict[str, Any], resolution: int) -> tuple[int, int]:
    """(latent channels, latent size) the VAE makes of `resolution`-pixel images."""
    factor = 2 ** (len(config.get("block_out_channels", (1,))) - 1)
    if resolution % factor:
        raise ConfigError(
            f"data.resolution={resolution} is not a multiple of the VAE's downsampling factor {factor}: "
            f"use e.g. {resolution // factor * factor or factor}"
        )
    return int(config.get("latent_channels", 4)), resolution // factor


def load_vae(folder: str | os.PathLike, device: torch.device | str = "cpu", setting: str = "data.vae"):
    """diffusers' AutoencoderKL from a local folder, in eval mode (nothing is downloaded)."""
    vae_config(folder, setting)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(str(Path(folder).expanduser()), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise ConfigError(
            f"{setting}={folder}: the VAE does not load ({type(e).__name__}: {str(e).splitlines()[0][:160]}): "
            "check that the weights match config.json"
        ) from None
    return vae.to(device).eval().requires_grad_(False)


def scale_factor(config: dict[str, Any]) -> float:
    """Latents are trained on multiplied by this (0.18215 for Stable Diffusion's VAE)."""
    return float(config.get("scaling_factor", 0.18215))


# -- the prepared folder -----------------------------------------------------------------------
def read_manifest(folder: str | os.PathLike, setting: str = "data.path") -> dict[str, Any]:
    """The manifest of a prepared folder, local or in a bucket."""
    return _parse_manifest(_manifest_bytes(str(folder), setting), folder, setting)


def _manifest_bytes(folder: str, setting: str) -> bytes:
    raw = read_bytes(storage_join(folder, MANIFEST))
    if raw is None:
        raise ConfigError(
            f"{setting}={folder}: no {MANIFEST} (not a prepared folder, or its prepare did not finish): "
            "run or rerun `switchsweep prepare ... out=<this folder>`"
        )
    return raw


def _parse_manifest(raw: bytes, folder: str | os.PathLike, setting: str) -> dict[str, Any]:
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise ConfigError(f"{setting}={folder}: {MANIFEST} is not valid JSON: rerun `switchsweep prepare`") from None
    if manifest.get("format") != FORMAT:
        raise ConfigError(
            f"{setting}={folder}: {MANIFEST} has format {manifest.get('format')}, this version reads {FORMAT}: "
            "rerun `switchsweep prepare` into a new folder"
        )
    return manifest


def check_against(manifest: dict[str, Any], data: DataConfig) -> None:
    """The config's shape and classes are the folder's: one line naming the field on a mismatch."""
    channels, size = manifest["latent_shape"][0], manifest["latent_shape"][1]
    classes = len(manifest["classes"])
    for field, want, have in (
        ("channels", channels, data.channels),
        ("image_size", size, data.image_size),
        ("num_classes", classes, data.num_classes),
    ):
        if want != have:
            raise ConfigError(
                f"data.{field}={have}: the latents in {data.path} have {field} {want}: set data.{field}={want}"
            )


class ShardedLatents:
    """All shards of a prepared folder as one indexable array, memory-mapped: `latents[idx]` reads
    only the rows asked for."""

    def __init__(self, folder: Path, shards: list[dict[str, Any]]):
        self.arrays = []
        for s in shards:
            file = folder / s["latents"]
            try:
                array = np.load(file, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise ConfigError(
                    f"data.path={folder}: shard {s['latents']} is unreadable ({type(e).__name__}): "
                    "rerun `switchsweep prepare` with the same settings to rewrite it"
                ) from None
            if len(array) != s["count"]:
                raise ConfigError(
                    f"data.path={folder}: shard {s['latents']} holds {len(array)} latents, the manifest "
                    f"says {s['count']}: rerun `switchsweep prepare` with the same settings to rewrite it"
                )
            self.arrays.append(array)
        self.starts = np.cumsum([0] + [len(a) for a in self.arrays])
        self.shape = (int(self.starts[-1]), *self.arrays[0].shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: Tensor) -> Tensor:
        rows = np.asarray(idx)
        shard = np.searchsorted(self.starts, rows, side="right") - 1
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.float32)
        for s in np.unique(shard):
            mine = shard == s
            out[mine] = self.arrays[s][rows[mine] - self.starts[s]]
        return torch.from_numpy(out)


def check_prepared(data: DataConfig) -> dict[str, Any]:
    """The folder's manifest, once the folder is known finished, matching the config, with all its
    shard files (a sweep checks this before Ray starts, training before it reads any shard)."""
    folder = data.path if is_uri(data.path) else str(Path(data.path).expanduser())
    manifest = read_manifest(folder)
    check_against(manifest, data)
    fs, base = storage_fs(folder)
    names = [s[k] for s in manifest["shards"] for k in ("latents", "labels")]
    infos = fs.get_file_info([f"{base}/{name}" for name in names])
    missing = [name for name, info in zip(names, infos) if info.type != pafs.FileType.File]
    if missing:
        raise ConfigError(
            f"data.path={folder}: {len(missing)} shard file(s) are missing (first: {missing[0]}): "
            "rerun `switchsweep prepare` with the same settings to rewrite them"
        )
    return manifest


def load_latents(data: DataConfig) -> tuple[ShardedLatents, Tensor]:
    """The prepared latents (memory-mapped) and all labels, checked against the config and the manifest; a
    folder in a bucket is read from this node's verified copy."""
    manifest = check_prepared(data)
    if is_uri(data.path):
        folder = local_copy(data.path, manifest, _manifest_bytes(data.path, "data.path"))
    else:
        folder = Path(data.path).expanduser()
    latents = ShardedLatents(folder, manifest["shards"])
    if tuple(latents.shape[1:]) != tuple(manifest["latent_shape"]):
        raise ConfigError(
            f"data.path={folder}: the shards hold {tuple(latents.shape[1:])} latents, the manifest says "
            f"{tuple(manifest['latent_shape'])}: rerun `switchsweep prepare` into a new folder"
        )
    labels = torch.from_numpy(np.concatenate([np.load(folder / s["labels"]) for s in manifest["shards"]])).long()
    if len(labels) != len(latents):
        raise ConfigError(
            f"data.path={folder}: {len(labels)} labels for {len(latents)} latents: rerun `switchsweep prepare`"
        )
    return latents, labels


def latent_decoder(data: DataConfig, device: torch.device) -> Callable[[Tensor], Tensor]:
    """Sampled latents -> images in [-1, 1], with the VAE that made them (data.vae, else the manifest's),
    refused if its config is not the one the latents were made with."""
    manifest = read_manifest(data.path)
    folder = data.vae or manifest["vae"]["path"]
    setting = "data.vae" if data.vae else f"the VAE recorded in {Path(data.path) / MANIFEST}"
    config_hash = vae_config_hash(vae_config(folder, setting))
    if config_hash != manifest["vae"]["config_sha256"]:
        raise ConfigError(
            f"{setting}={folder}: its config differs from the VAE the latents in {data.path} were made with: "
            "give that VAE's folder as data.vae"
        )
    vae = _loaded_vae(str(folder), str(device), setting, config_hash)
    scale = manifest["scale_factor"]

    @torch.no_grad()
    def decode(latents: Tensor, batch_size: int = 16) -> Tensor:
        out = [vae.decode(chunk.to(device) / scale).sample.clamp(-1, 1).float() for chunk in latents.split(batch_size)]
        return torch.cat(out)

    return decode


@functools.lru_cache(maxsize=2)
def _loaded_vae(folder: str, device: str, setting: str, config_hash: str):
    """One load per process of a (folder, config): every evaluation and sample grid of a run decodes with it.
    `config_hash` is only part of the key, so a folder whose config changed is loaded again."""
    return load_vae(folder, device, setting)


# -- writing a folder -------------------------------------------------------------------------
def write_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(payload, indent=1) + "\n").encode()))


def shard_files(out: Path, i: int) -> tuple[Path, Path, Path]:
    d = out / SHARDS
    return d / f"latents-{i:05d}.npy", d / f"labels-{i:05d}.npy", d / f"{i:05d}.json"


def write_shard(out: Path, i: int, latents: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    lat_file, lab_file, marker = shard_files(out, i)
    atomic_write(lat_file, lambda f: np.save(f, latents))
    atomic_write(lab_file, lambda f: np.save(f, labels))
    entry = {
        "latents": f"{SHARDS}/{lat_file.name}",
        "labels": f"{SHARDS}/{lab_file.name}",
        "count": len(labels),
        "latents_sha256": file_sha256(lat_file),
        "labels_sha256": file_sha256(lab_file),
        "class_counts": np.bincount(labels, minlength=num_classes).tolist(),
    }
    write_json(marker, entry)
    return entry


def write_manifest(out: Path, plan: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The folder's manifest, from its plan and its shards' markers, in order: the last file written."""
    counts = np.sum([e["class_counts"] for e in entries], axis=0).tolist()
    manifest = {
        k: plan[k]
        for k in (
            "format",
            "root",
            "classes",
            "resolution",
            "flip",
            "seed",
            "latent_shape",
            "scale_factor",
            "dtype",
            "vae",
        )
    }
    manifest.update(
        num_images=int(sum(counts)),
        class_counts=counts,
        shards=[{k: e[k] for k in ("latents", "labels", "count", "latents_sha256", "labels_sha256")} for e in entries],
    )
    write_json(out / MANIFEST, manifest)
    return manifest
