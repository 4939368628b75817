"""Orchestration overhead of a sweep: per trial, wall time (Tune's trial start to its end) minus the
time inside the training loop (the Train worker's loop, evaluations included), and the total.

    python -m benchmarks.sweep_overhead                       # runs the default sweep (as make sweep)
    python -m benchmarks.sweep_overhead -- sweep.num_trials=3 # any sweep overrides after --
    python -m benchmarks.sweep_overhead --sweep-dir runs/sweeps/design_space/<id>   # an existing sweep

Overhead is what the platform adds around training: worker-group start, process and model setup,
the checkpoint hand-over to Ray, tracking, and teardown.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from switchsweep.platform import sweep_state


def summarise(sweep_dir: Path) -> list[dict]:
    trials = sweep_state.load(sweep_dir).get("trials", {})
    rows = [{"trial_id": t, **e} for t, e in sorted(trials.items())]
    print(f"{'trial':<10} {'steps':>5} {'wall s':>8} {'loop s':>8} {'overhead s':>10}")
    for r in rows:
        print(f"{r['trial_id']:<10} {r['step']:>5} {r.get('wall_s', float('nan')):>8.1f} "
              f"{r.get('loop_s', float('nan')):>8.1f} {r.get('overhead_s', float('nan')):>10.1f}")
    overheads = [r["overhead_s"] for r in rows if "overhead_s" in r]
    if overheads:
        print(f"overhead per trial: median {statistics.median(overheads):.1f} s, max {max(overheads):.1f} s "
              f"over {len(overheads)} trials (goal: <= 20 s)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep-dir", type=Path, help="summarise this finished sweep instead of running one")
    parser.add_argument("overrides", nargs="*", help="sweep overrides (after --)")
    args = parser.parse_args()
    if args.sweep_dir:
        summarise(args.sweep_dir)
        return
    root = Path(tempfile.mkdtemp(prefix="switchsweep-bench-"))
    cmd = [str(Path(sys.executable).parent / "switchsweep"), "sweep", "sweep=design_space", f"sweep.root={root}", *args.overrides]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    total = time.perf_counter() - start
    sweep_dir = next(root.glob("sweeps/design_space/*"))
    summarise(sweep_dir)
    print(f"total sweep time (command start to exit): {total:.0f} s ({total / 60:.1f} min); results in {root}")


if __name__ == "__main__":
    main()
