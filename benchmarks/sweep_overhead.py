"""Orchestration overhead of a sweep: per trial, wall time (Tune's trial start to its end) minus the
time inside the training loop (the Train worker's loop, evaluations included), and the total.

    python -m benchmarks.sweep_overhead                       # runs the default sweep (as make sweep)
    python -m benchmarks.sweep_overhead -- sweep.num_trials=3 # any sweep overrides after --
    python -m benchmarks.sweep_overhead --sweep-dir runs/sweeps/design_space/<id>   # an existing sweep

Overhead is what the platform adds around training, broken down per trial into the phases the sweep's
record times: the trial's own start (its MLflow run), the Train job's start in three parts
(Train's controller up to the worker's process; the worker's process up to its train function, DDP
rendezvous included; the trial code's imports), the worker's setup (data, model, optimizer, tracking
lookups), reports (checkpoint uploads, waits for Tune to take a result), waits at ASHA's rungs, and
the end (last report to Tune's end of the trial). A trial that trains inline (`sweep.ray.inline`, one
worker on this machine) starts no Train job: its Train phases are shown as "-". Outside every trial's
wall, it also prints the time from a trial's end to the next one's start (Tune starting the next
trial's process). Inside the loop it splits training from the evaluations (`eval s`), and for a sweep
it runs, the command's wall time into training, evaluation and the rest (orchestration).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from switchsweep.platform.sweep_record import SweepRecord

# Where a trial's overhead goes, from the times its record keeps (sweeps.trial.PHASES): each phase is
# (name, start field, end field) or, for rung waits, a duration field.
PHASES = (
    ("trial start", "t_trial_start", "t_fit_start"),  # the trial's MLflow run and params, in Tune's trial process
    ("Train ctrl", "t_fit_start", "t_worker_process"),  # Train's controller, placement group, worker scheduled
    ("worker start", "t_worker_process", "t_train_fn"),  # the worker's process, actor setup, DDP rendezvous
    ("worker imports", "t_train_fn", "t_worker_start"),  # the trial code: torch, MLflow, the models
    ("worker setup", "t_worker_start", "t_loop_start"),  # checkpoint, data, model, optimizer, MLflow lookups, GFLOPs
    ("reports", "report_s", None),  # checkpoint uploads, an inline trial's wait for Tune to take its result
    ("rung waits", "gate_s", None),  # waiting for ASHA's decision at its rungs
    ("end", "t_report", "t_trial_end"),  # last report -> Tune's end of the trial: Train shutdown, teardown
)


def breakdown(entry: dict) -> dict[str, float]:
    out = {}
    for name, start, end in PHASES:
        if end is None and start in entry:
            out[name] = float(entry[start])
        elif start in entry and end in entry:
            out[name] = float(entry[end]) - float(entry[start])
    return out


def summarise(sweep_dir: Path) -> list[dict]:
    trials = SweepRecord.load(sweep_dir).to_json()["trials"]
    rows = [{"trial_id": t, **e} for t, e in sorted(trials.items())]
    names = [name for name, _, _ in PHASES]
    print(
        f"{'trial':<10} {'steps':>5} {'wall s':>8} {'loop s':>8} {'eval s':>8} {'overhead s':>10}  "
        + "".join(f"{n:>15}" for n in names)
    )
    parts: dict[str, list[float]] = {n: [] for n in names}
    for r in rows:
        phases = breakdown(r)
        for n, v in phases.items():
            parts[n].append(v)
        print(
            f"{r['trial_id']:<10} {r['step']:>5} {r.get('wall_s', float('nan')):>8.1f} "
            f"{r.get('loop_s', float('nan')):>8.1f} {r.get('eval_s', float('nan')):>8.1f} "
            f"{r.get('overhead_s', float('nan')):>10.1f}  "
            + "".join(f"{phases[n]:>15.1f}" if n in phases else f"{'-':>15}" for n in names)
        )
    overheads = [r["overhead_s"] for r in rows if "overhead_s" in r]
    if overheads:
        print(
            f"overhead per trial: median {statistics.median(overheads):.1f} s, max {max(overheads):.1f} s "
            f"over {len(overheads)} trials (goal: median <= 10 s, max <= 14 s)"
        )
        print("median per phase: " + ", ".join(f"{n} {statistics.median(v):.1f} s" for n, v in parts.items() if v))
    # Outside every trial's wall: Tune starting the next trial's process.
    timed = sorted((r for r in rows if "t_trial_start" in r and "t_trial_end" in r), key=lambda r: r["t_trial_start"])
    gaps = [
        b["t_trial_start"] - a["t_trial_end"]
        for a, b in zip(timed, timed[1:])
        if b["t_trial_start"] >= a["t_trial_end"]
    ]
    if gaps:
        print(
            f"from a trial's end to the next one's start: median {statistics.median(gaps):.1f} s, max {max(gaps):.1f} s"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep-dir", type=Path, help="summarise this finished sweep instead of running one")
    parser.add_argument("overrides", nargs="*", help="sweep overrides (after --)")
    args = parser.parse_args()
    if args.sweep_dir:
        rows = summarise(args.sweep_dir)
        ends = [r["t_trial_end"] for r in rows if "t_trial_end" in r]
        if ends:  # the command's own start (Ray) before the record and its end after the last trial are not in it
            span = max(ends) - SweepRecord.load(args.sweep_dir).created
            print(shares(rows, span, "from the sweep's record to its last trial's end"))
        return
    root = Path(tempfile.mkdtemp(prefix="switchsweep-bench-"))
    cmd = [
        str(Path(sys.executable).parent / "switchsweep"),
        "sweep",
        "sweep=design_space",
        f"sweep.root={root}",
        *args.overrides,
    ]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    total = time.perf_counter() - start
    sweep_dir = next(root.glob("sweeps/design_space/*"))
    rows = summarise(sweep_dir)
    print(f"total sweep time (command start to exit): {total:.0f} s ({total / 60:.1f} min); results in {root}")
    # One trial at a time (the default), the rest is the command's own start and end (Ray, MLflow, the
    # study) and, before each trial, Tune starting the trial's process: time no trial's wall counts.
    walls = sum(r.get("wall_s", 0.0) for r in rows)
    print(f"the trials' walls add up to {walls:.0f} s of it")
    print(shares(rows, total, "the command's time"))


def shares(rows: list[dict], total: float, of: str) -> str:
    """`total` seconds split into training, evaluation (inside the trials' loops) and the rest: orchestration."""
    evaluation = sum(r.get("eval_s", 0.0) for r in rows)
    training = sum(r.get("loop_s", 0.0) for r in rows) - evaluation
    rest = total - training - evaluation
    return (
        f"{of}, {total:.0f} s: training {training:.0f} s ({training / total:.0%}), evaluation {evaluation:.0f} s "
        f"({evaluation / total:.0%}), orchestration {rest:.0f} s ({rest / total:.0%})"
    )


if __name__ == "__main__":
    main()
