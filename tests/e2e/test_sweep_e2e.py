"""End to end on the session's Ray head (conftest): one scenario (a fixture) runs a 2-configuration
sweep through the CLI, interrupts, resumes, extends, exports and re-trains it; each test checks one
part of what it left, in MLflow, Optuna, the record, the console, the report and the UIs."""

import csv
import json
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from PIL import Image
from scipy.optimize import linear_sum_assignment

from switchsweep.models.routing import prior_mask
from switchsweep.platform.checkpoint import load_checkpoint
from switchsweep.platform.tracking import default_tracking_uri
from tests.support.netstat import LOOPBACK, commands, listening
from tests.support.sweep_harness import BIN, ENV, TINY_EVAL, free_port, record


def _sweep_cmd(root: Path, cache: Path, address: str, *extra: str) -> list[str]:
    return [
        str(BIN / "switchsweep"),
        "sweep",
        "sweep=design_space",
        f"sweep.root={root}",
        f"sweep.ray.address={address}",
        "sweep.num_trials=2",
        "sweep.baseline=none",
        "sweep.eval_every=4",
        "sweep.grace_period=1",  # a rung at the first evaluation (the default's first is at the second)
        "train.steps=8",
        "train.log_every=2",
        *TINY_EVAL,
        f"eval.cache_dir={cache}",
        # Two given configurations, and ASHA on GFLOPs (deterministic, unlike KID after 4 steps): the second,
        # M=6 k=3, costs more than the first at the first evaluation, so ASHA stops it there.
        "sweep.metric=gflops",
        "sweep.mode=min",
        "sweep.points_to_evaluate=[{model.num_experts: 3, model.top_k: 1, model.lambda_dp: 1.0, model.prior_alpha: "
        "4.0},"
        " {model.num_experts: 6, model.top_k: 3, model.lambda_dp: 0.5, model.prior_alpha: 2.0}]",
        *extra,
    ]


@dataclass
class Scenario:
    """What the end-to-end scenario did, step by step, for the focused tests below to check."""

    root: Path
    tmp: Path
    first_trial: str  # the trial over when the first driver was interrupted
    first_summary: dict  # its record entry then
    interrupted: dict  # the record after the interrupt
    resumed: subprocess.CompletedProcess
    after_resume: dict  # the record then
    runs_after_resume: list  # the MLflow runs then
    extended: subprocess.CompletedProcess  # --extend 3 with a budget that affords one
    budget: float  # that budget, CPU-hours
    exported: subprocess.CompletedProcess
    export_dir: Path
    trained: subprocess.CompletedProcess  # `switchsweep train --config` of the best exported file


def _run(cmd: list[str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)


def _ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def scenario(ray_head, digits_net, tmp_path_factory) -> Scenario:
    """A 2-configuration sweep through the CLI on the session's Ray head: interrupted (Ctrl+C) once its
    first trial is over, resumed, extended by one configuration (of three asked for, within a budget), exported,
    and its best exported config trained as it is. Shared with the browser tests that look at what it
    produced."""
    tmp = tmp_path_factory.mktemp("e2e")
    root, cache = tmp / "runs", digits_net[2]
    log = open(tmp / "first.log", "w")
    first = subprocess.Popen(_sweep_cmd(root, cache, ray_head), stdout=log, stderr=subprocess.STDOUT, env=ENV)
    deadline = time.time() + 400
    done: dict = {}
    while time.time() < deadline and not done and first.poll() is None:
        time.sleep(1)
        done = {t: e for t, e in record(root).get("trials", {}).items() if e["status"] != "running"}
    assert done, (tmp / "first.log").read_text()[-3000:]
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=180) == 130, (tmp / "first.log").read_text()[-3000:]
    ((first_trial, first_summary),) = done.items()
    interrupted = record(root)
    resumed = _ok(_run(_sweep_cmd(root, cache, ray_head, "--resume"), 400))
    after_resume = record(root)
    client = MlflowClient(default_tracking_uri(root))
    runs_after_resume = client.search_runs([client.get_experiment_by_name("design_space").experiment_id])
    # A budget for one more trial like the costliest so far but not two (one CPU a trial): the extension
    # asks for three configurations and gets one.
    walls = [e["wall_s"] for e in after_resume["trials"].values()]
    budget = (sum(walls) + 1.2 * max(walls)) / 3600
    extend = ["--extend", "3", "sweep.ray.cpus_per_worker=1", f"sweep.budget={budget}"]
    extended = _ok(_run(_sweep_cmd(root, cache, ray_head, *extend), 400))
    out = tmp / "export"
    export = [str(BIN / "switchsweep"), "export", "sweep=design_space", "top=2", f"out={out}", f"sweep.root={root}"]
    exported = _ok(_run(export, 120))
    best = sorted(out.glob("rank*.yaml"))[0]
    trained = _ok(_run([str(BIN / "switchsweep"), "train", "--config", str(best), "train.progress=false"], 300))
    return Scenario(
        root,
        tmp,
        first_trial,
        first_summary,
        interrupted,
        resumed,
        after_resume,
        runs_after_resume,
        extended,
        budget,
        exported,
        out,
        trained,
    )


