"""The sweep report's figures and tables on synthetic sweeps, against independent computations:
block means for the routing bins, scipy's paired t interval, a brute-force Pareto front, the
slider's visibility per step, ASHA stop marks, fANOVA importances on a study where only k matters."""

import itertools
import math
import re

import numpy as np
import optuna
import pytest
from scipy import stats

from switchsweep.config.naming import run_name
from switchsweep.dashboards import figures, report, tables
from switchsweep.dashboards.sweep_data import SweepData, TrialData, bin_rows, study_importances
from switchsweep.platform.sweep_record import TrialEnd
from switchsweep.results.ranking import TrialRecord, compare_to_best, paired_difference, rank_groups
from switchsweep.results.trials import SweepRanking, is_plain_dit

PARENT = {
    "sweep.search": "grid",
    "sweep.seeds": "2",
    "train.steps": "100",
    "sweep.eval_every": "50",
    "sweep.ray.num_workers": "2",
    "sweep.ray.use_gpu": "False",
    "sweep.ray.cpus_per_worker": "1.5",
    "sweep.ray.gpus_per_worker": "1.0",
}


def _params(name, m=3, k=2, ldp=1.0, alpha=4.0):
    p = {"model.name": name, "train.loss_weighting": "constant", "train.steps": "100"}
    if name == "switch_dit":
        p.update(
            {
                "model.num_experts": str(m),
                "model.top_k": str(k),
                "model.lambda_dp": str(ldp),
                "model.prior_alpha": str(alpha),
            }
        )
    return p


def _sweep(designs, seeds=2, stopped=(), accuracy=None):
    """designs: {group: (params, [kid per seed], gflops)}; trials in `stopped` end KILLED at step 50;
    accuracy: {group: class accuracy}, where the samples were classified."""
    records, trials = [], []
    for g, (params, kids, gflops) in designs.items():
        for s in range(seeds):
            tid = f"{g}-{s}"
            stop = tid in stopped
            metrics = {
                "kid_x1e3": kids[s],
                "kid_x1e3_se": 2.0,
                "gflops": gflops,
                "params": 1e6,
                "trial_wall_s": 100.0 + s,
                "steps_per_sec": 5.0,
                **({"class_accuracy": accuracy[g], "class_accuracy_se": 0.01} if accuracy else {}),
            }
            records.append(
                TrialRecord(
                    tid, f"run-{tid}", TrialEnd.of(50 if stop else 100, 100), 50 if stop else 100, g, s, params, metrics
                )
            )
            curve = [(50, kids[s] + 10)] + ([] if stop else [(100, kids[s])])
            trials.append(
                TrialData(
                    tid,
                    f"run-{tid}",
                    run_name(params, s),
                    g,
                    TrialEnd.STOPPED if stop else TrialEnd.FINISHED,
                    params,
                    metrics,
                    {"loss": [(10, 1.0), (50, 0.5)], "kid_x1e3": curve},
                )
            )
    ranked = rank_groups(records, "kid_x1e3", "min", "kid_x1e3_se")
    compare_to_best(
        ranked, lambda a, b: math.nan, "min", next((r.group for r in ranked if is_plain_dit(r.params)), None)
    )
    order = {t: i for i, r in enumerate(ranked) for t in r.trials}
    trials.sort(key=lambda t: order[t.trial_id])
    ranking = SweepRanking("grid-1", "kid_x1e3", [], ranked, "parent", dict(PARENT))
    return SweepData("table1", ranking, trials, None, "no Optuna study")


DESIGNS = {
    "dit": (_params("dit"), [30.0, 32.0], 0.04),
    "dtr": (_params("dtr"), [28.0, 31.0], 0.04),
    "s32": (_params("switch_dit", 3, 2), [20.0, 21.0], 0.043),
    "s31": (_params("switch_dit", 3, 1), [25.0, 24.0], 0.041),
    "s64": (_params("switch_dit", 6, 4, ldp=0.5, alpha=2.0), [22.0, 26.0], 0.05),
}


