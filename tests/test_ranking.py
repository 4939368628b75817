"""Ranking configurations on fake trial records: finished first, NaN last, both modes, seeds
aggregated with their intervals, ties with the best, and the Pareto set."""

import itertools
import math
import time

import numpy as np
import pytest
from scipy import stats

from switchsweep.config.sweep_schema import METRIC_SE
from switchsweep.platform.sweep_record import TrialEnd
from switchsweep.results.ranking import BEST, TIED, WORSE, TrialRecord, pareto_front, rank_groups


def rec(group, seed, value, status="FINISHED", steps=100, noise=None, **metrics):
    m = {"kid_x1e3": value, **metrics}
    if noise is not None:
        m["kid_x1e3_se"] = noise
    end = TrialEnd.from_mlflow(status)
    return TrialRecord(
        f"{group}-{seed}", f"run-{group}-{seed}", end, steps, group, seed, {"model.name": "switch_dit"}, m
    )


def test_finished_configurations_come_first_then_stopped_then_nan():
    records = [
        rec("stopped", 0, 1.0, status="KILLED", steps=50),  # best number, but from half the training
        rec("short", 0, 2.0, status="RUNNING", steps=50),  # still training: not comparable either
        rec("good", 0, 5.0),
        rec("bad", 0, 9.0),
        rec("nan", 0, math.nan),
        rec("failed", 0, math.nan, status="FAILED", steps=10),
    ]
    ranked = rank_groups(records, "kid_x1e3", "min")
    assert [r.group for r in ranked][:3] == ["good", "bad", "nan"]
    assert {r.group for r in ranked[3:5]} == {"stopped", "short"} and ranked[-1].group == "failed"
    assert [r.rank for r in ranked] == list(range(1, 7))
    assert ranked[3].status == "KILLED" and ranked[-1].status == "FAILED"


def test_max_mode_ranks_higher_first():
    ranked = rank_groups([rec("a", 0, 1.0), rec("b", 0, 3.0), rec("c", 0, 2.0)], "kid_x1e3", "max")
    assert [r.group for r in ranked] == ["b", "c", "a"]
    ranked = rank_groups([rec("a", 0, 1.0), rec("b", 0, 3.0), rec("c", 0, 2.0)], "kid_x1e3", "min")
    assert [r.group for r in ranked] == ["a", "c", "b"]


def test_seeds_aggregate_to_mean_sd_and_a_t_interval():
    a = [10.0, 12.0, 14.0]
    b = [20.0, 21.0, 25.0]
    records = [rec("a", i, v) for i, v in enumerate(a)] + [rec("b", i, v) for i, v in enumerate(b)]
    records.append(rec("b", 3, 22.0, status="KILLED", steps=40))  # one seed stopped early: b is incomplete
    ranked = rank_groups(records, "kid_x1e3", "min")
    top = ranked[0]
    assert top.group == "a" and top.seeds == 3 and top.trials == ["a-0", "a-1", "a-2"]
    assert top.value == pytest.approx(12.0) and top.std == pytest.approx(2.0)
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean(a), scale=stats.sem(a))
    assert top.half_width == pytest.approx((hi - lo) / 2)
    assert ranked[1].group == "b" and ranked[1].status == "KILLED" and ranked[1].steps == 40 and ranked[1].seeds == 4


def test_ties_with_the_best_are_marked_from_the_intervals():
    records = (
        [rec("best", i, v) for i, v in enumerate([10.0, 11.0, 12.0])]
        + [rec("close", i, v) for i, v in enumerate([11.0, 12.0, 13.0])]  # overlaps the best's interval
        + [rec("far", i, v) for i, v in enumerate([30.0, 31.0, 32.0])]
    )
    ranked = {r.group: r.vs_best for r in rank_groups(records, "kid_x1e3", "min")}
    assert ranked == {"best": BEST, "close": TIED, "far": WORSE}