def _children(runs: list) -> tuple:
    parents = [r for r in runs if r.data.tags.get("switchsweep.role") == "sweep"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], children


def test_an_interrupted_sweep_resumes_without_training_its_finished_trial_again(scenario):
    assert scenario.interrupted["status"] == "interrupted"
    assert "2 configurations x 1 seed(s), best first by gflops" in scenario.resumed.stdout
    assert scenario.after_resume["trials"][scenario.first_trial] == scenario.first_summary  # not rerun
    assert scenario.after_resume["status"] == "finished"
    # The record times each phase of an inline trial, in order (a Train job's: test_inline_e2e.py).
    phases = ["t_trial_start", "t_fit_start", "t_worker_start", "t_loop_start", "t_report", "t_trial_end"]
    times = [scenario.first_summary[k] for k in phases]
    assert times == sorted(times), dict(zip(phases, times))


def test_the_console_shows_the_searched_settings_and_the_link_to_the_runs(scenario):
    stdout = scenario.resumed.stdout
    # Tune's table: the searched settings and the numbers a user compares; the record's phase times stay out.
    header = next(line for line in stdout.splitlines() if line.startswith("| Trial name"))
    assert [c.strip() for c in header.split("|")[-4:-1]] == ["gflops", "loss", "step"], header
    assert "t_fit_start" not in stdout and "phases" not in stdout
    assert re.search(
        r"open it: +switchsweep ui sweep\.root=\S+ +then http://127\.0\.0\.1:5000/#/experiments/\d+/runs"
        r"\?workflowType=machine_learning\n",
        stdout,
    ), stdout[-2000:]
    assert "report:      " in stdout and (next(scenario.root.glob("sweeps/design_space/*")) / "report.html").is_file()


def test_mlflow_holds_one_parent_and_one_child_per_trial_under_design_names(scenario):
    client = MlflowClient(default_tracking_uri(scenario.root))
    exp = client.get_experiment_by_name("design_space")
    parent, children = _children(scenario.runs_after_resume)
    assert parent.info.status == "FINISHED" and len(children) == 2 and len(scenario.runs_after_resume) == 3
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's training-runs view
    assert {c.info.run_name for c in children} == {"switch_dit M3 k1 ldp1.0 a4 s0", "switch_dit M6 k3 ldp0.5 a2 s0"}
    trial_ids = {c.data.tags["switchsweep.trial_id"] for c in children}
    assert scenario.first_trial in trial_ids and parent.data.tags["switchsweep.best_trial"] in trial_ids
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "ranking.csv",
        "ranking.md",
        "search_space.json",
        "report.html",
    }
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert finished and all("checkpoint" in {a.path for a in client.list_artifacts(c.info.run_id)} for c in finished)


