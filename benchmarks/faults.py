"""Faults a long sweep meets, on one machine: DDP workers SIGKILLed mid-trial, the process of a trial
that trains inline SIGKILLed mid-trial, the sweep's driver SIGKILLed mid-trial and resumed, the whole
head lost mid-sweep and the sweep resumed on a new one, and every MLflow metric point checked against
what was reported.

    python -m benchmarks.faults              # 5 kills of each kind, 1 driver kill, 1 lost head
    python -m benchmarks.faults --kills 2 --lost-heads 3

Each scenario is a tiny sweep through the CLI. A kill is survived when the trial restarts from its last
checkpoint and ends at its last step with no metric point missing or logged twice. A driver kill (against
the same Ray head on 127.0.0.1) or a lost head (its driver, Ray head and MLflow server SIGKILLed and its
disk deleted; a new head with the same bucket, an S3 endpoint on 127.0.0.1, and the same PostgreSQL
database) is survived when `--resume` (refusing a second driver meanwhile) finishes the sweep without
rerunning the finished trial, without a duplicate MLflow run, and with the interrupted trial going on
from its checkpoint. The end-to-end tests run each once.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from benchmarks.args import positive_int
from tests import postgres, s3
from tests.support.sweep_harness import (
    driver_kill,
    free_port,
    lost_head,
    resume_survived,
    start_head,
    stop_head,
    worker_kill,
    worker_kill_survived,
)


def _lost_head(tmp: Path) -> dict:
    tmp.mkdir(parents=True)
    db, bucket = postgres.Postgres(free_port()).start(), s3.S3(free_port()).start()
    try:
        return lost_head(tmp, None, db.uri("mlflow"), bucket)
    finally:
        db.stop()
        bucket.stop()


def _resumed(r: dict) -> str:
    return (
        f"second driver refused: exit {r['second_driver'][0]} ({r['second_driver'][1].strip()[:100]}); "
        f"MLflow runs {r['runs']} (1 parent + {r['trial_runs']} trials); "
        f"points {r['points']}, duplicates {r['duplicates']}, lost {r['lost']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=positive_int, default=5, help="worker-kill runs of each kind (default 5)")
    parser.add_argument("--lost-heads", type=positive_int, default=1, help="lost-head runs (default 1)")
    args = parser.parse_args()
    why = postgres.available() or s3.available()  # the lost head's database and bucket, before any sweep
    if why:
        parser.error(why)
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
        d_ok = d["status_after_kill"] == "interrupted" and resume_survived(d, 2)
        print(f"driver kill: {'survived' if d_ok else 'FAILED'}  {_resumed(d)}", flush=True)
    finally:
        stop_head(head)  # the lost heads start their own
    heads = []
    for i in range(args.lost_heads):
        h = _lost_head(work / f"head{i}")
        heads.append(resume_survived(h, 3))
        cut = [t for t, e in h["before"]["trials"].items() if e.get("status") == "running"]
        print(
            f"lost head {i + 1}: {'survived' if heads[-1] else 'FAILED'}  cut trial resumed from "
            f"{h['trials'][cut[0]].get('resumed_from') if cut else None}; {_resumed(h)}",
            flush=True,
        )
    print(
        f"\nkills survived: {sum(rows)}/{len(rows)} (goal {len(rows)}/{len(rows)}); driver kill resumed: "
        f"{'yes' if d_ok else 'no'}; lost heads survived: {sum(heads)}/{len(heads)}; logs under {work}"
    )
    sys.exit(0 if all(rows) and d_ok and all(heads) else 1)


if __name__ == "__main__":
    main()
