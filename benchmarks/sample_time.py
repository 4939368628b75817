"""Sampling time per image of Switch-DiT against DiT, side by side in one process, as a sweep evaluates.

    python -m benchmarks.sample_time [--batch 500] [--steps 12] [--rounds 5] [--patch-size 4] [--device auto]

Both models sample the in-sweep evaluation's batch (DDIM, guidance 1.5: conditional and null-class
halves in one forward) in eval mode, as the EMA copy does; rounds interleave the models so that machine
noise hits them alike, and the figure to read is the ratio of medians. The weights are random: sampling
costs the same whatever the weights.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.args import positive_int
from switchsweep.config.schema import PATCH_SIZES, Config
from switchsweep.models import build_model
from switchsweep.platform.errors import TrainingError
from switchsweep.trainers.diffusion.gaussian import GaussianDiffusion
from switchsweep.trainers.diffusion.sampling import sample_images
from switchsweep.trainers.loop.trainer import resolve_device

MODELS = ("dit", "switch_dit")


def seconds_per_image(model, diffusion, labels, steps: int, device: torch.device) -> float:
    gen = torch.Generator(device=device).manual_seed(0)
    start = time.perf_counter()
    sample_images(model, diffusion, labels, sampler="ddim", steps=steps, cfg_scale=1.5, generator=gen)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / len(labels)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=positive_int, default=500, help="images per batch (the sweep's: 500)")
    ap.add_argument("--steps", type=positive_int, default=12, help="DDIM steps (the sweep's: 12)")
    ap.add_argument("--rounds", type=positive_int, default=5)
    ap.add_argument("--patch-size", type=positive_int, choices=PATCH_SIZES, default=Config().model.patch_size)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except TrainingError as e:
        ap.error(str(e).replace("train.device", "--device"))
    cfg = Config()
    cfg.model.patch_size = args.patch_size
    diffusion = GaussianDiffusion.from_config(cfg.diffusion.schedule, cfg.diffusion.num_timesteps)
    labels = torch.arange(args.batch, device=device) % cfg.data.num_classes
    models = {}
    for name in MODELS:
        cfg.model.name = name
        models[name] = build_model(cfg.model, cfg.data, cfg.diffusion.num_timesteps).to(device).eval()
        seconds_per_image(models[name], diffusion, labels[:50], 2, device)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in MODELS}
    for _ in range(args.rounds):
        for name, model in models.items():
            times[name].append(seconds_per_image(model, diffusion, labels, args.steps, device))
    base = statistics.median(times["dit"])
    print(
        f"sampling, tiny, patch {args.patch_size}, batch {args.batch}, DDIM {args.steps} steps, guidance 1.5, "
        f"device={device} threads={torch.get_num_threads()}, median of {args.rounds} rounds"
    )
    print(f"{'model':<12}{'ms/image':>10}{'vs DiT':>9}")
    for name in MODELS:
        med = statistics.median(times[name])
        print(f"{name:<12}{med * 1e3:>10.3f}{med / base:>8.2f}x")


if __name__ == "__main__":
    main()