def test_one_seed_uses_the_metric_s_own_noise_or_says_nothing():
    records = [rec("a", 0, 100.0, noise=10.0), rec("b", 0, 130.0, noise=10.0), rec("c", 0, 150.0, noise=2.0)]
    ranked = rank_groups(records, "kid_x1e3", "min", noise_metric="kid_x1e3_se")
    assert ranked[0].half_width == pytest.approx(1.96 * 10.0)
    assert [r.vs_best for r in ranked] == [BEST, TIED, WORSE]  # 30 <= 19.6 + 19.6; 50 > 19.6 + 3.9
    quiet = rank_groups([rec("a", 0, 1.0), rec("b", 0, 2.0)], "kid_x1e3", "min")
    assert [r.vs_best for r in quiet] == [BEST, ""] and math.isnan(quiet[0].half_width)


def test_a_sweeps_one_seed_interval_is_its_evaluation_noise_not_kids_subset_spread():
    # What a sweep's ranking reads beside KID (config.sweep_schema.METRIC_SE): the standard error.
    records = [rec("a", 0, 100.0), rec("b", 0, 115.0)]
    for r, se in zip(records, (4.0, 3.0)):
        r.metrics.update(kid_x1e3_se=se, kid_x1e3_subset_sd=40.0)
    ranked = rank_groups(records, "kid_x1e3", "min", noise_metric=METRIC_SE["kid_x1e3"])
    assert [r.half_width for r in ranked] == [pytest.approx(1.96 * 4.0), pytest.approx(1.96 * 3.0)]
    assert [r.vs_best for r in ranked] == [BEST, WORSE]  # 15 > 7.8 + 5.9; with the subset spread it would be tied


def test_pareto_front_matches_brute_force():
    rng = np.random.default_rng(0)
    points = rng.integers(0, 6, size=(40, 2)).astype(float).tolist()
    front = pareto_front(points, ["min", "max"])
    for i, p in enumerate(points):
        dominated = any(q[0] <= p[0] and q[1] >= p[1] and (q[0] < p[0] or q[1] > p[1]) for q in points)
        assert front[i] == (not dominated)


def test_multi_objective_ranking_puts_the_pareto_set_first():
    records = [
        rec("cheap", 0, 20.0, gflops=1.0),
        rec("good", 0, 10.0, gflops=5.0),
        rec("worse", 0, 21.0, gflops=2.0),
        rec("stopped", 0, 1.0, status="KILLED", steps=3, gflops=0.1),
    ]
    ranked = rank_groups(records, "kid_x1e3", "min", objectives=["kid_x1e3", "gflops"], modes=["min", "min"])
    assert [(r.group, r.pareto) for r in ranked] == [
        ("good", True),
        ("cheap", True),
        ("worse", False),
        ("stopped", False),
    ]
    assert ranked[1].objectives == {"kid_x1e3": 20.0, "gflops": 1.0}


def test_every_permutation_of_the_input_ranks_the_same():
    records = [
        rec("a", 0, 3.0),
        rec("a", 1, 4.0),
        rec("b", 0, 1.0),
        rec("b", 1, 9.0),
        rec("c", 0, 2.0, status="KILLED"),
    ]
    orders = {tuple(r.group for r in rank_groups(list(p), "kid_x1e3", "min")) for p in itertools.permutations(records)}
    assert orders == {("a", "b", "c")}


