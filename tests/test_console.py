"""The sweep's console table: the numbers a user compares, printed when something changed."""

from types import SimpleNamespace

from switchsweep.sweeps.console import SweepReporter


def _trial(tid, status, iteration=None):
    result = {} if iteration is None else {"training_iteration": iteration}
    return SimpleNamespace(trial_id=tid, status=status, last_result=result)


def test_the_table_is_printed_when_a_trial_starts_reports_or_ends_only():
    reporter = SweepReporter(["kid"])
    a = _trial("a", "PENDING")
    assert reporter.should_report([a])
    assert not reporter.should_report([a]) and not reporter.should_report([a], done=True)  # nothing new
    a.status = "RUNNING"
    assert reporter.should_report([a])
    a.last_result = {"training_iteration": 1}
    assert reporter.should_report([a]) and not reporter.should_report([a])
    assert reporter.should_report([a, _trial("b", "PENDING")])


def test_its_columns_are_the_sweeps_metrics_loss_and_step():
    assert list(SweepReporter(["kid"])._metric_columns) == ["kid", "loss", "step"]
    assert list(SweepReporter(["kid", "gflops"])._metric_columns) == ["kid", "gflops", "loss", "step"]
