"""Sweep configs, search spaces and their bad-input errors: all checked before Ray or MLflow start."""

import copy
from pathlib import Path

import numpy as np
import pytest
from ray import tune
from scipy import stats

import switchsweep
from switchsweep.cli import main
from switchsweep.config.compose import load_sweep_config
from switchsweep.config.resources import trains_inline, trial_resources
from switchsweep.config.sweep_schema import RayConfig
from switchsweep.platform.errors import ConfigError
from switchsweep.sweeps.runtime import check_resources
from switchsweep.sweeps.space import (
    FRACTION_SUFFIX,
    apply_params,
    config_from_dict,
    param_space,
    resolve_point,
    to_sampled,
    trial_bases,
)

SHIPPED = sorted(p.stem for p in (Path(switchsweep.__file__).parent / "conf" / "sweep").glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_sweep_composes_and_validates(name):
    job = load_sweep_config([f"sweep={name}"])
    assert job.sweep.name == name
    bases = trial_bases(job, [f"sweep={name}"])
    for base in bases:
        config_from_dict(base)  # each row is a runnable training config
    if job.sweep.search == "grid":
        assert len(bases) == len(job.sweep.grid)


def test_the_design_space_trains_plain_dit_beside_the_search_as_its_baseline():
    overrides = ["sweep=design_space", "model.size=tiny", "train.seed=3", "model=switch_dit"]
    base, baseline = trial_bases(load_sweep_config(overrides), overrides)
    assert baseline["model"]["name"] == "dit" and base["model"]["name"] == "switch_dit"
    assert {k: v for k, v in baseline.items() if k != "model"} == {k: v for k, v in base.items() if k != "model"}
    assert baseline["model"]["size"] == "tiny" and config_from_dict(baseline).model.name == "dit"
    assert len(trial_bases(load_sweep_config(["sweep=design_space", "sweep.baseline=none"]), [])) == 1


def test_table1_rows_reach_the_baseline_and_every_mk_pair():
    job = load_sweep_config(["sweep=table1"])
    bases = trial_bases(job, ["sweep=table1"])
    assert bases[0]["model"]["name"] == "dit"
    pairs = {(b["model"]["num_experts"], b["model"]["top_k"]) for b in bases[1:]}
    assert (3, 2) in pairs and (3, 3) in pairs and all(k <= m for m, k in pairs)
    space = param_space(job.sweep)
    assert space["row"] == tune.grid_search(list(range(len(bases))))
    seeded = load_sweep_config(["sweep=table1", "sweep.seeds=3"])
    assert param_space(seeded.sweep)["seed"] == tune.grid_search([0, 1, 2])


def test_a_trial_config_offsets_the_seed_and_leaves_the_base_alone():
    base = trial_bases(load_sweep_config(["sweep=design_space", "train.seed=5"]), [])[0]
    before = copy.deepcopy(base)
    tree = apply_params(base, {"model.num_experts": 6, "model.top_k": 4, "seed": 2, "group": "g003"})
    assert tree["train"]["seed"] == 7 and tree["model"]["num_experts"] == 6 and tree["model"]["top_k"] == 4
    assert "group" not in tree and "seed" not in tree
    assert apply_params(base, {})["train"]["seed"] == 5  # no seed index: the first seed
    assert base == before  # nested settings of the shared base are not touched


@pytest.fixture(scope="module")
def design_space():
    job = load_sweep_config(["sweep=design_space"])
    return job, trial_bases(job, [])[0]


@pytest.mark.parametrize("m", [2, 3, 4, 6])
def test_top_k_fraction_covers_exactly_1_to_m(m, design_space):
    job, base = design_space
    points = {}
    for u in [0.0, 1e-9, *[i / 97 for i in range(1, 98)], 1.0]:
        point = resolve_point(
            job.sweep.space,
            {
                "model.num_experts": m,
                "model.top_k" + FRACTION_SUFFIX: u,
                "model.lambda_dp": 0.5,
                "model.prior_alpha": 2.0,
            },
            base,
        )
        points[point["model.top_k"]] = point
    assert set(points) == set(range(1, m + 1))
    for k, point in points.items():  # each reaches the trial's config as it is
        cfg = config_from_dict(apply_params(base, point))
        assert (cfg.model.num_experts, cfg.model.top_k, cfg.model.lambda_dp, cfg.model.prior_alpha) == (m, k, 0.5, 2.0)


@pytest.mark.parametrize("m", [2, 3, 4, 6])
def test_uniform_fraction_gives_uniform_k(m, design_space):
    # u ~ U(0, 1) as Optuna samples it; every k in 1..M must come out with probability 1/M.
    job, base = design_space
    rng = np.random.default_rng(m)
    n = 6000
    counts = np.zeros(m + 1)
    for u in rng.uniform(0.0, 1.0, n):
        point = resolve_point(
            job.sweep.space,
            {
                "model.num_experts": m,
                "model.top_k" + FRACTION_SUFFIX: u,
                "model.lambda_dp": 1.0,
                "model.prior_alpha": 4.0,
            },
            base,
        )
        counts[point["model.top_k"]] += 1
    assert counts[0] == 0
    assert stats.chisquare(counts[1:]).pvalue > 1e-3, counts  # a k made rare (e.g. round instead of ceil) fails


def test_given_points_round_trip_through_the_fraction(design_space):
    job, base = design_space
    for m in (2, 3, 4, 6):
        for k in range(1, m + 1):
            point = {"model.num_experts": m, "model.top_k": k, "model.lambda_dp": 1.0, "model.prior_alpha": 4.0}
            assert resolve_point(job.sweep.space, to_sampled(job.sweep.space, point, base), base) == point
    # A fraction of a setting that is not searched takes it from the base config (M = 5 here).
    fixed = load_sweep_config(
        ["sweep.space=[{key: model.top_k, fraction_of: model.num_experts}]", "model.num_experts=5"]
    )
    fixed_base = trial_bases(fixed, [])[0]
    for k in range(1, 6):
        sampled = to_sampled(fixed.sweep.space, {"model.top_k": k}, fixed_base)
        assert sampled == {"model.top_k" + FRACTION_SUFFIX: pytest.approx((k - 0.5) / 5)}
        assert resolve_point(fixed.sweep.space, sampled, fixed_base) == {"model.top_k": k}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["sweep=nope"], "sweep/nope"),
        (["sweep.space=[]"], "sweep.space is empty"),
        (["sweep.metric=ssim"], "sweep.metric='ssim' is never reported"),
        (["sweep.mode=max"], "set sweep.mode=min"),
        (["sweep.search=bayes"], "sweep.search='bayes'"),
        (["sweep.num_trials=0"], "sweep.num_trials=0"),
        (["sweep.eval_every=1200"], "sweep.eval_every=1200"),
        (["sweep.ray.num_workers=0"], "sweep.ray.num_workers=0"),
        (["sweep.ray.trainable_cpus=0"], "sweep.ray.trainable_cpus=0"),
        (["sweep.ray.num_workers=3"], "data.batch_size=64 is not divisible by sweep.ray.num_workers=3"),
        (["sweep=table1", "sweep.grid=[]"], "sweep.grid is empty"),
        (
            ["sweep=table1", "sweep.grid=[['model.top_k=5']]"],
            "sweep.grid[0] ['model.top_k=5']: model.top_k=5 must be <=",
        ),
        (["sweep=table1", "sweep.grid=[['model=resnet']]"], "sweep.grid[0]"),
        (["sweep.space=[{key: model.nope, choice: [1]}]"], "model.nope is not a setting"),
        (["sweep.space=[{key: model.top_k, choice: []}]"], "choice for model.top_k is empty"),
        (["sweep.space=[{key: model.top_k}]"], "set exactly one of"),
        (["sweep.space=[{key: model.lambda_dp, loguniform: [0, 1]}]"], "needs low > 0"),
        (["sweep.space=[{key: model.lambda_dp, uniform: [2, 1]}]"], "low <= high"),
        (["sweep.space=[{key: model.top_k, choice: [1]}, {key: model.top_k, choice: [2]}]"], "more than once"),
        (["sweep.space=[{key: model.top_k, choice: [1, 2, 4]}]"], "model.top_k=4 must be <= model.num_experts=3"),
        # Each key alone is valid; the combination M=2, k=3 is not.
        (
            ["sweep.space=[{key: model.num_experts, choice: [2, 3]}, {key: model.top_k, choice: [1, 3]}]"],
            "sweep.space can reach an invalid config at model.num_experts=2, model.top_k=3",
        ),
        (["sweep.space=[{key: model.top_k, fraction_of: model.top_k}]"], "model.top_k is a fraction of itself"),
        (
            [
                "sweep.space=[{key: model.num_experts, fraction_of: model.top_k}, {key: model.top_k, fraction_of: "
                "model.num_experts}]"
            ],
            "itself a fraction",
        ),
        (
            [
                "sweep.space=[{key: model.num_experts, uniform: [2, 6]}, {key: model.top_k, fraction_of: "
                "model.num_experts}]"
            ],
            "not searched over integers",
        ),
        (["sweep.space=[{key: model.top_k, fraction_of: model.lambda_dp}]"], "not an integer setting"),
        (["sweep.points_to_evaluate=[{model.num_experts: 3}]"], "must set exactly the searched keys"),
        (
            [
                "sweep.points_to_evaluate=[{model.num_experts: 5, model.top_k: 2, model.lambda_dp: 1.0, "
                "model.prior_alpha: 4.0}]"
            ],
            "model.num_experts=5 is outside",
        ),
        (
            [
                "sweep.points_to_evaluate=[{model.num_experts: 2, model.top_k: 3, model.lambda_dp: 1.0, "
                "model.prior_alpha: 4.0}]"
            ],
            "model.top_k=3 must be <= model.num_experts=2",
        ),
        (["sweep.objectives=[kid_x1e3, gflops]"], "sweep.asha=false"),
        (["sweep.objectives=[kid_x1e3]", "sweep.asha=false"], "two or more different metrics"),
        (["sweep.objectives=[gflops, kid_x1e3]", "sweep.asha=false"], "set sweep.metric=gflops"),
        (["sweep.objectives=[kid_x1e3, ssim]", "sweep.asha=false"], "'ssim' is never reported"),
        (["sweep.seeds=0"], "sweep.seeds=0 must be >= 1"),
        (["sweep.baseline=resnet"], "sweep.baseline=resnet: invalid override"),
        (["sweep=table1", "sweep.baseline=dit"], "add the baseline as a grid row (model=dit)"),
        (["sweep.race=-1"], "sweep.race=-1 must be >= 0"),
        (["sweep.race=2", "sweep.race_seeds=0"], "sweep.race_seeds=0 must be >= 1"),
        (["sweep.race=1", "sweep.baseline=none"], "races one configuration against nothing"),
        (["sweep.race=2", "sweep.objectives=[kid_x1e3, gflops]", "sweep.asha=false"], "racing separates one metric"),
        (["sweep.tpe_startup=0"], "sweep.tpe_startup=0"),
        (["sweep=table1", "sweep.num_trials=3"], "repeat rows with sweep.seeds"),
        (["sweep=table1", "--extend", "2"], "a grid runs a fixed set of rows"),
        (["--extend", "2"], "no finished design_space sweep"),
        (["--extend", "0"], "--extend 0"),
        (["--resume", "--extend", "2"], "--resume and --extend together"),
        (["sweep.space=[{key: model.lambda_dp, uniform: [-1, 1]}]"], "model.lambda_dp=-1"),
        (["model.top_k=5"], "model.top_k=5 must be <="),
    ],
)
def test_bad_sweep_input_is_one_line_before_any_work(overrides, message, capsys, tmp_path):
    code = main(["sweep", *overrides, f"sweep.root={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "mlflow.db").exists()  # nothing was started


def test_more_workers_than_the_cluster_has_is_refused():
    r = RayConfig(num_workers=4, cpus_per_worker=1.0)
    assert trial_resources(r) == {"CPU": 4.05}
    with pytest.raises(ConfigError, match=r"needs 4.05 CPU per trial but the cluster has 3"):
        check_resources(r, {"CPU": 3.0})
    gpu = RayConfig(num_workers=2, use_gpu=True, cpus_per_worker=1.0, gpus_per_worker=1.0)
    with pytest.raises(ConfigError, match=r"needs 2 GPU per trial but the cluster has 0"):
        check_resources(gpu, {"CPU": 16.0})
    check_resources(RayConfig(num_workers=2, cpus_per_worker=1.0), {"CPU": 3.0})  # 2.05 fits


def test_a_one_worker_trial_on_this_machine_trains_inline():
    assert trains_inline(RayConfig())  # the default: local instance, one worker
    assert trains_inline(RayConfig(address="127.0.0.1:6379"))  # a head bound to loopback: every node is here
    assert not trains_inline(RayConfig(num_workers=2))  # DDP: a Train job
    assert not trains_inline(RayConfig(address="10.0.0.5:6379"))  # a cluster: workers go to its GPU nodes
    assert not trains_inline(RayConfig(inline=False))


def test_resume_without_an_interrupted_sweep_and_export_without_a_sweep(tmp_path, capsys):
    assert main(["sweep", "--resume", f"sweep.root={tmp_path}"]) == 2
    assert "no interrupted design_space sweep" in capsys.readouterr().err
    assert main(["export", "sweep=design_space", f"sweep.root={tmp_path}", f"out={tmp_path / 'x'}"]) == 2
    assert f"no MLflow store at {tmp_path.resolve()}/mlflow.db" in capsys.readouterr().err
    assert main(["export", "sweep=design_space", "top=two"]) == 2
    assert "top=two is not a whole number" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, store, message",
    [
        (["report", "sweep=design_space"], False, "no MLflow store at"),
        (["ui"], False, "no MLflow store at"),
        (["ui", "port=http"], True, "port=http is not a TCP port"),
        (["ui", "port=70000"], True, "port=70000 is not a TCP port"),
        (["ui", "sweep.tracking_uri=http://127.0.0.1:1"], False, "is an MLflow server already: open it in a browser"),
        # A database nothing answers at: one line, its password masked.
        (
            ["ui", "sweep.tracking_uri=postgresql://u:pw1234@127.0.0.1:1/db"],
            False,
            "sweep.tracking_uri=postgresql://***@127.0.0.1:1/db: cannot open the MLflow database",
        ),
        (["optuna-ui", "sweep=design_space"], False, "no design_space sweep under"),
        (["optuna-ui", "sweep=design_space", "sweep.id=nope"], False, "sweep.id=nope: no such sweep under"),
    ],
)
def test_dashboard_commands_refuse_bad_input_in_one_line(tmp_path, capsys, argv, store, message):
    if store:  # a store exists: only the port is wrong
        (tmp_path / "mlflow.db").touch()
    assert main([*argv, f"sweep.root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "pw1234" not in err, err
    assert not (tmp_path / "sweeps").exists()


def test_optuna_ui_refuses_a_grid_sweep_that_has_no_study(tmp_path, capsys):
    from switchsweep.platform.sweep_record import SweepRecord

    folder = tmp_path / "sweeps" / "table1" / "table1-1"
    folder.mkdir(parents=True)
    SweepRecord(folder, sweep_id="table1-1", name="table1", created=1.0, status="finished").save()
    assert main(["optuna-ui", "sweep=table1", f"sweep.root={tmp_path}"]) == 2
    assert "table1-1 has no Optuna study" in capsys.readouterr().err


def test_train_runs_a_written_config_file_and_refuses_group_overrides(tmp_path, capsys):
    job = load_sweep_config(["sweep=design_space"])
    path = tmp_path / "cfg.yaml"
    from omegaconf import OmegaConf

    base = trial_bases(job, [])[0]
    base["model"]["top_k"] = 1
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(base)))
    assert main(["train", "--config", str(path), "--cfg"]) == 0
    assert "top_k: 1" in capsys.readouterr().out
    assert main(["train", "--config", str(path), "model=dit"]) == 2
    assert "--config fixes the config groups" in capsys.readouterr().err
    path.write_text("model: [unclosed")
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML at line 1" in err and "unclosed" not in err  # where, never what the file holds


def test_unset_worker_cpus_share_the_local_cores(monkeypatch):
    from switchsweep.sweeps import runtime

    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 8)
    assert runtime.resolve_worker_cpus(RayConfig(num_workers=2), max_concurrent=2).cpus_per_worker == 2.0
    assert runtime.resolve_worker_cpus(RayConfig(num_workers=4), max_concurrent=4).cpus_per_worker == 1.0
    assert runtime.resolve_worker_cpus(RayConfig(address="auto"), max_concurrent=1).cpus_per_worker == 1.0
    assert runtime.resolve_worker_cpus(RayConfig(cpus_per_worker=3.0), max_concurrent=8).cpus_per_worker == 3.0


