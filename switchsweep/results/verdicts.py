"""The closing sentences of a sweep, in the console, ranking.md and the report: what has learned, the best
against the baseline, and what racing ended with."""

from __future__ import annotations

import math

from switchsweep.config.naming import variant_label
from switchsweep.results.ranking import (
    BETTER,
    LEARNED_ACCURACY,
    RACE_OPEN,
    RACE_SEPARATED,
    RACE_SPENT,
    WORSE,
    Ranked,
    race_state,
)
from switchsweep.results.text import accuracy_text, pm, value_text
from switchsweep.results.trials import SweepRanking


def _raise_budget(r: Ranked) -> str:
    p = r.params
    steps, lr = p.get("train.steps", "?"), p.get("train.lr", "?")
    return f"raise train.steps (now {steps}) or train.lr (now {lr}) and sweep again"


def learned_sentence(ranking: SweepRanking) -> str:
    """Which finished configurations have not learned to draw their classes (`Ranked.learned`), and what to
    raise ("" where every one has, or no classifier scores the samples)."""
    done = [r for r in ranking.ranked if r.complete]
    behind = [r for r in done if not r.learned]
    if not behind:
        return ""
    names = ", ".join(f"{r.group} {variant_label(r.params)} ({accuracy_text(r)})" for r in behind)
    share = f"{100 * LEARNED_ACCURACY:.0f}%"
    if len(behind) == len(done):
        return (
            f"No configuration has learned to draw its classes (class accuracy below {share}: {names}), so no "
            f"winner is named: {_raise_budget(behind[0])}."
        )
    return f"Not learned (class accuracy below {share}), not ranked against the rest: {names}."


def verdict_sentences(ranking: SweepRanking) -> list[str]:
    """The closing lines of a sweep, in the console, ranking.md and the report."""
    return [x for x in (learned_sentence(ranking), baseline_sentence(ranking), race_sentence(ranking)) if x]


def baseline_sentence(ranking: SweepRanking) -> str:
    """One sentence: whether the best design beats the baseline, by how much, with its paired 95%
    interval and what the interval holds ("" without a baseline, or where either has not learned)."""
    best, base, metric = ranking.best, ranking.baseline, ranking.metric
    if base is None:
        return ""
    label = variant_label(base.params)
    if not base.complete or math.isnan(base.value):
        return f"The baseline {label} did not finish ({base.status}): no comparison with it."
    if not base.learned or (best is not None and best.complete and not best.learned):
        who = [x for x in (best, base) if x is not None and x.complete and not x.learned]
        return (
            f"No comparison with the baseline {label}: {' and '.join(f'{x.group} ({accuracy_text(x)})' for x in who)} "
            f"{'has' if len(who) == 1 else 'have'} not learned to draw {'its' if len(who) == 1 else 'their'} classes; "
            f"{_raise_budget(who[0])}."
        )
    if best is None or not best.complete or math.isnan(best.base_diff):
        return f"No design finished to compare with the baseline {label} ({metric} {value_text(base)})."
    how = {BETTER: "beats", WORSE: "is worse than"}.get(best.vs_baseline, "does not separate from")
    return (
        f"The best design, {best.group} {variant_label(best.params)}, {how} the baseline {label}: {metric} "
        f"{best.value:.4g} against {base.value:.4g}, a difference of {pm(best.base_diff, best.base_half_width)} "
        f"(95%, {best.base_basis})."
    )


def race_sentence(ranking: SweepRanking) -> str:
    """What racing (`sweep.race`) ended with: the best separated from the runner-up (or the baseline), or
    its budget spent."""
    p = ranking.parent_params
    seeds, budget = int(p.get("sweep.seeds", 1)), int(p.get("sweep.race_seeds", 0))
    state, leaders = race_state(ranking.ranked, seeds, int(p.get("sweep.race", 0)), budget)
    if not state:
        return ""
    if state == RACE_OPEN and not leaders:
        return "Racing has not run yet: the search is not over."
    lead, other = leaders
    versus = "the baseline" if other.baseline else f"the runner-up {other.group}"
    extra = min(lead.seeds, other.seeds) - seeds
    if state == RACE_SEPARATED:
        return f"Racing separated {lead.group} from {versus} at 95% ({extra} extra seed(s) each, {lead.seeds} in all)."
    ended = "its budget is spent" if state == RACE_SPENT else "it was interrupted"
    return f"Racing did not separate {lead.group} from {versus} at 95%: {ended} ({extra} of {budget} extra seeds each)."
