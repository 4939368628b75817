"""Evaluation throughput: images/s of sampling + feature extraction, and the share each part takes.

    python -m benchmarks.eval_throughput [--samples 200] [--batch 100] [--steps 50] [--cfg-scale 1.5]

Sampling and the digits feature network are timed separately on the same batches, in one run.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.args import positive_int
from switchsweep.config.schema import Config
from switchsweep.models import build_model
from switchsweep.trainers.diffusion.gaussian import GaussianDiffusion
from switchsweep.trainers.diffusion.sampling import sample_images
from switchsweep.trainers.evaluation.features import build_feature_net
from switchsweep.trainers.loop.trainer import resolve_device


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=positive_int, default=200)
    ap.add_argument("--batch", type=positive_int, default=100)
    ap.add_argument("--steps", type=positive_int, default=50)
    ap.add_argument("--cfg-scale", type=float, default=1.5)
    ap.add_argument("--model", default="switch_dit")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    cfg = Config()
    cfg.model.name = args.model
    device = resolve_device(args.device)
    model = build_model(cfg.model, cfg.data, cfg.diffusion.num_timesteps).to(device).eval()
    diffusion = GaussianDiffusion.from_config(cfg.diffusion.schedule, cfg.diffusion.num_timesteps)
    net = build_feature_net(cfg.eval, device)  # the digits classifier from eval.cache_dir (trained once)
    gen = torch.Generator(device=device).manual_seed(0)
    labels = torch.randint(0, cfg.data.num_classes, (args.samples,), generator=gen, device=device)
    print(
        f"eval throughput, model={args.model} device={device} samples={args.samples} batch={args.batch} "
        f"cfg={args.cfg_scale}"
    )
    print(
        f"{'sampler':<8}{'steps':>6}{'sample img/s':>14}{'feature img/s':>15}{'total img/s':>13}{'sampling share':>16}"
    )
    for sampler, steps in (("ddim", args.steps), ("ddpm", args.steps)):
        t_sample = t_embed = 0.0
        for batch in labels.split(args.batch):
            start = time.perf_counter()
            images = sample_images(
                model, diffusion, batch, sampler=sampler, steps=steps, cfg_scale=args.cfg_scale, generator=gen
            )
            if device.type == "cuda":
                torch.cuda.synchronize()
            mid = time.perf_counter()
            net.embed(images)
            t_sample += mid - start
            t_embed += time.perf_counter() - mid
        n = args.samples
        print(
            f"{sampler:<8}{steps:>6}{n / t_sample:>14.1f}{n / t_embed:>15.1f}{n / (t_sample + t_embed):>13.1f}"
            f"{t_sample / (t_sample + t_embed):>15.1%}"
        )


if __name__ == "__main__":
    main()
