"""The paper's ordering at small scale: DiT, DTR, Switch-DiT (M=3, k=2) and (M=3, k=1) on the digits,
3 seeds each at equal steps (`sweep=paper_check`), and whether Switch-DiT (3,2) < DTR < DiT and
(3,2) < (3,1) hold in KID (lower is better), each with a one-sided Welch t-test over the seeds.

    python -m benchmarks.paper_check                          # runs the sweep (about 45 min on 2 cores)
    python -m benchmarks.paper_check -- train.steps=1500      # sweep overrides after --
    python -m benchmarks.paper_check --root runs [--id ID]    # the table of a finished paper_check sweep
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scipy import stats

from switchsweep.platform.export import rank_trials, value_text
from switchsweep.platform.naming import variant_label
from switchsweep.platform.ranking import Ranked
from switchsweep.platform.tracking import Tracker, default_tracking_uri

ORDERINGS = [("switch_dit(M=3,k=2)", "dtr"), ("dtr", "dit"), ("switch_dit(M=3,k=2)", "switch_dit(M=3,k=1)")]


def verdict(a: Ranked, b: Ranked) -> str:
    """Does a < b hold (lower KID is better)? One-sided Welch t-test over the seeds."""
    p = stats.ttest_ind(a.values, b.values, equal_var=False, alternative="less").pvalue
    if a.value < b.value:
        return f"holds (p = {p:.3f})" if p < 0.05 else f"same direction, not significant (p = {p:.3f})"
    return f"reversed (p = {1 - p:.3f} for the opposite)"


def report(root: Path, sweep_id: str | None) -> str:
    ranking = rank_trials(Tracker(default_tracking_uri(root)), "paper_check", sweep_id)
    by_design = {variant_label(r.params): r for r in ranking.ranked}
    lines = [
        f"sweep {ranking.sweep_id}: KID x 1000 after {min(r.steps for r in ranking.ranked)} steps, "
        f"mean +- sd over seeds [95% interval]",
        "",
        "| design | seeds | KID mean +- sd | 95% interval | per seed |",
        "|---|---|---|---|---|",
    ]
    for r in ranking.ranked:
        per_seed = ", ".join(f"{v:.4g}" for v in r.values)
        lines.append(
            f"| {variant_label(r.params)} | {r.seeds} | {r.value:.4g} +- {r.std:.2g} | {value_text(r)} | {per_seed} |"
        )
    lines.append("")
    for a, b in ORDERINGS:
        if a in by_design and b in by_design:
            lines.append(f"- {a} < {b}: {verdict(by_design[a], by_design[b])}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--root", type=Path, help="report the paper_check sweep under this sweep.root instead of running one"
    )
    parser.add_argument("--id", help="the sweep id (default: the latest)")
    parser.add_argument("overrides", nargs="*", help="sweep overrides (after --)")
    args = parser.parse_args()
    if args.root:
        print(report(args.root.resolve(), args.id))
        return
    root = Path(tempfile.mkdtemp(prefix="switchsweep-paper-check-"))
    cmd = [
        str(Path(sys.executable).parent / "switchsweep"),
        "sweep",
        "sweep=paper_check",
        f"sweep.root={root}",
        *args.overrides,
    ]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    total = time.perf_counter() - start
    print(report(root, None))
    print(f"\nwall time: {total / 60:.1f} min; results in {root}")


if __name__ == "__main__":
    main()