def test_each_evaluation_logs_metrics_routing_samples_and_noise_once(scenario, tmp_path):
    client = MlflowClient(default_tracking_uri(scenario.root))
    _, children = _children(scenario.runs_after_resume)
    for child in children:
        run_id = child.info.run_id
        kid = client.get_metric_history(run_id, "kid_x1e3")
        steps = [m.step for m in kid]
        assert steps and steps == sorted(set(steps)) and set(steps) <= {4, 8}  # once per evaluation, never twice
        assert all(np.isfinite(m.value) for m in kid)
        assert {"loss", "loss_noise", "loss_prior", "steps_per_sec"} <= set(child.data.metrics)
        params = child.data.params
        m, k, depth = int(params["model.num_experts"]), int(params["model.top_k"]), 6
        assert 1 <= k <= m and params["train.steps"] == "8" and params["data.batch_size"] == "16"
        step_dir = f"routing/step_{steps[0]:07d}"
        got = {Path(a.path).name for a in client.list_artifacts(run_id, step_dir)}
        assert got == {"w_gate.npy", "w_prior_matched.npy", "permutation.npy", "routing.png"}
        local = Path(client.download_artifacts(run_id, step_dir, str(tmp_path / run_id)))
        w_gate = np.load(local / "w_gate.npy")
        perm = np.load(local / "permutation.npy")
        matched = np.load(local / "w_prior_matched.npy")
        assert w_gate.shape == (1000, depth * m) and (w_gate.sum(1) == depth * k).all()  # k experts on per block
        assert sorted(perm.tolist()) == list(range(depth * m))
        prior = prior_mask(depth, m, k, alpha=float(params["model.prior_alpha"]), num_timesteps=1000).numpy()
        # The logged matched prior is the trial's own prior (its alpha, M, k), optimally assigned to w_gate.
        cost = np.abs(w_gate[:, :, None] - prior[:, None, :]).sum(0)
        rows, cols = linear_sum_assignment(cost)
        assert np.abs(w_gate - matched).sum() == cost[rows, cols].sum()
        assert sorted(map(tuple, matched.T.tolist())) == sorted(map(tuple, prior.T.tolist()))
        # Routing summaries as metrics, at each evaluation: JSD to the prior and every expert's usage,
        # which sums to k per block (k of M experts are on at every timestep).
        jsd = client.get_metric_history(run_id, "routing_jsd")
        assert [j.step for j in jsd] == steps and all(0 < j.value < np.log(2) for j in jsd)
        usage = np.array([[child.data.metrics[f"usage/block{b}/expert{e}"] for e in range(m)] for b in range(depth)])
        np.testing.assert_allclose(usage.sum(1), k, rtol=1e-6)
        last_dir = Path(
            client.download_artifacts(run_id, f"routing/step_{steps[-1]:07d}", str(tmp_path / run_id / "last"))
        )
        np.testing.assert_allclose(usage, np.load(last_dir / "w_gate.npy").reshape(1000, depth, m).mean(0), rtol=1e-6)
        # Every sample grid logged is a full grid (10 classes x per_class=1 of 8x8 digits, scaled 4x, padded) and not
        # blank.
        grids = [
            a.path for a in client.list_artifacts(run_id, "images") if "samples" in a.path and a.path.endswith(".png")
        ]
        assert len(grids) == len(steps)
        for g in grids:
            with Image.open(client.download_artifacts(run_id, g, str(tmp_path / run_id / "img"))) as im:
                pixels = np.asarray(im.convert("L"), dtype=float)
            assert pixels.shape == ((1 * 9 + 1) * 4, (10 * 9 + 1) * 4) and pixels.var() > 0
        assert child.info.status in ("FINISHED", "KILLED")  # KILLED: stopped early by ASHA
        assert np.isfinite(child.data.metrics["gflops"])
        # Each evaluation's noise values, which a paired comparison with another trial reads: KID's bootstrap
        # replicates and one FID influence per generated sample (eval.num_samples=20).
        assert {a.path for a in client.list_artifacts(run_id, "eval_noise")} == {
            f"eval_noise/step_{s:07d}.json" for s in steps
        }
        logged = json.loads(
            Path(
                client.download_artifacts(
                    run_id, f"eval_noise/step_{steps[-1]:07d}.json", str(tmp_path / f"{run_id}-noise")
                )
            ).read_text()
        )
        assert (len(logged["kid_x1e3"]), len(logged["fid"])) == (50, 20)