def test_time_bins_are_block_means():
    w = np.random.default_rng(0).integers(0, 2, size=(1000, 12)).astype(np.float32)
    np.testing.assert_allclose(bin_rows(w), w.reshape(100, 10, 12).mean(1), rtol=1e-6)
    assert bin_rows(w[:7]).shape == (7, 12)  # fewer rows than bins: kept as they are


def test_paired_difference_is_the_paired_t_interval():
    a, b = [20.0, 21.0, 25.0], [30.0, 32.0, 31.0]
    mean, hw = paired_difference(a, b)
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert mean == pytest.approx(np.mean(np.subtract(a, b))) and hw == pytest.approx((ci.high - ci.low) / 2)
    # One pair: the two metrics' own noise.
    assert paired_difference([20.0], [30.0], 3.0, 4.0) == pytest.approx((-10.0, 1.96 * 5.0))
    assert math.isnan(paired_difference([20.0], [30.0])[1])
    assert math.isnan(paired_difference([math.nan], [1.0])[0])


def test_design_table_gives_each_design_its_paired_difference_to_dit():
    data = _sweep(DESIGNS)
    html = tables.design_table(data)
    rows = {m.group(1): m.group(0) for m in re.finditer(r"<tr><td>([^<]+)</td>.*?</tr>", html)}
    mean, hw = paired_difference([20.0, 21.0], [30.0, 32.0])
    assert f"{mean:+.4g} +- {hw:.2g}" in rows["switch_dit(M=3,k=2)"]
    assert "better" in rows["switch_dit(M=3,k=2)"]  # -10.5 +- 6.4: separable
    assert "tied" in rows["dtr"] and "paired over 2 seeds" in rows["dtr"] and "baseline" in rows["dit"]
    no_dit = _sweep({g: d for g, d in DESIGNS.items() if g != "dit"})
    assert tables.design_table(no_dit) is None


def _front(points):
    """Brute force: a point is on the front if no other is <= in both coordinates and < in one."""
    return sorted(p for p in points if not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in points))


def test_pareto_panels_draw_exactly_the_non_dominated_configurations():
    data = _sweep(DESIGNS)
    fig = figures.pareto_figure(data)
    fronts = [t for t in fig.data if t.name == "Pareto front"]
    assert len(fronts) == 2
    groups = {r.group: r for r in data.ranking.ranked}
    gflops = [(DESIGNS[g][2], groups[g].value) for g in DESIGNS]
    front = _front(gflops)
    assert list(fronts[0].x) == pytest.approx([x for x, _ in front]) and list(fronts[0].y) == pytest.approx(
        [y for _, y in front]
    )
    # Compute panel: wall seconds of both seeds x 2 workers x 1.5 CPUs each.
    cost = [((100.0 + 101.0) * 2 * 1.5, groups[g].value) for g in DESIGNS]
    assert set(fronts[1].x) == {cost[0][0]}  # equal costs: only the best value is on the front
    assert list(fronts[1].y) == pytest.approx([min(v for _, v in cost)])


def test_learning_curves_mark_only_the_stopped_trials_at_their_last_evaluation():
    data = _sweep(DESIGNS, stopped={"s64-1"})
    fig = figures.learning_curves(data)
    marks = [t for t in fig.data if t.name == "stopped by ASHA"]
    assert len(marks) == 1 and list(marks[0].x) == [50] and list(marks[0].y) == [26.0 + 10]
    lines = [t for t in fig.data if t.name != "stopped by ASHA"]
    assert len(lines) == 2 * len(data.trials)  # loss and KID of every trial


def test_a_metric_fixed_before_training_gets_no_curve_and_stops_are_marked_on_the_loss():
    data = _sweep(DESIGNS, stopped={"s64-1"})
    for t in data.trials:  # as gflops is logged: once, at step 0
        t.curves["kid_x1e3"] = [(0, t.metrics["gflops"])]
    fig = figures.learning_curves(data)
    assert [a.text for a in fig.layout.annotations] == ["training loss"]  # one panel
    lines = [t for t in fig.data if t.name != "stopped by ASHA"]
    assert len(lines) == len(data.trials) and all(list(t.x) == [10, 50] for t in lines)  # the loss only
    marks = [t for t in fig.data if t.name == "stopped by ASHA"]
    assert len(marks) == 1 and list(marks[0].x) == [50] and list(marks[0].y) == [0.5]
    assert "kid_x1e3 is fixed before training" in fig.layout.title.text
    for t in data.trials:  # one evaluation after step 0 is a curve again
        t.curves["kid_x1e3"] = [(0, 1.0), (50, 2.0)]
    assert [a.text for a in figures.learning_curves(data).layout.annotations] == [
        "training loss",
        "kid_x1e3 at each evaluation",
    ]