def test_resume_and_extend_pick_the_latest_sweep_in_the_right_state(tmp_path):
    from switchsweep.platform.sweep_record import SweepRecord
    from switchsweep.sweeps.locate import find_sweep

    root = tmp_path / "sweeps" / "design_space"
    made = [
        ("old-unfinished", 1.0, "interrupted"),
        ("newest-finished", 4.0, "finished"),
        ("mid-unfinished", 3.0, "running"),
        ("old-finished", 2.0, "finished"),
    ]
    for sweep_id, created, status in made:
        (root / sweep_id).mkdir(parents=True)
        SweepRecord(root / sweep_id, sweep_id=sweep_id, created=created, status=status).save()
    job = load_sweep_config([f"sweep.root={tmp_path}"])
    assert find_sweep(job, finished=False).name == "mid-unfinished"  # newest of the unfinished, by creation time
    assert find_sweep(job, finished=True).name == "newest-finished"
    assert find_sweep(job).name == "newest-finished"  # any status: the newest of all (report, optuna-ui)
    chosen = load_sweep_config([f"sweep.root={tmp_path}", "sweep.id=old-unfinished"])
    assert find_sweep(chosen, finished=False).name == "old-unfinished"
    with pytest.raises(ConfigError, match="sweep old-unfinished is interrupted: resume it with --resume first"):
        find_sweep(chosen, finished=True)


