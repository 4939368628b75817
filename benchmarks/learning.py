"""When do the models learn? Learning curves of DiT and Switch-DiT (M=3, k=2) on the digits.

Each setting (model, patch size, learning rate, batch size) trains the tiny model from scratch and, every
`--eval-every` steps, evaluates its EMA weights exactly as a sweep's trials do (the sweep's evaluation:
500 samples, 12 DDIM steps, guidance 1.5, the digits classifier): the share of samples classified as the
class they were drawn for (class accuracy; chance is 10%, held-out real digits 98-99%) and KID x 10^3.
It also prints the CPU cost of each setting (training seconds per 100 steps, on one thread) so that
the sweep's defaults can be chosen as the cheapest setting whose models draw digits.

    python -m benchmarks.learning [--steps 1500] [--eval-every 250] [--jobs 2] [--grid default|quick]
    python -m benchmarks.learning --report runs/learning/learning.json   # the tables of an earlier run

Settings run `--jobs` at a time, each process on one thread (their figures are then comparable).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path

import torch

from benchmarks.args import positive_int
from switchsweep.config.compose import compose_config
from switchsweep.config.schema import to_config
from switchsweep.trainers.evaluation.curve import LearningCurve
from switchsweep.trainers.evaluation.features import build_feature_net, reference_features
from switchsweep.trainers.evaluation.metrics import ACCURACY, KID
from switchsweep.trainers.loop.trainer import train

MODELS = {"dit": ["model=dit"], "switch_dit(3,2)": ["model=switch_dit", "model.num_experts=3", "model.top_k=2"]}
# (patch size, learning rate, batch size): the paper's lr and the sweep's earlier patch first.
GRIDS = {
    "default": [(2, 1e-4, 64), (2, 1e-3, 64), (4, 1e-4, 64), (4, 5e-4, 64), (4, 1e-3, 64), (4, 2e-3, 64)],
    "quick": [(4, 1e-4, 64), (4, 1e-3, 64)],
}


def run_setting(args: tuple[str, int, float, int, int, int, str]) -> dict:
    model, patch, lr, batch, steps, every, cache = args
    torch.set_num_threads(1)
    overrides = [
        *MODELS[model],
        "data=digits",
        f"model.patch_size={patch}",
        f"train.lr={lr}",
        f"data.batch_size={batch}",
        f"train.steps={steps}",
        "train.progress=false",
        "train.device=cpu",
        "sample.per_class=0",
        f"train.out_dir={cache}/{model.split('(')[0]}-p{patch}-lr{lr:g}-b{batch}",
        # the sweep's in-sweep evaluation (conf/sweep_job.yaml)
        "eval.num_samples=500",
        "eval.batch_size=500",
        "eval.steps=12",
        "eval.kid_subset_size=500",
        "eval.kid_subsets=20",
        "eval.device=cpu",
        f"eval.cache_dir={cache}",
    ]
    cfg = to_config(compose_config(overrides))
    hooks = LearningCurve(every)
    train(cfg, hooks)
    points = [{k: p[k] for k in ("step", ACCURACY, KID, "loss")} for p in hooks.points]
    return {"model": model, "patch": patch, "lr": lr, "batch": batch, "points": points, "cpu": hooks.train_cpu_s}


BANDS = (0.5, 0.8, 0.9)


def kid_rises(results: list[dict]) -> list[tuple[float, float, float]]:
    """(class accuracy, KID before, KID after) of every evaluation whose KID rose from the one before."""
    return [
        (b[ACCURACY], a[KID], b[KID]) for r in results for a, b in zip(r["points"], r["points"][1:]) if b[KID] > a[KID]
    ]


def band_line(results: list[dict], threshold: float) -> str:
    """KID's range at evaluations at or above `threshold` class accuracy against those below it."""
    points = [p for r in results for p in r["points"]]
    above = [p[KID] for p in points if p[ACCURACY] >= threshold]
    below = [p[KID] for p in points if p[ACCURACY] < threshold]
    if not above or not below:
        return f">= {threshold:.0%} class accuracy: {len(above)} evaluations, below it {len(below)}"
    return (
        f">= {threshold:.0%} class accuracy: {len(above)} evaluations, KID {min(above):.3g} to {max(above):.3g}; "
        f"below: {len(below)}, KID {min(below):.3g} to {max(below):.3g}"
    )


