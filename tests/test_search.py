"""The Optuna searcher behind Tune, driven the way Tune drives it, checked in the study journal."""

import optuna
import pytest
from optuna.trial import TrialState

from switchsweep.config.compose import load_sweep_config
from switchsweep.results.ranking import BASELINE_GROUP, paired_difference
from switchsweep.sweeps.search import SeededStudySearch, default_tpe_startup
from switchsweep.sweeps.space import BASELINE_ROW, FULL, GROUP, ROW, SEED, trial_bases

STEPS = 8


def _searcher(
    tmp_path, seeds=1, objectives=("kid_x1e3",), modes=("min",), search="tpe", tpe_startup=2, configs=50, **extra
):
    job = load_sweep_config(["sweep=design_space"])
    return SeededStudySearch(
        space=job.sweep.space,
        base=trial_bases(job, [])[0],
        journal=str(tmp_path / "optuna.journal"),
        study_name="s",
        objectives=list(objectives),
        modes=list(modes),
        search=search,
        seed=0,
        tpe_startup=tpe_startup,
        seeds=seeds,
        train_steps=STEPS,
        configs=configs,
        **extra,
    )


def _reopen(tmp_path) -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "optuna.journal"))
    )
    return optuna.load_study(study_name="s", storage=storage)


def _run(searcher, trial_id, kids, stop_at=None, error=False):
    """Feed one trial's evaluations (training_iteration 1, 2, ...) and its end, as Tune does."""
    result = None
    for i, kid in enumerate(kids, 1):
        result = {"kid_x1e3": kid, "gflops": 0.01, "training_iteration": i, "step": i * STEPS // len(kids)}
        if stop_at is not None and i == stop_at:
            result["step"] = i  # fewer than STEPS: stopped early; Tune gives the searcher this result only at the end
            break
        searcher.on_trial_result(trial_id, result)
    searcher.on_trial_complete(trial_id, result=None if error else result, error=error)


def test_seeds_group_into_one_optuna_trial_told_complete_pruned_or_failed(tmp_path):
    s = _searcher(tmp_path, seeds=2)
    configs = [s.suggest(f"t{i}") for i in range(6)]
    assert [c[GROUP] for c in configs] == ["g000", "g000", "g001", "g001", "g002", "g002"]
    assert [c[SEED] for c in configs] == [0, 1] * 3
    assert configs[0] == {**configs[1], SEED: 0}  # the same settings for both seeds
    for c in configs:  # the trial gets k itself, within 1..M, never the fraction
        assert 1 <= c["model.top_k"] <= c["model.num_experts"] and not any(":" in k for k in c)

    _run(s, "t0", [30.0, 10.0])
    assert _reopen(tmp_path).trials[0].state == TrialState.RUNNING  # one seed of two is not a result yet
    _run(s, "t1", [34.0, 12.0])
    _run(s, "t2", [20.0, 15.0])
    _run(s, "t3", [40.0, 25.0], stop_at=1)  # ASHA stopped the second seed after its first evaluation
    _run(s, "t4", [5.0, 1.0])
    _run(s, "t5", [], error=True)

    trials = _reopen(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    assert trials[0].value == pytest.approx(11.0)  # the mean over seeds of the final values
    assert trials[1].intermediate_values == {
        1: pytest.approx(30.0),
        2: pytest.approx(15.0),
    }  # step means over the seeds there
    assert trials[0].user_attrs["model.top_k"] == configs[0]["model.top_k"]  # Optuna's views see k, not the fraction


def test_non_finite_final_value_is_a_failure(tmp_path):
    s = _searcher(tmp_path)
    s.suggest("a")
    _run(s, "a", [float("nan")])
    assert _reopen(tmp_path).trials[0].state == TrialState.FAIL


def test_points_to_evaluate_come_first_with_their_exact_settings(tmp_path):
    s = _searcher(tmp_path, seeds=2)
    paper = {"model.num_experts": 3, "model.top_k": 2, "model.lambda_dp": 1.0, "model.prior_alpha": 4.0}
    s.enqueue([paper])
    first, second = s.suggest("a"), s.suggest("b")
    assert {k: first[k] for k in paper} == paper and {k: second[k] for k in paper} == paper
    assert s.suggest("c")[GROUP] == "g001"


def test_a_restored_searcher_finishes_the_open_group_and_reuses_the_study(tmp_path):
    s = _searcher(tmp_path, seeds=2)
    a = s.suggest("a")
    _run(s, "a", [10.0])
    s.save(str(tmp_path / "searcher.pkl"))  # as Tune checkpoints its searcher, and restores it into the built one
    restored = _searcher(tmp_path, seeds=2)
    restored.restore(str(tmp_path / "searcher.pkl"))
    b = restored.suggest("b")
    assert b == {**a, SEED: 1}
    _run(restored, "b", [14.0])
    assert _reopen(tmp_path).trials[0].value == pytest.approx(12.0)
    assert restored.suggest("c")[GROUP] == "g001"


@pytest.mark.parametrize("search", ["tpe", "random"])
def test_a_reopened_study_does_not_propose_its_first_configurations_again(tmp_path, search):
    first = _searcher(tmp_path, search=search, tpe_startup=10)  # TPE's random start-up throughout
    proposed = [first.suggest(t) for t in ("a", "b")]
    _run(first, "a", [10.0])
    first.save(str(tmp_path / "searcher.pkl"))  # a driver restart (or --extend) reopens the study from its journal
    restored = _searcher(tmp_path, search=search, tpe_startup=10)
    restored.restore(str(tmp_path / "searcher.pkl"))
    again = [restored.suggest(t) for t in ("c", "d")]
    assert [c[GROUP] for c in again] == ["g002", "g003"]
    settings = lambda c: {k: v for k, v in c.items() if k not in (GROUP, SEED)}  # noqa: E731
    assert not [c for c in again if settings(c) in [settings(p) for p in proposed]]
    (tmp_path / "new").mkdir()
    new = _searcher(tmp_path / "new", search=search, tpe_startup=10)
    assert [new.suggest(t) for t in ("a", "b")] == proposed  # a new sweep with the same seed: the same proposals


def test_tpe_start_up_is_sized_to_the_sweep(tmp_path):
    # Optuna's own default (10 random trials) would make an 8-trial "TPE" sweep a random search.
    assert default_tpe_startup(8) == 2 and default_tpe_startup(40) == 10 and default_tpe_startup(3) == 2
    assert default_tpe_startup(10) == 2 and default_tpe_startup(14) == 3  # whole configurations, rounded down
    sampler = _searcher(tmp_path, tpe_startup=2).study.sampler
    assert isinstance(sampler, optuna.samplers.TPESampler) and sampler._n_startup_trials == 2
    (tmp_path / "journal.random").mkdir()
    assert isinstance(
        _searcher(tmp_path / "journal.random", search="random").study.sampler, optuna.samplers.RandomSampler
    )


def test_multi_objective_trials_are_told_every_objective(tmp_path):
    s = _searcher(tmp_path, objectives=("kid_x1e3", "gflops"), modes=("min", "min"))
    for i, (kid, gflops) in enumerate([(10.0, 3.0), (5.0, 5.0), (12.0, 4.0)]):
        s.suggest(f"t{i}")
        s.on_trial_complete(f"t{i}", {"kid_x1e3": kid, "gflops": gflops, "step": STEPS, "training_iteration": 1})
    study = _reopen(tmp_path)
    assert [t.values for t in study.trials] == [[10.0, 3.0], [5.0, 5.0], [12.0, 4.0]]
    assert sorted(t.number for t in study.best_trials) == [0, 1]  # (12, 4) is dominated by (10, 3)


def test_the_baseline_trains_every_seed_first_outside_the_study(tmp_path):
    s = _searcher(tmp_path, seeds=2, configs=2, baseline=True)
    handed = [s.suggest(f"t{i}") for i in range(6)]
    assert handed[:2] == [
        {GROUP: BASELINE_GROUP, SEED: 0, ROW: BASELINE_ROW, FULL: True},
        {GROUP: BASELINE_GROUP, SEED: 1, ROW: BASELINE_ROW, FULL: True},
    ]
    assert [c[GROUP] for c in handed[2:]] == ["g000", "g000", "g001", "g001"] and not any(FULL in c for c in handed[2:])
    assert s.suggest("t6") == s.FINISHED  # every configuration handed out, no racing
    for i, kid in enumerate([50.0, 52.0, 10.0, 12.0, 30.0, 31.0]):
        _run(s, f"t{i}", [kid + 5, kid])
    trials = _reopen(tmp_path).trials
    assert [t.value for t in trials] == [pytest.approx(11.0), pytest.approx(30.5)]  # the baseline is no Optuna trial
    assert s.values[BASELINE_GROUP] == {0: 50.0, 1: 52.0}


def _race(tmp_path, baseline_kids, group_kids, race_kids, race=2, race_seeds=3):
    """A one-seed search of len(group_kids) configurations (and a baseline), then racing rounds whose
    trials end with the kids `race_kids(group, seed)`; returns what was raced, round by round, and the end."""
    s = _searcher(
        tmp_path, configs=len(group_kids), baseline=baseline_kids is not None, race=race, race_seeds=race_seeds
    )
    n = 0
    for kid in ([baseline_kids] if baseline_kids is not None else []) + group_kids:
        s.suggest(f"t{n}")
        _run(s, f"t{n}", [kid])
        n += 1
    rounds = []
    while True:
        got = s.suggest(f"t{n}")
        if got == s.FINISHED:
            return s, rounds, "finished"
        if got is None:  # the round is still running: end its trials
            for tid, (group, seed) in list(s.full.items()):
                if tid in s.pending:
                    _run(s, tid, [race_kids(group, seed)])
            continue
        assert got[FULL] and got[SEED] >= 1
        if got[SEED] > len(rounds):
            rounds.append([])
        rounds[got[SEED] - 1].append(got[GROUP])
        n += 1


def test_racing_gives_the_leaders_and_the_baseline_seeds_until_the_best_separates(tmp_path):
    # g001 (kid 10) and g002 (11) lead g000 (30); each new seed of g001 is 3 below g002's, with some spread.
    spread = {1: 0.0, 2: 0.5, 3: -0.5}
    s, rounds, _ = _race(
        tmp_path,
        40.0,
        [30.0, 10.0, 11.0],
        lambda g, seed: {"g001": 10.0 + spread[seed], "g002": 13.0, BASELINE_GROUP: 40.0}[g],
        race_seeds=5,
    )
    assert rounds == [["g001", "g002", BASELINE_GROUP]] * 3  # the two best and the baseline, g000 not; 3 of 5 rounds
    values = lambda g: [s.values[g][i] for i in sorted(s.values[g])]  # noqa: E731
    # Stopped at the first round whose paired interval between the two leaders leaves out zero.
    for r in range(1, len(rounds) + 1):
        diff, half_width = paired_difference(values("g001")[: r + 1], values("g002")[: r + 1])
        assert (abs(diff) > half_width) == (r == len(rounds)), (r, diff, half_width)
    assert len(_reopen(tmp_path).trials) == 3  # racing seeds are never new Optuna trials


def test_racing_stops_when_its_budget_is_spent(tmp_path):
    noise = {1: 3.0, 2: -3.0, 3: 2.0}  # the leaders swap from seed to seed: never separable
    s, rounds, _ = _race(
        tmp_path,
        None,
        [10.0, 11.0, 30.0],
        lambda g, seed: {"g000": 10.0 + noise[seed], "g001": 11.0 - noise[seed]}[g],
        race_seeds=3,
    )
    assert rounds == [["g000", "g001"]] * 3 and s.rounds == 3
    # Nothing to race: one configuration and no baseline.
    (tmp_path / "one").mkdir()
    _, rounds, _ = _race(tmp_path / "one", None, [10.0], lambda g, seed: 0.0, race=2)
    assert rounds == []


def _asha(state_file, **kwargs):
    """ASHA on KID over 4 evaluations, stopping the worse half at each rung."""
    from switchsweep.sweeps.asha import ResumableASHA

    return ResumableASHA(
        state_file,
        metric="kid_x1e3",
        mode="min",
        time_attr="training_iteration",
        max_t=4,
        grace_period=1,
        reduction_factor=2,
        **kwargs,
    )


class _Trial:
    def __init__(self, trial_id, config=None):
        self.trial_id = trial_id
        self.config = config or {}


def test_asha_remembers_its_rungs_across_a_driver_restart(tmp_path):
    from ray.tune.schedulers import TrialScheduler

    def fresh():  # what Tuner.restore brings back: the scheduler as it was built
        return _asha(tmp_path / "asha.pkl")

    first, second = _Trial("a"), _Trial("b")
    before = fresh()
    before.on_trial_add(None, first)
    assert before.on_trial_result(None, first, {"training_iteration": 1, "kid_x1e3": 10.0}) == TrialScheduler.CONTINUE
    after = fresh()
    after.on_trial_add(None, second)
    assert after.on_trial_result(None, second, {"training_iteration": 1, "kid_x1e3": 20.0}) == TrialScheduler.STOP
    forgetful = _asha(tmp_path / "other.pkl")
    forgetful.on_trial_add(None, second)  # without the saved rungs the same result would go on
    assert (
        forgetful.on_trial_result(None, second, {"training_iteration": 1, "kid_x1e3": 20.0}) == TrialScheduler.CONTINUE
    )


def test_asha_never_stops_a_baseline_or_racing_trial_nor_compares_with_it(tmp_path):
    from ray.tune.schedulers import TrialScheduler

    asha = _asha(tmp_path / "asha.pkl")
    searched, full, later = _Trial("a"), _Trial("base", {FULL: True}), _Trial("b")
    for t in (searched, full, later):
        asha.on_trial_add(None, t)
    assert asha.on_trial_result(None, searched, {"training_iteration": 1, "kid_x1e3": 10.0}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, full, {"training_iteration": 1, "kid_x1e3": 99.0}) == TrialScheduler.CONTINUE
    asha.on_trial_complete(None, full, {"training_iteration": 4, "kid_x1e3": 1.0})  # a value ASHA would rank first
    # Had the full trial's 1.0 entered the rungs, 9.0 would be stopped; against 10.0 alone it goes on.
    assert asha.on_trial_result(None, later, {"training_iteration": 1, "kid_x1e3": 9.0}) == TrialScheduler.CONTINUE


@pytest.mark.parametrize("grace, rf, evals", [(1, 2, 2), (1, 2, 10), (2, 3, 30), (1, 4, 64), (3, 2, 3), (1, 2.5, 20)])
def test_rung_steps_are_where_tunes_asha_decides(grace, rf, evals):
    from ray.tune.schedulers import ASHAScheduler

    from switchsweep.sweeps.gate import rung_steps

    eval_every, steps = 5, 5 * evals - 2  # the last evaluation is the last step, not 5 * evals
    # Tune's own bracket: a rung at milestone m decides at the first iteration >= m.
    asha = ASHAScheduler(time_attr="training_iteration", max_t=evals, grace_period=grace, reduction_factor=rf)
    want = sorted({-(-m // 1) for m, _ in asha._brackets[0]._rungs if m < evals})
    assert rung_steps(grace, rf, evals, eval_every, steps) == [int(m) * eval_every for m in want]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_trial_waits_at_a_rung_until_asha_lets_it_go_on(tmp_path):
    import ray
    from ray.tune.schedulers import TrialScheduler

    from switchsweep.sweeps.gate import wait_at_gate

    ray.init(num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        wait = ray.remote(num_cpus=0)(wait_at_gate)
        wait_at_gate("no-asha", "t", 4)  # a sweep without ASHA has no gate: no wait
        asha = _asha(tmp_path / "asha.pkl", gate="s1")
        good, bad = _Trial("a"), _Trial("b")
        asha.on_trial_add(None, good)
        asha.on_trial_add(None, bad)
        waits = {t.trial_id: wait.remote("s1", t.trial_id, 4) for t in (good, bad)}
        assert ray.wait(list(waits.values()), timeout=2)[0] == []  # both wait for the decision
        assert (
            asha.on_trial_result(None, good, {"training_iteration": 1, "kid_x1e3": 1.0, "step": 4})
            == TrialScheduler.CONTINUE
        )
        assert (
            asha.on_trial_result(None, bad, {"training_iteration": 1, "kid_x1e3": 9.0, "step": 4})
            == TrialScheduler.STOP
        )
        assert ray.wait(list(waits.values()), num_returns=2, timeout=10)[0] == [waits["a"]]  # b never goes on
        ray.get(wait.remote("s1", "a", 4), timeout=10)  # a decision stands for a repeated report
    finally:
        ray.shutdown()