def test_export_reads_mlflow_and_writes_the_pareto_set(tmp_path):
    from omegaconf import OmegaConf

    from switchsweep.platform.tracking import (
        GROUP_TAG,
        OBJECTIVES_TAG,
        PARENT_TAG,
        ROLE_TAG,
        SEED_TAG,
        SWEEP_TAG,
        TRIAL_TAG,
        Tracker,
        default_tracking_uri,
    )
    from switchsweep.results.export import export_best

    uri = default_tracking_uri(tmp_path)
    tracker = Tracker(uri)
    exp = tracker.experiment("mo", tmp_path / "artifacts")
    parent = tracker.create_run(
        exp,
        "mo-1",
        {
            ROLE_TAG: "sweep",
            SWEEP_TAG: "mo-1",
            "switchsweep.metric": "kid_x1e3",
            "switchsweep.mode": "min",
            OBJECTIVES_TAG: "kid_x1e3,gflops",
        },
    )
    # (group, seed, kid, gflops): g0 and g1 are on the front, g2 is dominated by g0, g3 was stopped early.
    rows = [
        ("g0", 0, 10.0, 2.0),
        ("g0", 1, 12.0, 2.0),
        ("g1", 0, 5.0, 4.0),
        ("g1", 1, 7.0, 4.0),
        ("g2", 0, 14.0, 3.0),
        ("g2", 1, 13.0, 3.0),
        ("g3", 0, 1.0, 1.0),
    ]
    for i, (group, seed, kid, gflops) in enumerate(rows):
        run = tracker.create_run(
            exp, f"t{i}", {PARENT_TAG: parent, TRIAL_TAG: f"t{i}", ROLE_TAG: "trial", GROUP_TAG: group, SEED_TAG: seed}
        )
        steps = 4 if group == "g3" else 8
        tracker.log_params(run, {"train.steps": 8, "model.name": "dit", "train.seed": seed})
        tracker.log_metrics(run, {"kid_x1e3": kid, "gflops": gflops, "step": steps}, step=steps)
        tracker.log_text(
            run, OmegaConf.to_yaml({"model": {"name": "dit"}, "train": {"seed": seed, "out_dir": "x"}}), "config.yaml"
        )
        tracker.set_status(run, "FINISHED" if group != "g3" else "KILLED")
    written = export_best(uri, "mo", top=1, out=tmp_path / "out")
    assert [p.name for p in written] == ["pareto01-t2.yaml", "pareto02-t0.yaml"]  # g1 (kid 6), then g0 (kid 11)
    assert (
        "kid_x1e3=6 +- " in written[0].read_text().splitlines()[0]
        and "gflops=4" in written[0].read_text().splitlines()[0]
    )
    assert OmegaConf.load(written[1]).train.seed == 0  # the configuration's first seed
    table = (tmp_path / "out" / "ranking.csv").read_text().splitlines()
    assert (
        table[0].endswith(
            "vs_best,diff_to_best,diff_ci95,diff_basis,vs_baseline,diff_to_baseline,baseline_ci95,pareto,gflops_mean,failure"
        )
        and len(table) == 5
    )


def test_rank_trials_reads_the_sweep_asked_for_or_the_latest(tmp_path):
    from switchsweep.platform.errors import ConfigError
    from switchsweep.platform.tracking import PARENT_TAG, ROLE_TAG, SWEEP_TAG, TRIAL_TAG, Tracker, default_tracking_uri
    from switchsweep.results.trials import rank_trials

    tracker = Tracker(default_tracking_uri(tmp_path))
    exp = tracker.experiment("design_space", tmp_path / "artifacts")
    for sweep_id, kid in (("ds-1", 3.0), ("ds-2", 5.0)):  # ds-2 starts later: the latest
        parent = tracker.create_run(
            exp,
            sweep_id,
            {ROLE_TAG: "sweep", SWEEP_TAG: sweep_id, "switchsweep.metric": "kid_x1e3", "switchsweep.mode": "min"},
        )  # no objectives tag: single-objective
        run = tracker.create_run(
            exp, f"{sweep_id}-t", {PARENT_TAG: parent, TRIAL_TAG: f"{sweep_id}-t", ROLE_TAG: "trial"}
        )
        tracker.log_params(run, {"train.steps": 8, "model.name": "dit"})
        tracker.log_metrics(run, {"kid_x1e3": kid, "step": 8}, step=8)
        tracker.set_status(run, "FINISHED")
        time.sleep(0.01)
    latest = rank_trials(tracker, "design_space")
    assert latest.sweep_id == "ds-2" and latest.objectives == [] and [r.trial_id for r in latest.ranked] == ["ds-2-t"]
    first = rank_trials(tracker, "design_space", "ds-1").ranked
    assert [(r.trial_id, r.group, r.value, r.steps, r.complete) for r in first] == [("ds-1-t", "ds-1-t", 3.0, 8, True)]
    with pytest.raises(ConfigError, match="sweep.id=ds-9 is not in"):
        rank_trials(tracker, "design_space", "ds-9")
    with pytest.raises(ConfigError, match="sweep=table1: no such sweep in"):
        rank_trials(tracker, "table1")


