"""sweep.budget: the ledger's device-hours against hand-computed sums, and the searcher that stops handing
out trials once the next could pass the budget, on a real sweep record."""

from pathlib import Path

import pytest
from ray.tune.search import Searcher

from switchsweep.config.compose import load_sweep_config
from switchsweep.config.sweep_schema import RayConfig
from switchsweep.platform.errors import ConfigError
from switchsweep.platform.sweep_record import SweepRecord, TrialEnd, TrialEntry
from switchsweep.results.text import budget_line
from switchsweep.sweeps.budget import BudgetedSearch, Ledger, devices_per_trial


def _entry(wall_s: float, over: bool = True) -> TrialEntry:
    return TrialEntry(status=TrialEnd.FINISHED if over else TrialEnd.RUNNING, wall_s=wall_s)


def test_the_ledger_counts_wall_hours_times_devices_and_commits_running_trials_at_the_costliest():
    # 2 devices: ended trials of 1800 s and 900 s cost 1.0 and 0.5 h; running ones 360 s (0.2 h) and 5400 s (3 h).
    ledger = Ledger.of([_entry(1800), _entry(900), _entry(360, False), _entry(5400, False)], devices=2)
    assert ledger.spent == pytest.approx(1.0 + 0.5 + 0.2 + 3.0)
    assert ledger.costliest == pytest.approx(1.0)
    assert ledger.committed == pytest.approx(1.0 + 0.5 + max(0.2, 1.0) + max(3.0, 1.0))
    assert ledger.running == 2
    assert ledger.affords_next(5.5 + 1.0) and not ledger.affords_next(5.5 + 0.99)


def test_before_any_trial_ends_only_one_runs():
    assert Ledger.of([], 1).affords_next(0.01)
    assert not Ledger.of([], 1).affords_next(0)
    assert not Ledger.of([_entry(1, over=False)], 1).affords_next(1000)
    assert not Ledger.of([], 1, starting=1).affords_next(1000)  # handed out, not recorded yet
    # Once one ended (1 h), a trial handed out but not yet recorded is committed at that cost too.
    assert Ledger.of([_entry(3600)], 1, starting=1).committed == pytest.approx(2.0)


def test_a_trial_holds_its_gpus_or_else_its_cpus():
    assert devices_per_trial(RayConfig(use_gpu=True, num_workers=8, gpus_per_worker=1)) == (8, "GPU-hours")
    assert devices_per_trial(RayConfig(num_workers=2, cpus_per_worker=3, inline=False)) == (6.0, "CPU-hours")
    inline = RayConfig(num_workers=1, cpus_per_worker=2)  # its process trains: its worker's CPUs, not the driver's
    assert devices_per_trial(inline) == (2.0, "CPU-hours")


class _Counting(Searcher):
    def __init__(self):
        super().__init__(metric="kid_x1e3", mode="min")
        self.given = []

    def suggest(self, trial_id):
        self.given.append(trial_id)
        return {"n": len(self.given)}

    def on_trial_complete(self, trial_id, result=None, error=False):
        pass


def test_the_searcher_stops_once_the_next_trial_could_pass_the_budget_and_records_it(tmp_path):
    record = SweepRecord(tmp_path, sweep_id="s")
    record.save()
    search = BudgetedSearch(_Counting(), budget=1.0, devices=1, unit="CPU-hours", sweep_dir=tmp_path)
    assert search.suggest("t1") == {"n": 1}
    assert search.suggest("t2") is None  # handed out, not yet in the record: it runs
    record.trials["t1"] = _entry(100, over=False)
    record.save()
    assert search.suggest("t2") is None  # the first runs alone
    record.trials["t1"] = _entry(1200)  # ended: 1/3 h
    record.save()
    assert search.suggest("t2") == {"n": 2}
    record.trials["t2"] = _entry(60, over=False)  # committed at 1/3 h: 2/3 h, and a third fits (1.0)
    record.save()
    assert search.suggest("t3") == {"n": 3}
    record.trials["t3"] = _entry(60, over=False)  # committed 1.0: a fourth could pass it
    record.save()
    assert search.suggest("t4") is None and not SweepRecord.load(tmp_path).budget
    record.trials["t2"], record.trials["t3"] = _entry(1200), _entry(1300)  # over, 1.03 h: none fits, none runs
    record.save()
    assert search.suggest("t4") == Searcher.FINISHED and search.searcher.given == ["t1", "t2", "t3"]
    assert SweepRecord.load(tmp_path).budget == {"reached": True}
    assert search.suggest("t5") == Searcher.FINISHED


def test_the_searcher_survives_tunes_save_and_restore(tmp_path):
    """Tune's own save of a wrapped searcher: the wrapper's state, and the searcher it wraps on its own."""
    from ray.tune.search import SearchGenerator

    class _Saved(_Counting):
        def save(self, checkpoint_path):
            Path(checkpoint_path).write_text(",".join(self.given))

        def restore(self, checkpoint_path):
            self.given = Path(checkpoint_path).read_text().split(",")

    SweepRecord(tmp_path, sweep_id="s").save()
    search = BudgetedSearch(_Saved(), budget=2.0, devices=4, unit="GPU-hours", sweep_dir=tmp_path)
    search.suggest("t1")
    search.stopped = True
    SearchGenerator(search).save_to_dir(str(tmp_path), session_str="s")
    again = BudgetedSearch(_Saved(), budget=9.0, devices=1, unit="CPU-hours", sweep_dir=tmp_path)
    SearchGenerator(again).restore_from_dir(str(tmp_path))
    assert (again.budget, again.devices, again.unit, again.stopped) == (2.0, 4, "GPU-hours", True)
    assert again.searcher.given == ["t1"]


def test_the_closing_line_says_what_was_spent_and_skipped():
    assert budget_line({"limit": 0.5, "unit": "GPU-hours", "spent": 0.4213}) == "spent 0.421 of 0.5 GPU-hours"
    reached = {"limit": 2, "unit": "CPU-hours", "spent": 1.5, "reached": True, "skipped": 3}
    assert budget_line(reached) == (
        "spent 1.5 of 2 CPU-hours; 3 trial(s) not started: the next could have passed the budget"
    )


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["sweep.budget=0"], "sweep.budget=0.0 must be > 0"),
        (["sweep.budget=-1"], "must be > 0"),
        (["sweep=table1", "sweep.budget=2"], "needs sweep.search=tpe or random"),
    ],
)
def test_a_bad_budget_is_one_line(overrides, words):
    with pytest.raises(ConfigError, match=words):
        load_sweep_config(overrides)