def test_class_accuracy_gets_its_own_panel_and_stops_stay_on_the_metric():
    data = _sweep(DESIGNS, stopped={"s64-1"})
    for t in data.trials:
        t.curves["class_accuracy"] = [(50, 0.4), (100, 0.95)]
    fig = figures.learning_curves(data)
    assert [a.text for a in fig.layout.annotations] == [
        "training loss",
        "kid_x1e3 at each evaluation",
        "class accuracy",
    ]
    marks = [t for t in fig.data if t.name == "stopped by ASHA"]
    assert len(marks) == 1 and list(marks[0].y) == [26.0 + 10] and marks[0].xaxis == "x2"  # on the KID panel


def test_routing_slider_shows_each_evaluation_by_itself():
    rng = np.random.default_rng(1)
    steps = [(50, rng.random((100, 18)), rng.random((100, 18))), (100, rng.random((100, 18)), rng.random((100, 18)))]
    t = TrialData(
        "t", "r", "switch_dit M3 k2 ldp1.0 a4 s0", "g", TrialEnd.FINISHED, _params("switch_dit"), {}, {}, steps
    )
    fig = figures.routing_figure(t)
    heatmaps = list(fig.data)
    assert len(heatmaps) == 4
    slider = fig.layout.sliders[0]
    assert [s.label for s in slider.steps] == ["50", "100"] and slider.active == 1
    for i, s in enumerate(slider.steps):
        visible = s.args[0]["visible"]
        shown = [h for h, v in zip(heatmaps, visible) if v]
        assert len(shown) == 2
        np.testing.assert_array_equal(np.asarray(shown[0].z), steps[i][1])
        np.testing.assert_array_equal(np.asarray(shown[1].z), steps[i][2])
    assert [h.visible for h in heatmaps] == [False, False, True, True]  # opens on the last evaluation
    assert len([s for s in fig.layout.shapes if s.type == "line"]) == 2 * 5  # 6 blocks of 3 units: 5 boundaries a panel


def test_importances_come_from_the_study_on_resolved_k(tmp_path):
    journal = tmp_path / "optuna.journal"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.create_study(storage=storage, study_name="s")
    dists = {
        "model.num_experts": optuna.distributions.CategoricalDistribution([2, 4, 6]),
        "model.top_k:fraction": optuna.distributions.FloatDistribution(0.0, 1.0),
        "model.lambda_dp": optuna.distributions.FloatDistribution(0.1, 10.0, log=True),
    }
    rng = np.random.default_rng(0)
    for m, k in itertools.product([2, 4, 6], [1, 2]):
        for _ in range(3):
            ldp = float(rng.uniform(0.1, 10))
            t = optuna.trial.create_trial(
                params={"model.num_experts": m, "model.top_k:fraction": k / m - 0.01, "model.lambda_dp": ldp},
                distributions=dists,
                value=10.0 * k + rng.normal(0, 0.01),  # only k matters
                user_attrs={"model.num_experts": m, "model.top_k": k, "model.lambda_dp": ldp},
            )
            study.add_trial(t)
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params={}, distributions={}))
    imp, note = study_importances(journal, ["model.num_experts", "model.top_k", "model.lambda_dp"])
    assert set(imp) == {"model.num_experts", "model.top_k", "model.lambda_dp"}  # resolved k, no fraction
    assert max(imp, key=imp.get) == "model.top_k" and imp["model.top_k"] > 0.8
    assert "18 finished" in note
    few, note = study_importances(tmp_path / "missing.journal", ["model.top_k"])
    assert few is None and "no Optuna study" in note