def test_optuna_is_told_each_trials_end_and_asha_stopped_the_costlier_one(scenario):
    client = MlflowClient(default_tracking_uri(scenario.root))
    _, children = _children(client.search_runs([client.get_experiment_by_name("design_space").experiment_id]))
    sweep_dir = next(scenario.root.glob("sweeps/design_space/*"))
    # Optuna was told each trial's truth: finished -> COMPLETE with its value, stopped early -> PRUNED.
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(sweep_dir / "optuna.journal"))
    )
    study = optuna.load_study(study_name=sweep_dir.name, storage=storage)
    by_group = {c.data.tags["switchsweep.group"]: c for c in children}
    assert sorted(by_group) == ["g000", "g001", "g002"]  # the two given, and the one --extend added
    design = {
        g: tuple(by_group[g].data.params[f"model.{k}"] for k in ("num_experts", "top_k", "lambda_dp", "prior_alpha"))
        for g in ("g000", "g001")
    }
    assert design == {"g000": ("3", "1", "1.0", "4.0"), "g001": ("6", "3", "0.5", "2.0")}
    # The first trained all its steps; ASHA stopped the second at its first evaluation (also after the resume).
    stopped = by_group["g001"]
    assert by_group["g000"].info.status == "FINISHED"
    assert stopped.info.status == "KILLED" and stopped.data.tags.get("switchsweep.stopped_early") == "true"
    assert (
        stopped.data.metrics["step"] == 4 and stopped.data.metrics["gflops"] > by_group["g000"].data.metrics["gflops"]
    )
    assert study.trials[1].intermediate_values == {1: pytest.approx(stopped.data.metrics["gflops"])}
    for t in study.trials:
        child = by_group[f"g{t.number:03d}"]
        want = TrialState.COMPLETE if child.info.status == "FINISHED" else TrialState.PRUNED
        assert t.state == want, (t, child.info.status)
        assert t.user_attrs["model.top_k"] == int(child.data.params["model.top_k"])
        if want == TrialState.COMPLETE:
            assert t.value == pytest.approx(child.data.metrics["gflops"])


def test_extend_adds_configurations_to_the_same_parent_run_and_study(scenario):
    assert "3 configurations x 1 seed(s)" in scenario.extended.stdout
    client = MlflowClient(default_tracking_uri(scenario.root))
    runs = client.search_runs([client.get_experiment_by_name("design_space").experiment_id])
    parent, children = _children(runs)
    assert len(runs) == 4 and len(children) == 3
    assert parent.info.run_id == _children(scenario.runs_after_resume)[0].info.run_id
    sweep_dir = next(scenario.root.glob("sweeps/design_space/*"))
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(sweep_dir / "optuna.journal"))
    )
    assert len(optuna.load_study(study_name=sweep_dir.name, storage=storage).trials) == 3
    assert record(scenario.root)["status"] == "finished"


def test_a_budget_stops_the_extension_once_the_next_trial_could_pass_it(scenario):
    account = record(scenario.root)["budget"]
    walls = [e["wall_s"] for e in record(scenario.root)["trials"].values()]
    assert account["limit"] == pytest.approx(scenario.budget) and account["unit"] == "CPU-hours"
    assert account["reached"] is True and account["skipped"] == 2  # 2 + 3 configurations, 3 started
    assert account["spent"] == pytest.approx(sum(walls) / 3600, rel=1e-4)  # one CPU a trial
    line = r"budget: +spent [\d.e-]+ of [\d.e-]+ CPU-hours; 2 trial\(s\) not started"
    assert re.search(line, scenario.extended.stdout), scenario.extended.stdout[-2000:]
    assert "interrupted" not in scenario.extended.stderr