def test_paired_difference_drops_pairs_with_a_missing_value():
    from switchsweep.results.ranking import paired_difference

    mean, hw = paired_difference([1.0, math.nan, 3.0, 6.0], [0.0, 5.0, math.nan, 4.0])  # pairs 0 and 3 only
    assert mean == pytest.approx(1.5) and hw == pytest.approx(
        stats.t.ppf(0.975, 1) * np.std([1.0, 2.0], ddof=1) / math.sqrt(2)
    )


def test_ranking_csv_holds_every_configuration_s_numbers(tmp_path):
    import csv

    from switchsweep.results.tables import write_ranking
    from switchsweep.results.trials import SweepRanking

    switch = {
        "model.name": "switch_dit",
        "model.num_experts": "3",
        "model.top_k": "2",
        "model.lambda_dp": "0.54637",
        "model.prior_alpha": "4.0",
        "train.loss_weighting": "constant",
    }
    extra = {"params": 2.166e6, "gflops": 0.04271, "steps_per_sec": 5.678}
    records = [
        TrialRecord(
            f"s-{i}",
            f"r-s-{i}",
            TrialEnd.FINISHED,
            100,
            "gs",
            i,
            switch,
            {"kid_x1e3": v, "kid_x1e3_se": 2.0, "class_accuracy": a, "class_accuracy_se": 0.01, **extra},
        )
        for i, (v, a) in enumerate([(10.0, 0.95), (14.0, 0.97)])
    ]
    records.append(
        TrialRecord(
            "d-0",
            "r-d-0",
            TrialEnd.STOPPED,
            50,
            "gd",
            0,
            {"model.name": "dit"},
            {"kid_x1e3": math.nan, "class_accuracy": 0.3},
        )
    )
    records.append(
        TrialRecord(
            "f-0",
            "r-f-0",
            TrialEnd.FAILED,
            3,
            "gf",
            0,
            {"model.name": "dit"},
            {},
            failure="TrainingError: non-finite loss (nan) at step 3 | lower train.lr",
        )
    )
    ranked = rank_groups(records, "kid_x1e3", "min", "kid_x1e3_se")
    table, md = write_ranking(SweepRanking("sw-1", "kid_x1e3", [], ranked), tmp_path)
    with open(table, newline="") as fh:
        rows = list(csv.DictReader(fh))
    best, dit, failed = rows
    assert (
        failed["status"] == "FAILED"
        and failed["failure"] == "f-0: TrainingError: non-finite loss (nan) at step 3 | lower train.lr"
    )
    hw = stats.t.ppf(0.975, 1) * np.std([10.0, 14.0], ddof=1) / math.sqrt(2)
    assert best == {
        "rank": "1",
        "group": "gs",
        "trial_id": "s-0",
        "seeds": "2",
        "status": "FINISHED",
        "steps": "100",
        "variant": "switch_dit(M=3,k=2)",
        "lambda_dp": "0.5464",
        "prior_alpha": "4.0",
        "params_M": "2.166",
        "gflops": "0.0427",
        "steps_per_s": "5.68",
        "class_accuracy": "0.960",
        "class_accuracy_se": "0.010",
        "learned": "yes",
        "kid_x1e3": "12",
        "kid_x1e3_sd_seeds": "2.83",
        "kid_x1e3_noise": "2",
        "kid_x1e3_ci95": f"{hw:.3g}",
        "vs_best": "best",
        "diff_to_best": "",
        "diff_ci95": "",
        "diff_basis": "",
        "vs_baseline": "",
        "diff_to_baseline": "",
        "baseline_ci95": "",
        "failure": "",
    }
    assert dit == {
        "rank": "2",
        "group": "gd",
        "trial_id": "d-0",
        "seeds": "1",
        "status": "KILLED",
        "steps": "50",
        "variant": "dit",
        "lambda_dp": "",
        "prior_alpha": "",
        "params_M": "",
        "gflops": "",
        "steps_per_s": "",
        "class_accuracy": "0.300",
        "class_accuracy_se": "",
        "learned": "not learned",
        "kid_x1e3": "",
        "kid_x1e3_sd_seeds": "",
        "kid_x1e3_noise": "",
        "kid_x1e3_ci95": "",
        "vs_best": "",
        "diff_to_best": "",
        "diff_ci95": "",
        "diff_basis": "",
        "vs_baseline": "",
        "diff_to_baseline": "",
        "baseline_ci95": "",
        "failure": "",
    }
    lines = md.read_text().splitlines()
    assert (
        lines[2].startswith("| rank | group |")
        and lines[4].startswith("| 1 | gs | s-0 | 2 | FINISHED |")
        and len(lines) == 7
    )
    assert lines[6].endswith(
        "| f-0: TrainingError: non-finite loss (nan) at step 3 / lower train.lr |"
    )  # a | kept out of the cells


