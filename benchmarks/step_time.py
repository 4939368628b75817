"""Training-step time of Switch-DiT vs DiT (and DTR) of the same size, measured side by side in one run.

    python -m benchmarks.step_time [--size tiny] [--batch 64] [--steps 10] [--rounds 5] [--device auto]
    python -m benchmarks.step_time --size S --image-size 32 --channels 4 --num-classes 1000 --batch 8

Rounds interleave the models so that machine noise hits them alike; the figure to read is the
ratio of medians against DiT.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from switchsweep.platform.config import Config
from switchsweep.trainers.loop import Trainer

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

    trainers = {}
    for name in MODELS:
        cfg = Config()
        cfg.model.name, cfg.model.size = name, args.size
        cfg.data.batch_size, cfg.train.device = args.batch, args.device
        for key in ("image_size", "channels", "num_classes"):
            if getattr(args, key) is not None:
                setattr(cfg.data, key, getattr(args, key))
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


if __name__ == "__main__":
    main()