def test_the_page_is_self_contained_and_every_figure_has_a_div():
    data = _sweep(DESIGNS, stopped={"s64-1"})
    page = report.render(data)
    assert not re.search(r"<script[^>]*\ssrc=", page)  # plotly.js is inline: the page opens offline
    plots = re.findall(r'Plotly\.newPlot\(\s*"(plot\d+)"', page)
    # parallel coordinates, Pareto, learning curves (no routing or study in this synthetic sweep)
    assert plots == ["plot1", "plot2", "plot3"]
    assert "Designs against DiT" in page and "switch_dit(M=3,k=2)" in page


def test_the_report_shows_class_accuracy_and_each_configuration_s_last_samples(tmp_path):
    import base64

    from PIL import Image

    data = _sweep(DESIGNS)
    assert "No class accuracy: the feature network" in tables.accuracy_note(data)  # none logged it
    assert "samples" not in report.render(data).split("Samples at the last evaluation")[1].split("<h2>")[0].lower()[30:]
    data = _sweep(DESIGNS, accuracy={g: 0.42 if g == "dit" else 0.95 for g in DESIGNS})
    Image.new("L", (40, 16), 200).save(tmp_path / "grid.png")
    png = (tmp_path / "grid.png").read_bytes()
    for t in data.trials:
        t.samples = (100, png) if t.trial_id.endswith("-0") else None
    page = report.render(data)
    assert "Class accuracy: the share of samples" in page and "42.0%" in page and "95.0%" in page
    section = page.split("Samples at the last evaluation")[1]
    assert section.count("<img ") == len(DESIGNS) and base64.b64encode(png).decode() in section
    assert "42.0%, not learned" in section  # dit, below the threshold


def test_run_names_say_the_design_and_seed():
    assert (
        run_name(
            {
                "model.name": "switch_dit",
                "model.num_experts": 3,
                "model.top_k": 2,
                "model.lambda_dp": 1.0,
                "model.prior_alpha": 4.0,
            },
            0,
        )
        == "switch_dit M3 k2 ldp1.0 a4 s0"
    )
    assert (
        run_name(
            {
                "model.name": "switch_dit",
                "model.num_experts": "4",
                "model.top_k": "1",
                "model.lambda_dp": "0.5463",
                "model.prior_alpha": "2.0",
                "model.gating": "noisy",
            },
            2,
        )
        == "switch_dit M4 k1 noisy ldp0.546 a2 s2"
    )
    assert (
        run_name({"model.name": "dit_moe", "model.num_experts": 8, "model.top_k": 2, "model.shared_experts": 1}, 0)
        == "dit_moe M8 k2 shared1 s0"
    )
    assert run_name({"model.name": "dit", "train.loss_weighting": "min_snr"}, 1) == "dit min_snr s1"
    # lambda_dp = 0 reads ldp0.0 (not also "no-prior"); tiny values keep their exponent.
    assert (
        run_name(
            {
                "model.name": "switch_dit",
                "model.num_experts": 3,
                "model.top_k": 2,
                "model.lambda_dp": 0.0,
                "model.prior_alpha": 8.0,
            },
            0,
        )
        == "switch_dit M3 k2 ldp0.0 a8 s0"
    )
    assert (
        run_name(
            {
                "model.name": "switch_dit",
                "model.num_experts": 3,
                "model.top_k": 2,
                "model.lambda_dp": 1e-5,
                "model.prior_alpha": 4.0,
            },
            0,
        )
        == "switch_dit M3 k2 ldp1e-05 a4 s0"
    )


def test_the_ranking_says_why_a_configuration_failed_only_when_one_did():
    from switchsweep.dashboards.report import ranking_table

    data = _sweep({k: DESIGNS[k] for k in ("dit", "s32")})
    assert "why it failed" not in ranking_table(data)
    data.ranking.ranked[-1].end, data.ranking.ranked[-1].failure = (
        TrialEnd.FAILED,
        "dit-0: TrainingError: non-finite loss <x>",
    )
    table = ranking_table(data)
    assert "<th>why it failed</th>" in table and "<td>dit-0: TrainingError: non-finite loss &lt;x&gt;</td>" in table
