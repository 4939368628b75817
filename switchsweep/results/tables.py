"""The ranking as tables: ranking.csv and ranking.md in the sweep's folder, and the console's lines."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from switchsweep.config.naming import variant_label
from switchsweep.platform.sweep_dir import RANKING_CSV, RANKING_MD
from switchsweep.results.ranking import LEARNED_ACCURACY, Ranked
from switchsweep.results.text import accuracy_text, num, pm, value_text
from switchsweep.results.trials import SweepRanking
from switchsweep.results.verdicts import verdict_sentences

RANK_COLUMNS = (
    "rank",
    "group",
    "trial_id",
    "seeds",
    "status",
    "steps",
    "variant",
    "lambda_dp",
    "prior_alpha",
    "params_M",
    "gflops",
    "steps_per_s",
    "class_accuracy",
    "class_accuracy_se",
    "learned",
)


def _cells(r: Ranked, objectives: list[str]) -> list[str]:
    p, m = r.params, r.metrics
    switch = p.get("model.name") == "switch_dit"
    return [
        str(r.rank),
        r.group,
        r.trial_id,
        str(r.seeds),
        r.status,
        str(r.steps),
        variant_label(p),
        f"{float(p['model.lambda_dp']):.4g}" if switch else "",
        p.get("model.prior_alpha", "") if switch else "",
        num(m.get("params", math.nan) * 1e-6, ".3f"),
        num(m.get("gflops", math.nan), ".4f"),
        num(m.get("steps_per_sec", math.nan), ".2f"),
        num(r.accuracy, ".3f"),
        num(r.accuracy_se, ".3f"),
        "" if math.isnan(r.accuracy) else ("yes" if r.learned else "not learned"),
        num(r.value, ".6g"),
        num(r.std, ".3g"),
        num(r.noise, ".3g"),
        num(r.half_width, ".3g"),
        r.vs_best,
        num(r.diff, "+.4g"),
        num(r.diff_half_width, ".3g"),
        r.diff_basis,
        r.vs_baseline,
        num(r.base_diff, "+.4g"),
        num(r.base_half_width, ".3g"),
        *([("yes" if r.pareto else "")] if objectives else []),
        *(num(r.objectives[o], ".6g") for o in objectives[1:]),
        r.failure,
    ]


def write_ranking(ranking: SweepRanking, out: Path) -> tuple[Path, Path]:
    """ranking.csv (every column, machine-readable) and ranking.md (the same rows for people)."""
    metric, objectives = ranking.metric, ranking.objectives
    header = [
        *RANK_COLUMNS,
        metric,
        f"{metric}_sd_seeds",
        f"{metric}_noise",
        f"{metric}_ci95",
        "vs_best",
        "diff_to_best",
        "diff_ci95",
        "diff_basis",
        "vs_baseline",
        "diff_to_baseline",
        "baseline_ci95",
        *(["pareto"] if objectives else []),
        *(f"{o}_mean" for o in objectives[1:]),
        "failure",
    ]
    rows = [_cells(r, objectives) for r in ranking.ranked]
    table = out / RANKING_CSV
    with open(table, "w", newline="") as fh:  # labels such as switch_dit(M=3,k=2) hold commas: quote them
        csv.writer(fh).writerows([header, *rows])
    md = out / RANKING_MD
    lines = [
        f"{metric}: mean over seeds; ci95: half-width of its 95% interval (t over seeds, or 1.96 x the "
        f"metric's evaluation noise with one seed, which leaves out training-seed noise); diff_to_best: the "
        "difference to the best, paired seed by seed, with its 95% half-width (diff_ci95) and what that interval "
        "holds (diff_basis); vs_best: worse where that interval leaves out zero, else tied; the same against the "
        "sweep's baseline (group baseline) where it has one: diff_to_baseline, baseline_ci95, vs_baseline. "
        "kid_x1e3: KID x 10^3. class_accuracy: the share of samples the data's classifier assigns to the class "
        f"they were drawn for (class_accuracy_se: its evaluation noise); below {LEARNED_ACCURACY:.0%} a "
        "configuration has not learned (learned: not learned) and is ranked after those that have.",
        "",
        *(part for line in verdict_sentences(ranking) for part in (line, "")),
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    md.write_text("\n".join(lines) + "\n")
    return table, md


def console_lines(ranked: Sequence[Ranked], metric: str, objectives: Sequence[str], top: int = 12) -> list[str]:
    """The best `top` configurations, one line each, as `switchsweep sweep` prints them."""
    lines = []
    for r in ranked[:top]:
        p = r.params
        extra = ""
        if p.get("model.name") == "switch_dit":
            extra = f"  lambda_dp={float(p['model.lambda_dp']):.3g} alpha={p['model.prior_alpha']}"
        extra += "".join(f"  {o}={r.objectives[o]:.4g}" for o in objectives[1:])
        versus = f"{pm(r.diff, r.diff_half_width)} ({r.diff_basis})" if math.isfinite(r.diff_half_width) else ""
        flags = " ".join(x for x in (r.vs_best, versus, "pareto" if r.pareto else "") if x)
        accuracy = f"accuracy={accuracy_text(r):<6} " if math.isfinite(r.accuracy) else ""
        lines.append(
            f"  {r.rank:2d}. {r.group:<8} {metric}={value_text(r):<16} {accuracy}steps={r.steps:<5} {r.status:<8} "
            f"{variant_label(p)}{extra}  {flags}"
        )
    return lines
