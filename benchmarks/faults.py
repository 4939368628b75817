"""Faults a long sweep meets, on one machine: DDP workers SIGKILLed mid-trial, the process of a trial
that trains inline SIGKILLed mid-trial, the sweep's driver SIGKILLed mid-trial and resumed, and every
MLflow metric point checked against what was reported.

    python -m benchmarks.faults              # 5 kills of each kind, 1 driver kill
    python -m benchmarks.faults --kills 2

Each scenario is a tiny sweep through the CLI against one Ray head on 127.0.0.1. A kill is
survived when the trial restarts from its last checkpoint and ends at its last step with no metric
point missing or logged twice. A driver kill is survived when `--resume` (refusing a second driver
meanwhile) finishes the sweep without rerunning the finished trial, without a duplicate MLflow run,
and with the interrupted trial going on from its checkpoint. The end-to-end tests run each once.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from benchmarks.args import positive_int
from tests.sweep_harness import (
    driver_kill,
    driver_kill_survived,
    start_head,
    stop_head,
    worker_kill,
    worker_kill_survived,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=positive_int, default=5, help="worker-kill runs of each kind (default 5)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="switchsweep-faults-"))
    head, address = start_head(work / "ray")
    rows = []
    try:
        for i in range(2 * args.kills):  # a 2-worker Train job's worker, then an inline trial's process
            kind, workers = ("worker", 2) if i < args.kills else ("inline trial", 1)
            r = worker_kill(work / f"kill{i}", address, workers=workers)
            ok = worker_kill_survived(r)
            (t,) = r["trials"].values()
            rows.append(ok)
            print(
                f"{kind} kill {i % args.kills + 1}: {'survived' if ok else 'FAILED'}  killed with steps up to "
                f"{r['logged_before_kill']} "
                f"in MLflow, resumed from {t.get('resumed_from')}, ended at {t['step']} after {t.get('attempt')} "
                "attempts, "
                f"loop_s {t['loop_s']:.1f} (all attempts), overhead {t.get('overhead_s', float('nan')):.1f} s; "
                f"points {r['points']}, duplicates {r['duplicates']}, lost {r['lost']}",
                flush=True,
            )
        d = driver_kill(work / "driver", address)
        d_ok = driver_kill_survived(d)
        print(
            f"driver kill: {'survived' if d_ok else 'FAILED'}  second driver refused: exit {d['second_driver'][0]} "
            f"({d['second_driver'][1].strip()[:100]}); MLflow runs {d['runs']} (1 parent + {d['trial_runs']} trials); "
            f"points {d['points']}, duplicates {d['duplicates']}, lost {d['lost']}"
        )
        print(
            f"\nkills survived: {sum(rows)}/{len(rows)} (goal {len(rows)}/{len(rows)}); driver kill resumed: "
            f"{'yes' if d_ok else 'no'}; logs under {work}"
        )
    finally:
        stop_head(head)
    sys.exit(0 if all(rows) and d_ok else 1)


if __name__ == "__main__":
    main()
