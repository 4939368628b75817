"""The paper's ordering at small scale: DiT, DTR, Switch-DiT (M=3, k=2) and (M=3, k=1) on the digits,
3 seeds each at equal steps (`sweep=paper_check`), and whether Switch-DiT (3,2) < (3,1) < DTR < DiT
holds in KID x 10^3 (lower is better) once the models have learned: each design's class accuracy, and
each ordering's difference paired seed by seed (the same train.seed and eval.seed) with its 95% t
interval, whatever the answer.

    python -m benchmarks.paper_check                          # runs the sweep (about 20 min on 2 cores)
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

from switchsweep.config.naming import variant_label
from switchsweep.platform.tracking import Tracker, default_tracking_uri
from switchsweep.results.ranking import LEARNED_ACCURACY, Ranked, paired_difference
from switchsweep.results.text import accuracy_text, value_text
from switchsweep.results.trials import rank_trials

ORDERINGS = [
    ("switch_dit(M=3,k=2)", "switch_dit(M=3,k=1)"),
    ("switch_dit(M=3,k=1)", "dtr"),
    ("dtr", "dit"),
    ("switch_dit(M=3,k=2)", "dit"),  # the paper's headline: Switch-DiT beats DiT
]


def verdict(a: Ranked, b: Ranked) -> str:
    """Does a < b hold (lower KID is better)? a - b paired seed by seed, with its 95% t interval."""
    if not (a.learned and b.learned):
        return f"not judged: {' and '.join(r.group for r in (a, b) if not r.learned)} has not learned"
    diff, half_width = paired_difference(a.values, b.values)
    interval = f"{diff:+.3g} +- {half_width:.2g} (95%, paired over {min(a.seeds, b.seeds)} seeds)"
    if abs(diff) <= half_width:
        return f"not separated: {interval}"
    return f"{'holds' if diff < 0 else 'reversed'}: {interval}"


def report(root: Path, sweep_id: str | None) -> str:
    ranking = rank_trials(Tracker(default_tracking_uri(root)), "paper_check", sweep_id)
    by_design = {variant_label(r.params): r for r in ranking.ranked}
    lines = [
        f"sweep {ranking.sweep_id}: KID x 10^3 after {min(r.steps for r in ranking.ranked)} steps, "
        f"mean +- sd over seeds [95% interval]; class accuracy (learned: >= {LEARNED_ACCURACY:.0%})",
        "",
        "| design | seeds | class accuracy | KID mean +- sd | 95% interval | per seed |",
        "|---|---|---|---|---|---|",
    ]
    for r in ranking.ranked:
        per_seed = ", ".join(f"{v:.4g}" for v in r.values)
        lines.append(
            f"| {variant_label(r.params)} | {r.seeds} | {accuracy_text(r)} | {r.value:.4g} +- {r.std:.2g} | "
            f"{value_text(r)} | {per_seed} |"
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
