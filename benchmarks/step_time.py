"""Training-step time of Switch-DiT vs DiT (and DTR) of the same size, measured side by side in one run.

    python -m benchmarks.step_time [--size tiny] [--batch 64] [--steps 10] [--rounds 5] [--device auto]
    python -m benchmarks.step_time --size S --image-size 32 --channels 4 --num-classes 1000 --batch 8

Rounds interleave the models so that machine noise hits them alike; the figure to read is the
ratio of medians against DiT. A shape other than the digits' trains on random latents written as a
prepared folder (what `switchsweep prepare` makes), so the step is the real latent-data step.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from switchsweep.platform.config import Config
from switchsweep.trainers.latents import FORMAT
from switchsweep.trainers.loop import Trainer
from switchsweep.trainers.prepare import write_manifest, write_shard

MODELS = ("dit", "dtr", "switch_dit")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(trainer: Trainer, steps: int) -> float:
    _sync(trainer.device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    _sync(trainer.device)
    return (time.perf_counter() - start) / steps


def random_latents(out: Path, channels: int, size: int, num_classes: int, count: int = 512) -> Path:
    """A prepared-latents folder of `count` random latents with random labels (training speed only)."""
    rng = np.random.default_rng(0)
    entry = write_shard(out, 0, rng.standard_normal((count, channels, size, size)).astype(np.float16),
                        rng.integers(0, num_classes, count), num_classes)
    plan = {"format": FORMAT, "root": "random", "classes": [str(c) for c in range(num_classes)], "resolution": size * 8,
            "flip": False, "seed": 0, "latent_shape": [channels, size, size], "scale_factor": 1.0, "dtype": "float16",
            "vae": {"path": "", "config_sha256": ""}}
    write_manifest(out, plan, [entry])
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--image-size", type=int, help="default: the digits (8); 32 for 256 px SD-VAE latents")
    ap.add_argument("--channels", type=int, help="default: the digits (1); 4 for latents")
    ap.add_argument("--num-classes", type=int, help="default: the digits (10); 1000 for ImageNet")
    args = ap.parse_args(argv)

    digits = Config().data
    shape = {key: getattr(digits, key) if getattr(args, key) is None else getattr(args, key)
             for key in ("channels", "image_size", "num_classes")}
    folder = None
    if any(shape[key] != getattr(digits, key) for key in shape):
        folder = random_latents(Path(tempfile.mkdtemp(prefix="step-time-")), shape["channels"], shape["image_size"],
                                shape["num_classes"])
    trainers = {}
    for name in MODELS:
        cfg = Config()
        cfg.model.name, cfg.model.size = name, args.size
        cfg.data.batch_size, cfg.train.device = args.batch, args.device
        if folder is not None:
            cfg.data.name, cfg.data.path = "latents", str(folder)
            for key, value in shape.items():
                setattr(cfg.data, key, value)
        trainers[name] = Trainer(cfg)
        trainers[name].model.train()
        time_steps(trainers[name], 3)  # warm-up
    samples: dict[str, list[float]] = {n: [] for n in MODELS}
    for _ in range(args.rounds):
        for name, tr in trainers.items():
            samples[name].append(time_steps(tr, args.steps))

    device = next(iter(trainers.values())).device
    base = statistics.median(samples["dit"])
    d = trainers["dit"].cfg.data
    print(f"step time, size={args.size} batch={args.batch} data={d.channels}x{d.image_size}x{d.image_size} "
          f"classes={d.num_classes} device={device} threads={torch.get_num_threads()}")
    print(f"{'model':<12}{'params':>12}{'median ms/step':>16}{'vs DiT':>9}")
    for name, tr in trainers.items():
        med = statistics.median(samples[name])
        params = sum(p.numel() for p in tr.model.parameters())
        print(f"{name:<12}{params:>12,}{med * 1e3:>16.2f}{med / base:>8.2f}x")
    if folder is not None:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
