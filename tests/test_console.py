"""The sweep's console table: the numbers a user compares, printed when something changed."""

from types import SimpleNamespace

from switchsweep.sweeps.console import SweepReporter


def _trial(tid, status, iteration=None):
    result = {} if iteration is None else {"training_iteration": iteration}
    return SimpleNamespace(trial_id=tid, status=status, last_result=result)


def test_the_table_is_printed_when_a_trial_starts_reports_or_ends_only():
    reporter = SweepReporter(["kid_x1e3"], ["group", "seed"])
    a = _trial("a", "PENDING")
    assert reporter.should_report([a])
    assert not reporter.should_report([a]) and not reporter.should_report([a], done=True)  # nothing new
    a.status = "RUNNING"
    assert reporter.should_report([a])
    a.last_result = {"training_iteration": 1}
    assert reporter.should_report([a]) and not reporter.should_report([a])
    assert reporter.should_report([a, _trial("b", "PENDING")])


def test_its_columns_are_the_sweeps_metrics_loss_and_step():
    assert list(SweepReporter(["kid_x1e3"], ["group", "seed"])._metric_columns) == ["kid_x1e3", "loss", "step"]
    assert list(SweepReporter(["kid_x1e3", "gflops"], [])._metric_columns) == ["kid_x1e3", "gflops", "loss", "step"]


def test_its_parameter_columns_tell_trials_apart_and_leave_routing_keys_out():
    from switchsweep.config.compose import load_sweep_config
    from switchsweep.sweeps.space import reporter_columns

    design = load_sweep_config(["sweep=design_space"]).sweep
    assert reporter_columns(design) == [
        "group",
        "seed",
        "model.num_experts",
        "model.top_k",
        "model.lambda_dp",
        "model.prior_alpha",
    ]
    assert reporter_columns(load_sweep_config(["sweep=table1"]).sweep) == ["row", "seed"]


def test_a_table_with_a_baseline_trial_lacking_the_searched_settings_prints(tmp_path):
    from ray.tune.experiment import Trial

    searched = Trial("run_trial", config={"group": "g000", "seed": 0, "model.num_experts": 3}, stub=True)
    baseline = Trial("run_trial", config={"group": "baseline", "seed": 0, "row": 1, "full": True}, stub=True)
    for trial, kid in ((searched, 20.0), (baseline, 10.0)):  # the baseline is the best by the metric
        trial.set_status(Trial.TERMINATED)
        trial.storage = SimpleNamespace(experiment_driver_staging_path=str(tmp_path), trial_driver_staging_path=None)
        trial.run_metadata.last_result = {
            "kid_x1e3": kid,
            "loss": 0.1,
            "step": 8,
            "config": trial.config,
            "training_iteration": 1,
        }
    reporter = SweepReporter(["kid_x1e3"], ["group", "seed", "model.num_experts"])
    reporter.setup(metric="kid_x1e3", mode="min")
    reporter.set_start_time(0.0)
    table = reporter._progress_str([searched, baseline], done=False)
    rows = [line for line in table.splitlines() if line.startswith("| run_trial")]
    assert len(rows) == 2 and "baseline" in rows[0] and "g000" in rows[1]  # sorted best first
