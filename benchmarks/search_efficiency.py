"""P5, search efficiency: the table1 (M, k) grid against TPE + ASHA over M in {2, 3, 4, 6}, k in 1..M
(the grid's rows are a subset of that space), one seed each, the same steps and evaluation. Reports
the compute, in trial-steps (the training steps every trial ran, stopped ones included), each search
spent until it first finished a configuration within the grid best's noise (its KID + 1.96 x kid_x1e3_se),
and each sweep's finished configurations paired with its best. A grid knows its best only after every
row, so its cost is all of its rows.

    python -m benchmarks.search_efficiency                      # runs both sweeps (about 30 min on 2 cores)
    python -m benchmarks.search_efficiency -- train.steps=600   # overrides for both sweeps after --
    python -m benchmarks.search_efficiency --root DIR           # report the two sweeps already under DIR
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.args import positive_int
from switchsweep.config.compose import load_sweep_config
from switchsweep.config.naming import variant_label
from switchsweep.platform.tracking import Tracker, default_tracking_uri
from switchsweep.results.trials import rank_trials

GRID, TPE = "efficiency_grid", "efficiency_tpe"


def grid_rows() -> list[list[str]]:
    """table1's Switch-DiT (M, k) rows at default gating, loss and integration."""
    rows = load_sweep_config(["sweep=table1"]).sweep.grid
    return [list(r) for r in rows if any(o.startswith("model.num_experts=") for o in r)]


def commands(root: Path, extra: list[str], tpe_trials: int) -> list[list[str]]:
    exe = str(Path(sys.executable).parent / "switchsweep")
    rows = ",".join("[" + ",".join(f"'{o}'" for o in r) + "]" for r in grid_rows())
    common = [f"sweep.root={root}", *extra]  # both at the digits defaults: steps, evaluation, rungs
    return [
        [exe, "sweep", "sweep=table1", f"sweep.name={GRID}", f"sweep.grid=[{rows}]", *common],
        [
            exe,
            "sweep",
            "sweep=design_space",
            f"sweep.name={TPE}",
            f"sweep.num_trials={tpe_trials}",
            "sweep.baseline=none",
            "sweep.space=[{key: model.num_experts, choice: [2, 3, 4, 6]}, {key: model.top_k, fraction_of: "
            "model.num_experts}]",
            *common,
        ],
    ]


def trajectory(tracker: Tracker, name: str) -> list[tuple[str, int, bool, float]]:
    """(design, steps, complete, kid) of every trial of the latest `name` sweep, in the order they ended."""
    exp = tracker.find_experiment(name)
    parent = tracker.parent_run(exp)
    runs = sorted(tracker.children(exp, parent.info.run_id), key=lambda r: r.info.end_time or 0)
    out = []
    for r in runs:
        steps = int(r.data.metrics.get("step", 0))
        complete = r.info.status == "FINISHED" and steps >= int(r.data.params["train.steps"])
        out.append((variant_label(r.data.params), steps, complete, r.data.metrics.get("kid_x1e3", math.nan)))
    return out


def cost_to_reach(traj: list[tuple[str, int, bool, float]], threshold: float) -> tuple[int | None, int]:
    """(trial-steps until the first complete trial with kid <= threshold, or None; total trial-steps)."""
    spent = 0
    reached = None
    for _, steps, complete, kid in traj:
        spent += steps
        if reached is None and complete and kid <= threshold:
            reached = spent
    return reached, spent


def paired_line(tracker: Tracker, name: str) -> str:
    """Each finished configuration's difference to its sweep's best, paired by evaluation, with its verdict."""
    ranked = [r for r in rank_trials(tracker, name).ranked if r.complete]
    parts = [f"{variant_label(ranked[0].params)} {ranked[0].value:.4g} (best)"] + [
        f"{variant_label(r.params)} {r.diff:+.3g} +- {r.diff_half_width:.2g} {r.vs_best}" for r in ranked[1:]
    ]
    return f"{name}, finished, paired with its best: " + "; ".join(parts)


def report(root: Path) -> str:
    tracker = Tracker(default_tracking_uri(root))
    best = rank_trials(tracker, GRID).ranked[0]
    noise = 0.0 if math.isnan(best.half_width) else best.half_width
    threshold = best.value + noise
    grid, tpe = trajectory(tracker, GRID), trajectory(tracker, TPE)
    grid_first, grid_total = cost_to_reach(grid, threshold)
    tpe_reach, tpe_total = cost_to_reach(tpe, threshold)
    lines = [
        f"grid best: {variant_label(best.params)} kid={best.value:.4g} +- {noise:.2g} -> target kid <= {threshold:.4g}",
        f"grid ({len(grid)} rows): {grid_total} trial-steps to know its best (first row within the target after "
        f"{grid_first})",
        "tpe+asha trials in order: "
        + ", ".join(f"{d} {s} steps kid={k:.4g}{'' if c else ' (stopped)'}" for d, s, c, k in tpe),
    ]
    if tpe_reach is None:
        lines.append(
            f"tpe+asha ({len(tpe)} trials, {tpe_total} trial-steps): never finished a configuration within the target"
        )
    else:
        lines.append(
            f"tpe+asha ({len(tpe)} trials, {tpe_total} trial-steps in all): reached the target after {tpe_reach} "
            "trial-steps"
        )
        lines.append(f"P5 compute ratio, grid / tpe+asha: {grid_total / tpe_reach:.2f}x")
    lines += [paired_line(tracker, GRID), paired_line(tracker, TPE)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="report the two sweeps under this sweep.root instead of running them")
    parser.add_argument("--tpe-trials", type=positive_int, default=8, help="configurations TPE may try (default 8)")
    parser.add_argument("overrides", nargs="*", help="overrides for both sweeps (after --)")
    args = parser.parse_args()
    if args.root:
        print(report(args.root.resolve()))
        return
    root = Path(tempfile.mkdtemp(prefix="switchsweep-search-efficiency-"))
    start = time.perf_counter()
    for cmd in commands(root, args.overrides, args.tpe_trials):
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    total = time.perf_counter() - start
    print(report(root))
    print(f"\nwall time: {total / 60:.1f} min; results in {root}")


if __name__ == "__main__":
    main()
