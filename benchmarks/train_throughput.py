"""Training steps per second of the training loop's step on a CPU, side by side in one run:
torch's default AdamW (a loop over the parameters), the loop's fused AdamW, and the fused AdamW with
every transformer block compiled (`train.compile=true`).

    python -m benchmarks.train_throughput [--model switch_dit] [--size tiny] [--batch 64] [--steps 10] [--rounds 10]

All trainers start from the same weights and data; rounds interleave them so machine noise hits them
alike. The figures to read are the ratios of steps/s; the compile's one-off cost (its first two steps,
warm or cold Inductor cache as found) and the steps after which it has paid for itself are printed too.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.args import positive_int
from benchmarks.step_time import time_steps
from switchsweep.config.schema import MODEL_NAMES, MODEL_SIZES, Config
from switchsweep.trainers.loop.trainer import Trainer

VARIANTS = ("torch default AdamW", "fused AdamW", "fused AdamW + compile")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="switch_dit", choices=MODEL_NAMES)
    ap.add_argument("--size", default="tiny", choices=tuple(MODEL_SIZES))
    ap.add_argument("--batch", type=positive_int, default=64)
    ap.add_argument("--steps", type=positive_int, default=10, help="steps per timed round")
    ap.add_argument("--rounds", type=positive_int, default=10)
    args = ap.parse_args(argv)

    trainers, first_steps = {}, {}
    for variant in VARIANTS:
        cfg = Config()
        cfg.model.name, cfg.model.size, cfg.data.batch_size, cfg.train.device = args.model, args.size, args.batch, "cpu"
        cfg.train.compile = variant.endswith("compile")
        trainer = Trainer(cfg)
        if variant.startswith("torch"):
            trainer.optimizer = torch.optim.AdamW(
                trainer.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
            )
        trainer.model.train()
        start = time.perf_counter()
        time_steps(trainer, 2)  # warm-up; the compile happens here
        first_steps[variant] = time.perf_counter() - start
        trainers[variant] = trainer
    seconds: dict[str, list[float]] = {v: [] for v in trainers}
    for _ in range(args.rounds):
        for variant, trainer in trainers.items():
            seconds[variant].append(time_steps(trainer, args.steps))
    base = statistics.median(seconds[VARIANTS[0]])
    print(f"training steps/s, {args.model} size={args.size} batch={args.batch}, CPU threads={torch.get_num_threads()}")
    print(f"{'variant':<24}{'median ms/step':>16}{'steps/s':>9}{'gain':>8}{'first 2 steps s':>17}")
    for variant, s in seconds.items():
        med = statistics.median(s)
        print(f"{variant:<24}{med * 1e3:>16.1f}{1 / med:>9.2f}{base / med:>7.2f}x{first_steps[variant]:>17.1f}")
    eager, compiled = (statistics.median(seconds[v]) for v in VARIANTS[1:])
    cost = first_steps[VARIANTS[2]] - first_steps[VARIANTS[1]]
    if compiled < eager:
        print(f"the compile ({cost:.1f} s) pays for itself after {cost / (eager - compiled):.0f} steps")


if __name__ == "__main__":
    main()
