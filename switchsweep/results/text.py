"""How a ranked configuration reads: the cells and numbers every table and sentence shares."""

from __future__ import annotations

import math

from switchsweep.results.ranking import Ranked


def num(value: float | None, fmt: str) -> str:
    """`value` formatted, or "" where it is missing or not finite."""
    return "" if value is None or not math.isfinite(value) else format(value, fmt)


def pm(diff: float, half_width: float) -> str:
    """A difference and its 95% half-width, e.g. +3.1 +- 2.4; the difference alone where its noise is unknown."""
    if not math.isfinite(diff):
        return ""
    return f"{diff:+.4g}" + (f" +- {half_width:.2g}" if math.isfinite(half_width) else "")


def value_text(r: Ranked) -> str:
    """mean +- 95% half-width, e.g. 159.1 +- 6.3, or the value alone when its noise is unknown."""
    if math.isnan(r.value):
        return "nan"
    return f"{r.value:.4g}" if math.isnan(r.half_width) else f"{r.value:.4g} +- {r.half_width:.2g}"


def accuracy_text(r: Ranked) -> str:
    """Class accuracy as a percentage, e.g. 97.2%, or "" where no classifier scored the samples."""
    return "" if math.isnan(r.accuracy) else f"{100 * r.accuracy:.1f}%"


def budget_line(account: dict) -> str:
    """sweep.budget's account from the sweep's record, e.g. `spent 0.42 of 0.5 GPU-hours; 3 trials not
    started: the next could have passed the budget`."""
    spent, limit, unit = account.get("spent", 0.0), account["limit"], account["unit"]
    line = f"spent {spent:.3g} of {limit:.3g} {unit}"
    if account.get("reached"):
        line += f"; {account.get('skipped', 0)} trial(s) not started: the next could have passed the budget"
    return line
