"""`switchsweep prepare`: an ImageFolder -> VAE latents, as a Ray Data pipeline.

Read + centre-crop tasks (CPU) feed encoder actors (one VAE each, on a GPU where the cluster has
them), and this process writes each finished shard. Work is split into fixed shards of the sorted
file list, each written atomically with a checksummed marker, so a rerun redoes only the shards
that are missing or damaged. `manifest.json` is written last: until then training refuses the folder.
An `out` in a bucket (s3://...) is written on this machine's disk where a node keeps its copy of that
bucket folder, then published to it (`bucket.publish`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from tqdm.auto import tqdm

from switchsweep.config.resources import ONE_GPU_NODE, node_types
from switchsweep.config.schema import DataConfig
from switchsweep.platform.errors import ConfigError
from switchsweep.platform.storage import check_credentials, is_uri
from switchsweep.trainers.data.bucket import cache_folder, publish, remote_manifest
from switchsweep.trainers.data.imagefolder import read_image, scan, to_unit_range
from switchsweep.trainers.data.latents import (
    FORMAT,
    MANIFEST,
    SHARDS,
    file_sha256,
    latent_geometry,
    load_vae,
    scale_factor,
    shard_files,
    vae_config,
    vae_config_hash,
    write_json,
    write_manifest,
    write_shard,
)

PLAN = "plan.json"


@dataclass
class Prepared:
    out: str  # the folder or bucket URI given
    images: int  # latents in the folder (images, times 2 with flips)
    shards: int
    redone: int  # shards encoded by this run (the others were already there)


def _plan(data: DataConfig, seed: int) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    """What the folder will hold, checked before any work: the images, the VAE, the settings."""
    if not data.root:
        raise ConfigError("prepare needs data.root=<ImageFolder: one folder of images per class>")
    if not data.vae:
        raise ConfigError("prepare needs data.vae=<local diffusers AutoencoderKL folder>")
    if data.resolution <= 0 or data.shard_size <= 0:
        field = "resolution" if data.resolution <= 0 else "shard_size"
        raise ConfigError(f"data.{field}={getattr(data, field)} must be > 0")
    classes, items = scan(data.root)
    config = vae_config(data.vae)
    channels, size = latent_geometry(config, data.resolution)
    root = Path(data.root).expanduser().resolve()
    listing = hashlib.sha256("\n".join(f"{Path(p).relative_to(root)}\t{c}" for p, c in items).encode()).hexdigest()
    plan = {
        "format": FORMAT,
        "root": str(root),
        "classes": classes,
        "files_sha256": listing,
        "num_files": len(items),
        "resolution": data.resolution,
        "flip": data.flip,
        "shard_size": data.shard_size,
        "seed": seed,
        "latent_shape": [channels, size, size],
        "scale_factor": scale_factor(config),
        "dtype": "float16",
        "vae": {"path": str(Path(data.vae).expanduser().resolve()), "config_sha256": vae_config_hash(config)},
    }
    return plan, items


def _check_plan(out: Path, plan: dict[str, Any], name: str) -> None:
    """A folder holds one dataset: a rerun with other settings or files is refused, naming what changed
    (`name`: the out= given)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={name} is a file, not a folder: give a folder for the latents")
    path = out / PLAN
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except ValueError:
        raise ConfigError(
            f"out={name}: its {PLAN} is not valid JSON (not a prepare folder?): give a new out="
        ) from None
    for key in ("root", "files_sha256", "resolution", "flip", "shard_size", "seed", "vae"):
        if old.get(key) != plan[key]:
            what = {"files_sha256": "the image files under data.root", "vae": "data.vae (its config)"}.get(
                key, f"{key}"
            )
            raise ConfigError(
                f"out={name} was prepared with other {what} ({old.get(key)!r:.80}): give a new out=, "
                "or the settings it was prepared with to finish it"
            )


def _done(out: Path, i: int) -> dict[str, Any] | None:
    """The shard's marker when its files are there and match their checksums."""
    latents, labels, marker = shard_files(out, i)
    try:
        entry = json.loads(marker.read_text())
        if file_sha256(latents) == entry["latents_sha256"] and file_sha256(labels) == entry["labels_sha256"]:
            return entry
    except (OSError, ValueError, KeyError):
        pass
    return None


def _read_shard(row: dict[str, Any], resolution: int, flip: bool) -> dict[str, Any]:
    """Ray Data map: one shard's images, centre-cropped, with their mirror images after them. An
    unreadable image comes back as the row's `error` (Ray would bury the one line in tracebacks)."""
    try:
        images = np.stack([read_image(p, resolution) for p in row["paths"]])
    except ConfigError as e:
        return {
            "shard": row["shard"],
            "images": np.zeros((0, resolution, resolution, 3), np.uint8),
            "labels": np.zeros(0, np.int64),
            "error": str(e),
        }
    labels = np.asarray(row["labels"], dtype=np.int64)
    if flip:
        images, labels = np.concatenate([images, images[:, :, ::-1]]), np.concatenate([labels, labels])
    return {"shard": row["shard"], "images": images, "labels": labels, "error": ""}


