"""Training steps per second of the training loop's step, with the loop's optimizer (fused AdamW)
against torch's default AdamW (a loop over the parameters on a CPU), side by side in one run.

    python -m benchmarks.train_throughput [--size tiny] [--batch 64] [--steps 10] [--rounds 10]

Both trainers start from the same weights and data; rounds interleave them so machine noise hits
both alike. The figure to read is the ratio of steps/s.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from benchmarks.step_time import time_steps
from switchsweep.platform.config import Config
from switchsweep.trainers.loop import Trainer


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="switch_dit")
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args(argv)

    trainers = {}
    for variant in ("torch default AdamW", "loop (fused AdamW)"):
        cfg = Config()
        cfg.model.name, cfg.model.size, cfg.data.batch_size, cfg.train.device = args.model, args.size, args.batch, "cpu"
        trainer = Trainer(cfg)
        if variant.startswith("torch"):
            trainer.optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        trainer.model.train()
        time_steps(trainer, 3)  # warm-up
        trainers[variant] = trainer
    seconds: dict[str, list[float]] = {v: [] for v in trainers}
    for _ in range(args.rounds):
        for variant, trainer in trainers.items():
            seconds[variant].append(time_steps(trainer, args.steps))
    base = statistics.median(seconds["torch default AdamW"])
    print(f"training steps/s, {args.model} size={args.size} batch={args.batch}, CPU threads={torch.get_num_threads()}")
    print(f"{'optimizer':<22}{'median ms/step':>16}{'steps/s':>9}{'gain':>8}")
    for variant, s in seconds.items():
        med = statistics.median(s)
        print(f"{variant:<22}{med * 1e3:>16.1f}{1 / med:>9.2f}{base / med:>7.2f}x")


if __name__ == "__main__":
    main()