def summary(results: list[dict], steps: int) -> str:
    lines = [
        "| model | patch | lr | batch | CPU s / 100 steps | "
        + " | ".join(f"acc / KID @{int(p['step'])}" for p in results[0]["points"])
        + " | first >= 90% |",
        "|---|---|---|---|---|" + "---|" * len(results[0]["points"]) + "---|",
    ]
    for r in results:
        cells = [f"{100 * p[ACCURACY]:.0f}% / {p[KID]:.3g}" for p in r["points"]]
        learned = first_learned(r["points"], 0.9)
        lines.append(
            f"| {r['model']} | {r['patch']} | {r['lr']:g} | {r['batch']} | {100 * r['cpu'] / steps:.1f} | "
            + " | ".join(cells)
            + f" | {learned if learned is not None else 'not by ' + str(steps)} |"
        )
    lines.append("")
    rises = kid_rises(results)
    lines.append(
        f"KID rose from one evaluation to the next {len(rises)} times, at class accuracy "
        + ", ".join(f"{100 * a:.0f}% ({x:.3g} -> {y:.3g})" for a, x, y in sorted(rises))
    )
    lines += [band_line(results, t) for t in BANDS]
    return "\n".join(lines)


def first_learned(points: list[dict[str, float]], threshold: float) -> int | None:
    return next((int(p["step"]) for p in points if p[ACCURACY] >= threshold), None)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=positive_int, default=1500, help="training steps per setting (default 1500)")
    ap.add_argument("--eval-every", type=positive_int, default=250, help="steps between evaluations (default 250)")
    ap.add_argument("--jobs", type=positive_int, default=2, help="settings trained at once (default 2)")
    ap.add_argument("--grid", choices=sorted(GRIDS), default="default", help="which settings (default: default)")
    ap.add_argument("--cache", type=Path, default=Path("runs/learning"), help="scratch and feature cache folder")
    ap.add_argument("--out", type=Path, default=Path("runs/learning/learning.json"), help="the curves, as JSON")
    ap.add_argument("--report", type=Path, help="print the tables of an earlier run's JSON instead of training")
    args = ap.parse_args(argv)
    if args.report:
        try:
            saved = json.loads(args.report.read_text())
        except (OSError, ValueError) as e:
            ap.error(f"--report {args.report}: not a readable JSON file of this benchmark ({type(e).__name__})")
        print(summary(saved["results"], saved["steps"]))
        return
    if args.eval_every > args.steps:
        ap.error(f"--eval-every {args.eval_every} is beyond --steps {args.steps}: no evaluation would run")
    args.cache.mkdir(parents=True, exist_ok=True)
    cache = str(args.cache.resolve())
    # The classifier and reference features are built once, before the workers share the cache.
    warm = to_config(compose_config(["data=digits", f"eval.cache_dir={cache}", "eval.device=cpu"]))
    reference_features(warm.data, build_feature_net(warm.eval, torch.device("cpu")), cache)
    jobs = [(m, p, lr, b, args.steps, args.eval_every, cache) for p, lr, b in GRIDS[args.grid] for m in MODELS]
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        results = pool.map(run_setting, jobs, chunksize=1)
    print(f"{len(jobs)} settings, {args.steps} steps each, {time.perf_counter() - start:.0f} s in all\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"steps": args.steps, "results": results}, indent=1))
    print(summary(results, args.steps))
    print(f"\nwritten to {args.out} (print it again: python -m benchmarks.learning --report {args.out})")


if __name__ == "__main__":
    main()