def test_export_writes_the_best_configs_which_train_as_they_are(scenario):
    client = MlflowClient(default_tracking_uri(scenario.root))
    parent, children = _children(client.search_runs([client.get_experiment_by_name("design_space").experiment_id]))
    out = scenario.export_dir
    files = sorted(out.glob("rank*.yaml"))
    assert len(files) == 2 and (out / "ranking.md").is_file()
    with open(out / "ranking.csv", newline="") as fh:
        ranking = list(csv.DictReader(fh))
    # Independently of the ranking code: finished trials first by lowest GFLOPs, the stopped one last.
    finished = sorted(
        (c for c in children if c.info.status == "FINISHED"),
        key=lambda c: (c.data.metrics["gflops"], c.data.tags["switchsweep.group"]),
    )
    stopped = next(c for c in children if c.info.status == "KILLED")
    assert [r["trial_id"] for r in ranking] == [c.data.tags["switchsweep.trial_id"] for c in finished] + [
        stopped.data.tags["switchsweep.trial_id"]
    ]
    assert ranking[-1]["status"] == "KILLED" and parent.data.tags["switchsweep.best_trial"] == ranking[0]["trial_id"]
    assert ranking[0]["variant"].startswith("switch_dit(M=") and float(ranking[0]["params_M"]) > 0
    assert "sqlite" not in files[0].read_text() and "mlflow" not in files[0].read_text()
    ckpt = load_checkpoint(out / files[0].stem / "ckpt.pt")
    best = next(c for c in children if c.data.tags["switchsweep.trial_id"] == files[0].stem.split("-", 1)[1])
    assert ckpt["step"] == 8
    for key in ("num_experts", "top_k", "lambda_dp", "prior_alpha"):
        assert str(ckpt["config"]["model"][key]) == best.data.params[f"model.{key}"]


def _sweep_report(scenario: Scenario) -> Path:
    reports = list(scenario.root.glob("sweeps/design_space/*/report.html"))
    assert reports, "the end-to-end sweep above wrote no report: see its failure"
    return reports[0]


def test_report_opens_in_a_browser_with_every_plot_drawn(scenario, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(_sweep_report(scenario).as_uri())
    page.wait_for_function("() => document.querySelectorAll('.plotly-graph-div .main-svg').length > 0")
    plots = page.evaluate("""() => [...document.querySelectorAll('.plotly-graph-div')].map(d => ({
        id: d.id, drawn: !!d.querySelector('.main-svg'),
        points: d._fullData.reduce(
            (n, t) => n + ((t.x || t.z || (t.dimensions || [{}])[0].values || []).length || 0), 0),
        slider: (d.layout.sliders || []).length > 0}))""")
    assert errors == []
    # Pareto, learning curves, JSD, one routing figure per Switch-DiT trial (3), importances need 3 finished: none.
    assert len(plots) >= 6 and all(p["drawn"] and p["points"] > 0 for p in plots), plots
    routing = [p["id"] for p in plots if p["slider"]]
    assert len(routing) == 3
    plot = page.locator(f"#{routing[0]}")
    plot.scroll_into_view_if_needed()
    before = plot.screenshot(path=str(tmp_path / "routing-last.png"))
    shown = f"() => document.getElementById('{routing[0]}')._fullData.filter(t => t.visible === true).map(t => t.name)"
    assert page.evaluate(shown) == ["step 8", "step 8"]  # opens on the last evaluation
    rail = page.locator(f"#{routing[0]} .slider-rail-touch-rect").bounding_box()
    page.mouse.click(rail["x"] + 2, rail["y"] + rail["height"] / 2)  # the slider's first step
    first = ["step 4", "step 4"]
    as_js = json.dumps(json.dumps(first, separators=(",", ":")))  # JSON.stringify's spacing, as a JS string
    page.wait_for_function(f"() => JSON.stringify(({shown})()) === {as_js}", timeout=15000)
    assert page.evaluate(shown) == first
    assert plot.screenshot(path=str(tmp_path / "routing-first.png")) != before
    assert "Sweep design_space-" in page.inner_text("h1")
    # Last: a full-page screenshot resizes the viewport, which redraws the responsive plots.
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)