def test_one_seed_comparisons_with_the_best_pair_the_two_evaluations(tmp_path):
    # Two one-seed configurations evaluated alike: each KID's own noise is 4, but most of it is shared
    # (the same labels and initial noise), so their difference of 6 is separable only when paired.
    from switchsweep.platform.tracking import (
        EVAL_NOISE_ARTIFACT,
        GROUP_TAG,
        PARENT_TAG,
        ROLE_TAG,
        SWEEP_TAG,
        TRIAL_TAG,
        Tracker,
        default_tracking_uri,
        eval_noise_name,
    )
    from switchsweep.results.trials import rank_trials

    rng = np.random.default_rng(0)
    shared, own = rng.standard_normal(50), rng.standard_normal((2, 50))
    noise = {"a": 100 + 3.9 * shared + 0.8 * own[0], "b": 106 + 3.9 * shared + 0.8 * own[1]}
    tracker = Tracker(default_tracking_uri(tmp_path))
    exp = tracker.experiment("design_space", tmp_path / "artifacts")
    parent = tracker.create_run(
        exp, "ds-1", {ROLE_TAG: "sweep", SWEEP_TAG: "ds-1", "switchsweep.metric": "kid_x1e3", "switchsweep.mode": "min"}
    )
    for name, values in noise.items():
        run = tracker.create_run(exp, name, {PARENT_TAG: parent, TRIAL_TAG: name, ROLE_TAG: "trial", GROUP_TAG: name})
        tracker.log_params(run, {"train.steps": 8, "model.name": "dit"})
        tracker.log_metrics(
            run, {"kid_x1e3": float(values.mean()), "kid_x1e3_se": float(values.std(ddof=1)), "step": 8}, step=8
        )
        tracker.log_dict(
            run, {"kid_x1e3": values.tolist(), "fid": [0.0, 1.0]}, f"{EVAL_NOISE_ARTIFACT}/{eval_noise_name(8)}"
        )
        tracker.set_status(run, "FINISHED")
    best, other = rank_trials(tracker, "design_space").ranked
    assert best.group == "a" and other.half_width > other.diff  # unpaired, the intervals overlap
    paired_sd = np.std(noise["b"] - noise["a"], ddof=1)
    assert other.diff == pytest.approx(noise["b"].mean() - noise["a"].mean())
    assert other.diff_half_width == pytest.approx(1.96 * paired_sd)
    assert (
        other.vs_best == WORSE
        and other.diff_basis == "1 seed: paired evaluation noise only, training-seed noise not included"
    )