def test_a_resume_that_changes_the_training_config_is_refused_in_one_line(tmp_path, capsys):
    from switchsweep.platform.sweep_record import SweepRecord

    folder = tmp_path / "sweeps" / "design_space" / "design_space-1"
    folder.mkdir(parents=True)
    kept = ["sweep.num_trials=2", "sweep.eval_every=4", "train.steps=8"]
    SweepRecord(folder, sweep_id="design_space-1", name="design_space", overrides=kept, status="interrupted").save()
    assert main(["sweep", "--resume", *kept, "train.steps=12", f"sweep.root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "train.steps=12: a resumed or extended sweep keeps its search and training config" in err, err
    assert err.count("\n") == 1 and SweepRecord.load(folder).status == "interrupted"


def test_the_default_sweep_s_only_rung_is_past_the_phase_where_kid_rises():
    """benchmarks/learning.py: at the digits defaults the models draw digits by step 500 and KID falls from
    then on; an evaluation every 250 steps with ASHA's first rung at the second puts its one rung there."""
    from switchsweep.sweeps.tuner import sweep_rung_steps

    job = load_sweep_config(["sweep=design_space"])
    assert (job.train.steps, job.sweep.eval_every, job.sweep.grace_period) == (1000, 250, 2)
    assert sweep_rung_steps(job) == [500]
