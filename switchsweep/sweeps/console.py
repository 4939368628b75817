"""What a sweep prints while it runs: Tune's trial table with the searched settings and the numbers a user
compares (the sweep's metrics, the loss, the step), printed when a trial starts, reports or ends. The
phase times a report carries for the sweep's record stay out of it."""

from __future__ import annotations

from ray.tune.experiment import Trial

from switchsweep.sweeps.compat import ReporterWithoutBestLine

# Tune's newer console prints every reported number of every trial; its reporter setting needs the classic one.
NEW_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"


class SweepReporter(ReporterWithoutBestLine):
    def __init__(self, metrics: list[str], parameters: list[str]):
        """metrics: the sweep's (one, by which rows are sorted, best first; or its objectives, unsorted);
        parameters: what tells trials apart (configuration, seed, searched settings), never the keys that
        only route a trial (its base row, whether it trains every step)."""
        super().__init__(
            metric_columns=[*metrics, "loss", "step"],
            parameter_columns=parameters,
            max_report_frequency=0,
            sort_by_metric=len(metrics) == 1,
            max_column_length=24,
        )
        self._shown: list[tuple] | None = None

    def should_report(self, trials: list[Trial], done: bool = False) -> bool:
        """Only when some trial's status or last report changed since the table was last printed (Tune asks
        about once a second, and again at the end)."""
        state = [(t.trial_id, t.status, t.last_result.get("training_iteration")) for t in trials]
        changed, self._shown = state != self._shown, state
        return changed
