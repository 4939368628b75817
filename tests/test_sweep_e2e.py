"""End to end on one local Ray instance for the whole module: a 2-trial sweep through the CLI is
interrupted after its first trial, resumed, checked in MLflow, exported and re-trained."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from scipy.optimize import linear_sum_assignment

from switchsweep.platform.checkpoint import load_checkpoint
from switchsweep.platform.tracking import default_tracking_uri
from switchsweep.models.routing import prior_mask

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
# A throwaway head on 127.0.0.1 for this module: token auth off for it and its clients alike.
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory):
    """One Ray head for every sweep process of this module (a start costs several seconds)."""
    port, dash = _free_port(), _free_port()
    temp = tmp_path_factory.mktemp("ray")
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=3", "--node-ip-address=127.0.0.1",
         f"--port={port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--temp-dir={temp}", "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
    )
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        ok = subprocess.run([str(BIN / "ray"), "status", f"--address={address}"], capture_output=True, env=ENV).returncode == 0
        if ok:
            break
        assert head.poll() is None, "ray start exited"
        time.sleep(2)
    yield address
    head.send_signal(signal.SIGTERM)
    head.wait(timeout=60)


def _sweep_cmd(root: Path, cache: Path, address: str, *extra: str) -> list[str]:
    return [
        str(BIN / "switchsweep"), "sweep", "sweep=design_space", f"sweep.root={root}", f"sweep.ray.address={address}",
        "sweep.num_trials=2", "sweep.eval_every=4", "sweep.ray.num_workers=2", "train.steps=8", "train.log_every=2",
        "data.batch_size=16", "eval.num_samples=20", "eval.batch_size=20", "eval.steps=2", "eval.kid_subset_size=20",
        "eval.kid_subsets=2", "sample.per_class=1", "sample.steps=2", f"eval.cache_dir={cache}",
        # Two given configurations, and ASHA on GFLOPs (deterministic, unlike KID after 4 steps): the second,
        # M=6 k=3, costs more than the first at the first evaluation, so ASHA stops it there.
        "sweep.metric=gflops", "sweep.mode=min",
        "sweep.points_to_evaluate=[{model.num_experts: 3, model.top_k: 1, model.lambda_dp: 1.0, model.prior_alpha: 4.0},"
        " {model.num_experts: 6, model.top_k: 3, model.lambda_dp: 0.5, model.prior_alpha: 2.0}]",
        *extra,
    ]


def test_sweep_interrupt_resume_track_export_and_retrain(ray_address, digits_net, tmp_path):
    root, cache = tmp_path / "runs", digits_net[2]
    env = ENV
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(_sweep_cmd(root, cache, ray_address), stdout=log, stderr=subprocess.STDOUT, env=env)
    # Interrupt (Ctrl+C) once the first trial has finished.
    deadline = time.time() + 400
    done: list[Path] = []
    while time.time() < deadline and not done and first.poll() is None:
        time.sleep(1)
        done = list(root.glob("sweeps/design_space/*/trials/*/trial.json"))
    assert done, (tmp_path / "first.log").read_text()[-3000:]
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=180) == 130, (tmp_path / "first.log").read_text()[-3000:]
    first_trial = done[0].parent.name
    first_summary = done[0].read_text()
    state = json.loads(next(root.glob("sweeps/design_space/*/sweep.json")).read_text())
    assert state["status"] == "interrupted"

    changed = subprocess.run(_sweep_cmd(root, cache, ray_address, "--resume", "train.steps=12"), capture_output=True,
                             text=True, env=env, timeout=120)
    assert changed.returncode == 2 and "train.steps=12: a resumed or extended sweep keeps" in changed.stderr
    resumed = subprocess.run(_sweep_cmd(root, cache, ray_address, "--resume"), capture_output=True, text=True, env=env,
                             timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "2 configurations x 1 seed(s), best first by gflops" in resumed.stdout
    assert (done[0]).read_text() == first_summary  # the finished trial was not rerun
    state = json.loads(next(root.glob("sweeps/design_space/*/sweep.json")).read_text())
    assert state["status"] == "finished"

    # MLflow: one parent, one child per trial (no duplicate after resume), metrics and routing artifacts.
    client = MlflowClient(default_tracking_uri(root))
    exp = client.get_experiment_by_name("design_space")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("switchsweep.role") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and len(runs) == 3
    trial_ids = {c.data.tags["switchsweep.trial_id"] for c in children}
    assert first_trial in trial_ids
    assert parent.data.tags["switchsweep.best_trial"] in trial_ids
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"ranking.csv", "ranking.md", "search_space.json"}
    for child in children:
        run_id = child.info.run_id
        kid = client.get_metric_history(run_id, "kid")
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
        assert child.info.status in ("FINISHED", "KILLED")  # KILLED: stopped early by ASHA
        assert np.isfinite(child.data.metrics["gflops"])
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert finished and all("checkpoint" in {a.path for a in client.list_artifacts(c.info.run_id)} for c in finished)

    # Optuna was told each trial's truth: finished -> COMPLETE with its value, stopped early -> PRUNED.
    sweep_dir = next(root.glob("sweeps/design_space/*"))
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(sweep_dir / "optuna.journal")))
    study = optuna.load_study(study_name=sweep_dir.name, storage=storage)
    by_group = {c.data.tags["switchsweep.group"]: c for c in children}
    assert sorted(by_group) == ["g000", "g001"]
    design = {g: tuple(c.data.params[f"model.{k}"] for k in ("num_experts", "top_k", "lambda_dp", "prior_alpha"))
              for g, c in by_group.items()}
    assert design == {"g000": ("3", "1", "1.0", "4.0"), "g001": ("6", "3", "0.5", "2.0")}
    # The first trained all its steps; ASHA stopped the second at its first evaluation (also after the resume).
    stopped = by_group["g001"]
    assert by_group["g000"].info.status == "FINISHED"
    assert stopped.info.status == "KILLED" and stopped.data.tags.get("switchsweep.stopped_early") == "true"
    assert stopped.data.metrics["step"] == 4 and stopped.data.metrics["gflops"] > by_group["g000"].data.metrics["gflops"]
    assert study.trials[1].intermediate_values == {1: pytest.approx(stopped.data.metrics["gflops"])}
    for t in study.trials:
        child = by_group[f"g{t.number:03d}"]
        want = TrialState.COMPLETE if child.info.status == "FINISHED" else TrialState.PRUNED
        assert t.state == want, (t, child.info.status)
        assert t.user_attrs["model.top_k"] == int(child.data.params["model.top_k"])
        if want == TrialState.COMPLETE:
            assert t.value == pytest.approx(child.data.metrics["gflops"])

    # --extend adds configurations to the finished sweep: same parent run, same study.
    extended = subprocess.run(_sweep_cmd(root, cache, ray_address, "--extend", "1"), capture_output=True, text=True,
                              env=env, timeout=400)
    assert extended.returncode == 0, extended.stdout[-3000:] + extended.stderr[-3000:]
    assert "3 configurations x 1 seed(s)" in extended.stdout
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 4 and sum(r.data.tags.get("mlflow.parentRunId") == parent.info.run_id for r in runs) == 3
    assert len(optuna.load_study(study_name=sweep_dir.name, storage=storage).trials) == 3
    assert json.loads((sweep_dir / "sweep.json").read_text())["status"] == "finished"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    parent = client.get_run(parent.info.run_id)

    # Export the best trial and train it from the exported file as it is.
    out = tmp_path / "export"
    exported = subprocess.run([str(BIN / "switchsweep"), "export", "sweep=design_space", "top=2", f"out={out}",
                               f"sweep.root={root}"], capture_output=True, text=True, env=env, timeout=120)
    assert exported.returncode == 0, exported.stderr
    files = sorted(out.glob("rank*.yaml"))
    assert len(files) == 2 and (out / "ranking.md").is_file()
    with open(out / "ranking.csv", newline="") as fh:
        ranking = list(csv.DictReader(fh))
    # Independently of the ranking code: finished trials first by lowest GFLOPs, the stopped one last.
    finished = sorted((c for c in children if c.info.status == "FINISHED"), key=lambda c: (c.data.metrics["gflops"], c.data.tags["switchsweep.group"]))
    assert [r["trial_id"] for r in ranking] == [c.data.tags["switchsweep.trial_id"] for c in finished] + [
        stopped.data.tags["switchsweep.trial_id"]]
    assert ranking[-1]["status"] == "KILLED" and parent.data.tags["switchsweep.best_trial"] == ranking[0]["trial_id"]
    assert ranking[0]["variant"].startswith("switch_dit(M=") and float(ranking[0]["params_M"]) > 0
    assert "sqlite" not in files[0].read_text() and "mlflow" not in files[0].read_text()
    trained = subprocess.run([str(BIN / "switchsweep"), "train", "--config", str(files[0]), "train.progress=false"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert trained.returncode == 0, trained.stderr[-3000:]
    ckpt = load_checkpoint(out / files[0].stem / "ckpt.pt")
    best = next(c for c in children if c.data.tags["switchsweep.trial_id"] == files[0].stem.split("-", 1)[1])
    assert ckpt["step"] == 8
    for key in ("num_experts", "top_k", "lambda_dp", "prior_alpha"):
        assert str(ckpt["config"]["model"][key]) == best.data.params[f"model.{key}"]