def test_several_seeds_compare_with_the_best_over_paired_seed_differences():
    from switchsweep.results.ranking import compare_to_best

    records = [rec("a", i, v, noise=5.0) for i, v in enumerate([10.0, 14.0, 12.0])]
    records += [rec("b", i, v, noise=5.0) for i, v in enumerate([11.0, 15.5, 13.2])]  # a's seeds plus about 1.2
    ranked = rank_groups(records, "kid_x1e3", "min", noise_metric="kid_x1e3_se")
    assert ranked[1].vs_best == TIED  # the seed-to-seed spread (2) hides the difference unpaired
    compare_to_best(ranked, lambda a, b: math.nan)
    diffs = [1.0, 1.5, 1.2]
    hw = stats.t.ppf(0.975, 2) * np.std(diffs, ddof=1) / math.sqrt(3)
    assert ranked[1].diff == pytest.approx(np.mean(diffs)) and ranked[1].diff_half_width == pytest.approx(hw)
    assert ranked[1].vs_best == WORSE and ranked[1].diff_basis == "paired over 3 seeds"


def test_a_configuration_that_has_not_learned_is_marked_and_ranks_after_those_that_have():
    from switchsweep.results.ranking import LEARNED_ACCURACY, NOT_LEARNED
    from switchsweep.results.trials import SweepRanking
    from switchsweep.results.verdicts import verdict_sentences

    below = LEARNED_ACCURACY - 0.05
    records = [
        rec("noise", 0, 1.0, class_accuracy=below),  # the best KID, but its samples are not its classes
        rec("drawn", 0, 5.0, class_accuracy=0.97),
        rec("also", 0, 6.0, class_accuracy=0.95),
        rec("unscored", 0, 7.0),  # no classifier scored it (latents): nothing to say
    ]
    ranked = rank_groups(records, "kid_x1e3", "min")
    assert [r.group for r in ranked] == ["drawn", "also", "unscored", "noise"]
    assert [r.vs_best for r in ranked] == [BEST, "", "", NOT_LEARNED]  # no noise estimates: no ties said
    assert [r.learned for r in ranked] == [True, True, True, False]
    lines = verdict_sentences(SweepRanking("s-1", "kid_x1e3", [], ranked))
    assert lines == [
        f"Not learned (class accuracy below {LEARNED_ACCURACY:.0%}), not ranked against the rest: "
        f"noise switch_dit(M=3,k=2) ({100 * below:.1f}%)."
    ]


def test_no_winner_is_named_between_models_that_have_not_learned():
    from switchsweep.results.ranking import BASELINE_GROUP
    from switchsweep.results.trials import SweepRanking
    from switchsweep.results.verdicts import baseline_sentence, verdict_sentences

    params = {"model.name": "dit", "train.steps": "450", "train.lr": "0.0001"}
    records = [
        TrialRecord(
            "b-0", "r-b", TrialEnd.FINISHED, 450, BASELINE_GROUP, 0, params, {"kid_x1e3": 240.0, "class_accuracy": 0.11}
        ),
        rec("g0", 0, 210.0, class_accuracy=0.13),
    ]
    records[1].params.update(params, **{"model.name": "switch_dit"})
    ranking = SweepRanking("s-1", "kid_x1e3", [], rank_groups(records, "kid_x1e3", "min"))
    text = baseline_sentence(ranking)
    assert "beats" not in text and "worse" not in text
    assert "g0 (13.0%) and baseline (11.0%) have not learned to draw their classes" in text
    assert "raise train.steps (now 450) or train.lr (now 0.0001)" in text
    assert verdict_sentences(ranking)[0].startswith("No configuration has learned to draw its classes")


def _with_baseline(base_values, designs, parent=None):
    from switchsweep.results.ranking import BASELINE_GROUP, compare_to_best
    from switchsweep.results.trials import SweepRanking

    records = [
        TrialRecord(
            f"bl-{i}", f"run-bl-{i}", TrialEnd.FINISHED, 100, BASELINE_GROUP, i, {"model.name": "dit"}, {"kid_x1e3": v}
        )
        for i, v in enumerate(base_values)
    ]
    for group, values in designs.items():
        records += [rec(group, i, v) for i, v in enumerate(values)]
    ranked = rank_groups(records, "kid_x1e3", "min")
    compare_to_best(ranked, lambda a, b: math.nan, "min")
    return SweepRanking("s-1", "kid_x1e3", [], ranked, "parent", {"sweep.seeds": "1", **(parent or {})})