class _Encoder:
    """Ray Data actor: one VAE, encoding one shard per call (a posterior sample, seeded by the shard)."""

    def __init__(self, vae: str, scale: float, seed: int, batch_size: int):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":  # the CPUs Ray gave this actor (it would run on one thread)
            torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
        self.vae, self.scale, self.seed, self.batch_size = load_vae(vae, self.device), scale, seed, batch_size

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        shard, images, error = int(batch["shard"][0]), batch["images"][0], str(batch["error"][0])
        if error:
            return {
                "shard": [shard],
                "latents": [np.zeros(0, np.float16)],
                "labels": [batch["labels"][0]],
                "error": [error],
            }
        gen = torch.Generator(self.device).manual_seed(self.seed * 1_000_003 + shard)
        out = []
        for start in range(0, len(images), self.batch_size):
            x = torch.from_numpy(to_unit_range(images[start : start + self.batch_size])).to(self.device)
            out.append((self.vae.encode(x).latent_dist.sample(generator=gen) * self.scale).half().cpu().numpy())
        return {"shard": [shard], "latents": [np.concatenate(out)], "labels": [batch["labels"][0]], "error": [""]}


def staging(out: str | os.PathLike) -> Path:
    """Where the folder is written: `out` itself, or for a bucket URI this machine's copy of it."""
    return cache_folder(str(out)) if is_uri(str(out)) else Path(out).expanduser().resolve()


def check_inputs(
    data: DataConfig, out: str | os.PathLike, seed: int = 0
) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    """Everything `prepare` can refuse before any work: the images, the VAE, the settings, the folder."""
    check_credentials(str(out), "out")
    plan, items = _plan(data, seed)
    if is_uri(str(out)):
        _check_published(str(out), plan)
    _check_plan(staging(out), plan, str(out))
    load_vae(data.vae)  # its weights load (the encoder actors would fail less legibly)
    return plan, items


def _check_published(uri: str, plan: dict[str, Any]) -> None:
    """A bucket folder that already holds other latents is not overwritten."""
    there = remote_manifest(uri)
    for key in ("root", "resolution", "flip", "seed", "vae"):
        if there is not None and there.get(key) != plan[key]:
            raise ConfigError(
                f"out={uri} already holds latents prepared with other {key} ({there.get(key)!r:.80}): "
                "give a new out=, or the settings it was prepared with"
            )


def _encoder_gpus(cluster_config: str) -> tuple[bool, int, dict[str, float]]:
    """(encode on GPUs?, GPUs up now, what else an encoder asks for): GPUs where the cluster has some now or
    its autoscaler can add some; on the one-GPU node type only where the cluster marks one (`ONE_GPU_NODE`)."""
    now = int(ray.cluster_resources().get("GPU", 0))
    types = node_types(cluster_config) or {}
    marked = {ONE_GPU_NODE: 1.0} if any(ONE_GPU_NODE in r for r in types.values()) else {}
    return now > 0 or any(float(r.get("GPU", 0)) > 0 for r in types.values()), now, marked


def prepare(
    data: DataConfig,
    out: str | os.PathLike,
    seed: int = 0,
    encode_batch: int = 16,
    progress: bool = True,
    encoders: int | None = None,
    cluster_config: str = "~/ray_bootstrap_config.yaml",
) -> Prepared:
    """Encode `data.root` into `out` (Ray must be started). Encoder actors take a GPU each where the
    cluster has GPUs (or its autoscaler config, `cluster_config`, has GPU node types), up to `encoders`
    of them (default: one per GPU up now, at least one); otherwise one encodes on the CPU."""
    plan, items = check_inputs(data, out, seed)
    target, out = str(out), staging(out)
    (out / SHARDS).mkdir(parents=True, exist_ok=True)
    write_json(out / PLAN, plan)
    (out / MANIFEST).unlink(missing_ok=True)  # written again once every shard is there
    size = data.shard_size
    shards = [items[i : i + size] for i in range(0, len(items), size)]
    entries = {i: e for i in range(len(shards)) if (e := _done(out, i)) is not None}
    todo = [i for i in range(len(shards)) if i not in entries]
    per_image = 2 if data.flip else 1
    bar = tqdm(
        total=len(items) * per_image,
        initial=sum(e["count"] for e in entries.values()),
        unit="img",
        desc="prepare",
        disable=not progress,
        file=sys.stderr,
    )
    if todo:
        ray.data.DataContext.get_current().enable_progress_bars = False  # one bar: this one
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        gpu, gpus_now, marked = _encoder_gpus(cluster_config)
        rows = [{"shard": i, "paths": [p for p, _ in shards[i]], "labels": [c for _, c in shards[i]]} for i in todo]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        ds = ds.map(_read_shard, fn_kwargs={"resolution": data.resolution, "flip": data.flip})
        ds = ds.map_batches(
            _Encoder,
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=encoders or max(1, gpus_now)),
            # on CPUs, one encoder takes all but one (left to the readers); one where none is up yet
            num_gpus=1 if gpu else 0,
            resources=marked if gpu else None,
            num_cpus=1 if gpu else max(1, int(ray.cluster_resources().get("CPU", 0)) - 1),
            fn_constructor_kwargs={
                "vae": plan["vae"]["path"],
                "scale": plan["scale_factor"],
                "seed": seed,
                "batch_size": encode_batch,
            },
        )
        try:
            for row in ds.iter_rows():
                if row["error"]:
                    raise ConfigError(row["error"])  # the shards written so far stay: a rerun skips them
                i = int(row["shard"])
                entries[i] = write_shard(
                    out, i, np.asarray(row["latents"]), np.asarray(row["labels"]), len(plan["classes"])
                )
                bar.update(entries[i]["count"])
        finally:
            bar.close()
    manifest = write_manifest(out, plan, [entries[i] for i in range(len(shards))])
    if is_uri(target):
        publish(out, target)
    return Prepared(target if is_uri(target) else str(out), manifest["num_images"], len(shards), len(todo))