def test_mlflow_ui_shows_the_training_runs_under_their_design_names(scenario, browser, tmp_path):
    sweep_root = scenario.root
    client = MlflowClient(default_tracking_uri(sweep_root))
    exp = client.get_experiment_by_name("design_space")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("switchsweep.role") == "sweep")
    child = next(r for r in runs if r.info.status == "FINISHED" and r.data.tags.get("switchsweep.role") == "trial")
    port = free_port()
    # Its own process group: stopping it must stop the MLflow server processes it starts too.
    ui = subprocess.Popen(
        [str(BIN / "switchsweep"), "ui", f"sweep.root={sweep_root}", f"port={port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
        start_new_session=True,
    )
    try:
        banner = ui.stdout.readline()
        link = f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
        assert f"sweep=design_space's runs at {link} " in banner, banner
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(1)
        served = listening(ui.pid)  # switchsweep ui, the mlflow server and its workers
        assert ("127.0.0.1", port) in {(a, p) for a, p, _ in served} and {a for a, _, _ in served} <= set(LOOPBACK), (
            served
        )
        assert [c for c in commands(ui.pid) if "mlflow" in c] and not [c for c in commands(ui.pid) if "huey" in c]
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(link)  # the printed link opens the Runs table, not MLflow's GenAI overview
        page.wait_for_selector(f"text={parent.info.run_name}", timeout=60_000)
        assert page.locator("h2:has-text('Runs')").count() > 0 and page.locator("text=Run Name").count() > 0
        page.click("[data-component-id$='runnamecellrenderer.tsx_46']")  # expand the sweep's parent run
        for r in runs:
            if r.info.run_id != parent.info.run_id:
                page.wait_for_selector(f"text={r.info.run_name}", timeout=20_000)
        page.screenshot(path=str(tmp_path / "mlflow-runs.png"))
        # The last sample grid of a finished trial, as the UI's artifact viewer shows it.
        grid = sorted(
            a.path
            for a in client.list_artifacts(child.info.run_id, "images")
            if "samples" in a.path and a.path.endswith(".png")
        )[-1]
        page.goto(
            f"{base}/#/experiments/{exp.experiment_id}/runs/{child.info.run_id}/artifacts/{grid}?workflowType=machine_learning"
        )
        page.wait_for_function(
            "() => [...document.images].some(i => i.src.startsWith('blob:') && i.naturalWidth > 0)", timeout=30_000
        )
        page.screenshot(path=str(tmp_path / "mlflow-samples.png"))
        stats = page.evaluate("""() => {
            const img = [...document.images].find(i => i.src.startsWith('blob:'));
            const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
            const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
            const d = ctx.getImageData(0, 0, c.width, c.height).data;
            let s = 0, s2 = 0, n = d.length / 4;
            for (let i = 0; i < d.length; i += 4) { s += d[i]; s2 += d[i] * d[i]; }
            return {w: c.width, h: c.height, variance: s2 / n - (s / n) ** 2};
        }""")
        assert (stats["w"], stats["h"]) == ((10 * 9 + 1) * 4, (1 * 9 + 1) * 4) and stats["variance"] > 0, stats
        assert errors == []
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)


def test_optuna_ui_serves_the_sweeps_study_on_loopback(scenario):
    sweep_root = scenario.root
    import urllib.request

    sweep_id = _sweep_report(scenario).parent.name
    port = free_port()
    ui = subprocess.Popen(
        [str(BIN / "switchsweep"), "optuna-ui", "sweep=design_space", f"sweep.root={sweep_root}", f"port={port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    try:
        deadline, body = time.time() + 90, None
        while time.time() < deadline and body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    body = json.loads(r.read())
            except OSError:
                assert ui.poll() is None, "optuna-ui exited"
                time.sleep(1)
        assert body is not None and [s["study_name"] for s in body["study_summaries"]] == [sweep_id]
        served = listening(ui.pid)
        assert ("127.0.0.1", port) in {(a, p) for a, p, _ in served} and {a for a, _, _ in served} <= set(LOOPBACK), (
            served
        )
    finally:
        ui.terminate()
        ui.wait(timeout=30)