def test_the_baseline_is_compared_with_every_design_and_never_the_best():
    from switchsweep.results.ranking import BETTER
    from switchsweep.results.verdicts import baseline_sentence

    ranking = _with_baseline([8.0, 9.0, 8.5], {"g0": [10.0, 11.2, 10.4], "g1": [20.0, 20.5, 22.0]})
    base, g0, g1 = ranking.ranked
    assert base.baseline and base.rank == 1 and base.vs_best == BETTER  # the lowest KID, but not the best design
    assert ranking.best is g0 and g0.vs_best == BEST and g1.vs_best == WORSE
    diffs = np.subtract([10.0, 11.2, 10.4], [8.0, 9.0, 8.5])
    hw = stats.t.ppf(0.975, 2) * np.std(diffs, ddof=1) / math.sqrt(3)
    assert g0.base_diff == pytest.approx(diffs.mean()) and g0.base_half_width == pytest.approx(hw)
    assert g0.vs_baseline == WORSE and g1.vs_baseline == WORSE and base.vs_baseline == ""
    assert baseline_sentence(ranking) == (
        f"The best design, g0 switch_dit(M=3,k=2), is worse than the baseline dit: kid_x1e3 "
        f"10.53 against 8.5, a difference of {diffs.mean():+.4g} +- {hw:.2g} "
        "(95%, paired over 3 seeds)."
    )
    # A baseline that does not separate from the best, and one that did not finish.
    tied = _with_baseline([10.0, 12.0], {"g0": [11.0, 11.0]})
    assert tied.best.vs_baseline == TIED and "does not separate from the baseline dit" in baseline_sentence(tied)
    assert (
        _with_baseline([], {"g0": [1.0]}).baseline is None
        and baseline_sentence(_with_baseline([], {"g0": [1.0]})) == ""
    )


def test_race_state_reads_separated_spent_or_open_from_the_seeds():
    from switchsweep.results.ranking import RACE_OPEN, RACE_SEPARATED, RACE_SPENT, race_state
    from switchsweep.results.verdicts import race_sentence

    race = {"sweep.race": "2", "sweep.race_seeds": "2"}
    apart = _with_baseline([30.0, 30.5, 29.0], {"g0": [10.0, 10.2, 10.1], "g1": [12.0, 12.3, 12.1], "g2": [20.0]}, race)
    state, raced = race_state(apart.ranked, 1, 2, 2)
    assert state == RACE_SEPARATED and [r.group for r in raced] == ["g0", "g1"]
    assert race_sentence(apart) == "Racing separated g0 from the runner-up g1 at 95% (2 extra seed(s) each, 3 in all)."
    close = _with_baseline([30.0, 30.5, 29.0], {"g0": [10.0, 13.0, 9.0], "g1": [12.0, 10.0, 12.0], "g2": [20.0]}, race)
    assert race_state(close.ranked, 1, 2, 2)[0] == RACE_SPENT and "its budget is spent (2 of 2 extra seeds each)" in (
        race_sentence(close)
    )
    assert race_state(close.ranked, 1, 2, 3)[0] == RACE_OPEN  # one more round was allowed: cut short
    one = _with_baseline(
        [30.0, 30.5, 29.0], {"g0": [10.0, 10.2, 10.1], "g1": [12.0]}, {"sweep.race": "1", "sweep.race_seeds": "2"}
    )
    assert race_sentence(one) == "Racing separated g0 from the baseline at 95% (2 extra seed(s) each, 3 in all)."
    before = _with_baseline([30.0], {"g0": [10.0], "g1": [12.0]}, race)
    assert race_state(before.ranked, 1, 2, 2) == (RACE_OPEN, []) and race_state(before.ranked, 1, 0, 2) == ("", [])
