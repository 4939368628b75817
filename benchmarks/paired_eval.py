"""How noisy is one evaluation, and how much does pairing two models' evaluations take away?

Two fixed checkpoints, a DiT and a Switch-DiT (M=3, k=2), trained at the digits defaults (1,000 steps, as
every sweep's trials), are evaluated at the in-sweep sampling cost (samples x DDIM steps of about 6,000; KID over 20
subsets holding every generated sample and as many real ones) under several evaluation seeds. Per model
it prints KID's spread over the seeds against
the two noise figures an evaluation reports, `kid_x1e3_se` (the bootstrap standard error over the generated
samples) and `kid_x1e3_subset_sd` (the spread over real subsets); then the spread of the difference
Switch-DiT - DiT when both use the same seed (paired: the same labels and initial noise, as every trial
of a sweep) against different seeds (unpaired); and, at equal sampling cost (samples x DDIM steps), more
samples with fewer steps against fewer samples with more steps.

    python -m benchmarks.paired_eval [--seeds 8] [--steps 1000] [--checkpoints DIR]

--checkpoints reuses (or keeps) the two trained checkpoints in DIR.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from benchmarks.args import positive_int
from switchsweep.config.compose import load_config
from switchsweep.config.schema import Config, TrainConfig
from switchsweep.models import build_model
from switchsweep.platform.checkpoint import load_checkpoint
from switchsweep.trainers.diffusion.gaussian import GaussianDiffusion
from switchsweep.trainers.evaluation.evaluate import evaluate_model
from switchsweep.trainers.loop.trainer import train

MODELS = {"dit": ["model=dit"], "switch_dit_M3_k2": ["model=switch_dit", "model.num_experts=3", "model.top_k=2"]}
# (samples, DDIM steps) at one sampling cost: the sweep's own setting in the middle.
BUDGETS = [(500, 12), (250, 25), (125, 50)]


def checkpoint(name: str, folder: Path, steps: int) -> Path:
    path = folder / name / "ckpt.pt"
    if not path.is_file():
        cfg = load_config(
            [
                *MODELS[name],
                "data=digits",
                f"train.steps={steps}",
                f"train.out_dir={path.parent}",
                "train.progress=false",
                "sample.per_class=0",
                "train.device=cpu",
            ]
        )
        train(cfg)
    return path


def load(path: Path) -> tuple[torch.nn.Module, GaussianDiffusion, Config]:
    payload = load_checkpoint(path, setting="--checkpoints")
    cfg: Config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), payload["config"]))
    model = build_model(cfg.model, cfg.data, cfg.diffusion.num_timesteps)
    model.load_state_dict(payload["ema"]["model"])
    return model, GaussianDiffusion.from_config(cfg.diffusion.schedule, cfg.diffusion.num_timesteps), cfg


def sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) >= 2 else float("nan")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=positive_int, default=8, help="evaluation seeds (default 8)")
    steps = TrainConfig().steps
    ap.add_argument(
        "--steps", type=positive_int, default=steps, help=f"training steps of each checkpoint (default {steps})"
    )
    ap.add_argument("--checkpoints", type=Path, help="folder for the two checkpoints (default: a temporary one)")
    args = ap.parse_args(argv)
    if args.seeds < 3:
        ap.error(f"--seeds {args.seeds}: a spread needs at least 3 evaluation seeds")
    folder = args.checkpoints or Path(tempfile.mkdtemp(prefix="paired-eval-"))
    start = time.perf_counter()
    loaded = {name: load(checkpoint(name, folder, args.steps)) for name in MODELS}
    trained = time.perf_counter() - start
    base_eval = load_config(
        [
            "eval.num_samples=250",
            "eval.batch_size=250",
            "eval.steps=25",
            "eval.kid_subset_size=250",
            "eval.kid_subsets=20",
            "eval.device=cpu",
            "eval.sampler=ddim",
        ]
    ).eval
    results: dict[tuple[int, int], dict[str, list[dict[str, float]]]] = {}
    for samples, steps in BUDGETS:
        # KID's subsets hold every generated sample, as the sweep's do: only the real side is subsampled.
        e = dataclasses.replace(
            base_eval, num_samples=samples, batch_size=samples, steps=steps, kid_subset_size=samples
        )
        results[samples, steps] = {
            name: [
                evaluate_model(model, diffusion, cfg.data, dataclasses.replace(e, seed=s), torch.device("cpu"))[0]
                for s in range(args.seeds)
            ]
            for name, (model, diffusion, cfg) in loaded.items()
        }
    print(
        f"checkpoints: {args.steps} steps each ({trained:.0f} s here, in {folder}); {args.seeds} evaluation seeds; "
        f"{time.perf_counter() - start:.0f} s in all\n"
    )
    print(
        "| samples x DDIM steps | model | class accuracy | KID x 10^3 mean | sd over eval seeds | mean kid_x1e3_se | "
        "mean kid_x1e3_subset_sd |"
    )
    print("|---|---|---|---|---|---|---|")
    for (samples, steps), by_model in results.items():
        for name, runs in by_model.items():
            kid = [r["kid_x1e3"] for r in runs]
            print(
                f"| {samples} x {steps} | {name} | {100 * np.mean([r['class_accuracy'] for r in runs]):.1f}% | "
                f"{np.mean(kid):.4g} | {sd(kid):.3g} | {np.mean([r['kid_x1e3_se'] for r in runs]):.3g} | "
                f"{np.mean([r['kid_x1e3_subset_sd'] for r in runs]):.3g} |"
            )
    print("\n| samples x DDIM steps | difference | mean | sd paired (same seed) | sd unpaired (other seed) |")
    print("|---|---|---|---|---|")
    a, b = list(MODELS)[1], list(MODELS)[0]
    for (samples, steps), by_model in results.items():
        ka, kb = [r["kid_x1e3"] for r in by_model[a]], [r["kid_x1e3"] for r in by_model[b]]
        paired = [x - y for x, y in zip(ka, kb)]
        unpaired = [x - y for x, y in zip(ka, kb[1:] + kb[:1])]  # seed s against seed s + 1
        print(
            f"| {samples} x {steps} | KID {a} - {b} | {np.mean(paired):.4g} | {sd(paired):.3g} | {sd(unpaired):.3g} |"
        )


if __name__ == "__main__":
    main()
