"""`switchsweep prepare` throughput, and the latent loader against the training step it feeds.

    python -m benchmarks.prepare_throughput [--images 64] [--sd-images 8] [--batch 256]

1. prepare: images/s through local Ray Data for a tiny VAE (16 px) and for Stable Diffusion's VAE
   architecture with random weights (256 px -> 32x32x4), on generated photos of 300-500 px, beside the
   VAE's own encoding rate; "fixed cost" is the pipeline's wall time beyond encoding (Ray Data start,
   the encoder actor and its VAE load, reading and writing).
2. loader: batches/s of the memory-mapped shard reader (`data=latents`) at the paper's batch, against
   the S/2 Switch-DiT training step on the same latents, both per sample: the loader must be a small
   fraction of the step, or it would be the bottleneck.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.args import positive_int
from switchsweep.config.schema import Config, DataConfig
from switchsweep.config.sweep_schema import RayConfig
from switchsweep.sweeps.runtime import start_ray
from switchsweep.trainers.data.batches import BatchStream, load_dataset
from switchsweep.trainers.data.latents import vae_config, vae_config_hash, write_manifest, write_shard
from switchsweep.trainers.data.prepare import prepare
from switchsweep.trainers.loop.trainer import Trainer

SD_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=256,
    scaling_factor=0.18215,
)
TINY_VAE = dict(
    block_out_channels=(8, 16),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=16,
)


def _photos(root: Path, n: int, classes: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        h, w = (int(v) for v in rng.integers(300, 500, 2))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def _vae(folder: Path, arch: dict) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, **arch).save_pretrained(folder)
    return folder


def prepare_rate(tmp: Path, name: str, arch: dict, images: int, resolution: int) -> tuple[float, float, float]:
    """(prepare's images/s, the VAE's own images/s in this process, prepare's seconds beyond encoding)."""
    root, vae = _photos(tmp / f"{name}-images", images), _vae(tmp / f"{name}-vae", arch)
    data = DataConfig(name="latents", root=str(root), vae=str(vae), resolution=resolution, shard_size=8)
    start = time.perf_counter()
    done = prepare(data, tmp / f"{name}-latents", progress=False)
    wall = time.perf_counter() - start
    encode = torch.tensor(np.random.default_rng(0).uniform(-1, 1, (8, 3, resolution, resolution)), dtype=torch.float32)
    from switchsweep.trainers.data.latents import load_vae

    model = load_vae(vae)
    with torch.no_grad():  # the VAE alone, in this process: what the pipeline adds is the rest
        t0 = time.perf_counter()
        model.encode(encode).latent_dist.sample()
        alone = (time.perf_counter() - t0) / len(encode)
    return done.images / wall, 1 / alone, wall - done.images * alone


def loader_vs_step(tmp: Path, batch: int, rows: int = 4096, step_batch: int = 8) -> None:
    out = tmp / "loader"
    (out / "shards").mkdir(parents=True)
    vae = _vae(tmp / "loader-vae", TINY_VAE)
    rng = np.random.default_rng(0)
    entries = [
        write_shard(
            out,
            i,
            rng.standard_normal((512, 4, 32, 32)).astype(np.float16),
            rng.integers(0, 1000, 512).astype(np.int64),
            1000,
        )
        for i in range(rows // 512)
    ]
    plan = {
        "format": 1,
        "root": str(tmp),
        "classes": [str(c) for c in range(1000)],
        "resolution": 256,
        "flip": False,
        "seed": 0,
        "latent_shape": [4, 32, 32],
        "scale_factor": 0.18215,
        "dtype": "float16",
        "vae": {"path": str(vae), "config_sha256": vae_config_hash(vae_config(vae))},
    }
    write_manifest(out, plan, entries)
    data = DataConfig(name="latents", path=str(out), image_size=32, channels=4, num_classes=1000, batch_size=batch)
    latents, labels = load_dataset(data)
    stream = BatchStream(latents, labels, batch, seed=0)
    times = []
    for step in range(40):
        t0 = time.perf_counter()
        stream.batch(step)
        times.append(time.perf_counter() - t0)
    per_batch = statistics.median(times)

    cfg = Config()
    cfg.model.size, cfg.train.device = "S", "cpu"
    cfg.data = DataConfig(
        name="latents", path=str(out), image_size=32, channels=4, num_classes=1000, batch_size=step_batch
    )
    cfg.eval.feature_net = "inception"
    trainer = Trainer(cfg)
    trainer.train_step()  # warm-up
    steps = []
    for _ in range(3):
        t0 = time.perf_counter()
        trainer.train_step()
        steps.append(time.perf_counter() - t0)
    per_step = statistics.median(steps)
    print(
        f"\nloader (memory-mapped shards, {rows} latents 4x32x32 float16, batch {batch}): "
        f"{1 / per_batch:,.1f} batches/s, {per_batch / batch * 1e6:,.1f} us/sample"
    )
    print(
        f"S/2 Switch-DiT training step (batch {step_batch}, CPU, threads={torch.get_num_threads()}): "
        f"{per_step / step_batch * 1e3:,.1f} ms/sample"
    )
    print(f"loader / step per sample: {per_batch / batch / (per_step / step_batch):.5f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=positive_int, default=64, help="images for the tiny VAE run")
    ap.add_argument(
        "--sd-images", type=positive_int, default=8, help="images for the SD-VAE run (seconds each on a CPU)"
    )
    ap.add_argument("--batch", type=positive_int, default=256)
    args = ap.parse_args(argv)
    start_ray(RayConfig())
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        print(f"prepare on this machine (local Ray Data, CPU, threads={torch.get_num_threads()})")
        print(f"{'VAE':<28}{'images':>8}{'px':>6}{'prepare img/s':>15}{'VAE alone img/s':>17}{'fixed cost s':>14}")
        for name, arch, n, px in (
            ("tiny", TINY_VAE, args.images, 16),
            ("sd-vae (random weights)", SD_VAE, args.sd_images, 256),
        ):
            rate, alone, fixed = prepare_rate(tmp, name.split()[0], arch, n, px)
            print(f"{name:<28}{n:>8}{px:>6}{rate:>15.2f}{alone:>17.2f}{fixed:>14.1f}")
        loader_vs_step(tmp, args.batch)


if __name__ == "__main__":
    main()
