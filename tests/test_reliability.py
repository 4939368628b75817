"""Fault handling without Ray: tracking that survives outages and retries, the sweep's record and
lock, failure classification, credential redaction, driver-side path resolution."""

import json
import os
import pickle
import sys

import pytest
import torch
from mlflow.exceptions import MlflowException
from PIL import Image

from switchsweep.config.schema import resolve_paths
from switchsweep.platform.errors import CheckpointError, ConfigError, TrainingError
from switchsweep.platform.sweep_record import INTERRUPTED, SweepRecord
from switchsweep.platform.tracking import CHECKPOINT_TAG, ResilientLog, Tracker, default_tracking_uri
from switchsweep.platform.uris import redact
from switchsweep.sweeps.callbacks import place_checkpoint
from switchsweep.sweeps.failures import (
    FAILURE_REASON,
    LogTail,
    TrialFailure,
    failure_reason,
    is_deterministic,
    trial_failure,
)
from switchsweep.sweeps.locate import resume_overrides


@pytest.mark.parametrize(
    "text,want",
    [
        (
            "sweep.tracking_uri=https://alice:s3cr3t@mlflow.example.com",
            "sweep.tracking_uri=https://***@mlflow.example.com",
        ),
        ("postgresql://u:pw@db:5432/mlflow", "postgresql://***@db:5432/mlflow"),
        ("s3://bucket/runs?X-Amz-Signature=abc&region=eu", "s3://bucket/runs?X-Amz-Signature=***&region=eu"),
        ("https://h/x?token=t0k&api_key=k3y&page=2", "https://h/x?token=***&api_key=***&page=2"),
        ("sqlite:////tmp/runs/mlflow.db", "sqlite:////tmp/runs/mlflow.db"),
        ("model.top_k=2 train.steps=300", "model.top_k=2 train.steps=300"),
    ],
)
def test_redact_masks_credentials_and_keeps_the_rest(text, want):
    assert redact(text) == want


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (a new one migrates its schema for about a second)."""
    root = tmp_path_factory.mktemp("store")
    tracker = Tracker(default_tracking_uri(root))
    return tracker, tracker.experiment("t", root / "art")


@pytest.fixture
def run(store):
    """A fresh run of its own for each test."""
    tracker, exp = store
    return tracker, tracker.create_run(exp, "r", {})


def _history(tracker, run_id, key):
    return [(m.step, m.value) for m in tracker.client.get_metric_history(run_id, key)]


def test_a_retried_attempt_logs_only_the_steps_the_run_lacks(run, tmp_path):
    tracker, run_id = run
    first = ResilientLog(tracker, run_id, tracker.logged_steps(run_id))
    png = tmp_path / "g.png"
    Image.new("RGB", (4, 4), "white").save(png)
    for step in (2, 4):
        first.log_metrics({"loss": float(step)}, step)
        first.log_image(png, key="samples", step=step)
    # A restart from the step-2 checkpoint runs steps 3.. again: what MLflow has is not logged twice.
    again = ResilientLog(tracker, run_id, tracker.logged_steps(run_id))
    for step in (2, 4, 6):
        again.log_metrics({"loss": step + 0.5}, step)
        again.log_image(png, key="samples", step=step)
    assert _history(tracker, run_id, "loss") == [(2, 2.0), (4, 4.0), (6, 6.5)]
    images = [a.path for a in tracker.client.list_artifacts(run_id, "images") if a.path.endswith(".png")]
    assert len(images) == 3
    assert tracker.logged_steps(run_id)["image:samples"] == {2, 4, 6}


def test_writes_during_an_outage_are_kept_and_sent_in_order_later(run, tmp_path, capsys):
    tracker, run_id = run
    real = Tracker.log_metrics
    down = {"on": True}

    def flaky(self, *a, **k):
        if down["on"]:
            raise MlflowException("database is locked")
        return real(self, *a, **k)

    log = ResilientLog(tracker, run_id, attempts=2, backoff_s=0)
    Tracker.log_metrics = flaky
    try:
        png = tmp_path / "routing.png"
        Image.new("RGB", (4, 4), "black").save(png)
        log.log_metrics({"loss": 1.0}, 1)
        log.log_image(png, key="routing", step=1)  # queued behind the metric: its file is copied
        png.unlink()  # the caller's scratch folder goes away
        log.log_metrics({"loss": 2.0}, 2)
        assert len(log.pending) == 3 and not log.flush()
        down["on"] = False
        log.log_metrics({"loss": 3.0}, 3)
    finally:
        Tracker.log_metrics = real
    assert log.pending == [] and log.flush()
    assert _history(tracker, run_id, "loss") == [(1, 1.0), (2, 2.0), (3, 3.0)]  # none lost, none twice
    assert tracker.logged_steps(run_id)["image:routing"] == {1}
    assert "MLflow write failed" in capsys.readouterr().err


@pytest.mark.parametrize(
    "error,deterministic",
    [
        (TrainingError("non-finite loss (nan) at step 3"), True),
        (ConfigError("model.top_k=5 must be <= 3"), True),
        (CheckpointError("corrupt"), True),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"), True),
        (MemoryError(), True),
        (RuntimeError("Connection reset by peer"), False),
        (OSError("No space left on device"), False),
    ],
)
def test_deterministic_failures_are_told_from_retryable_ones(error, deterministic):
    assert is_deterministic(error) is deterministic


def test_a_workers_failure_is_found_inside_what_fit_raises():
    from ray.train import ControllerError, WorkerGroupError

    failure = pickle.loads(pickle.dumps(TrialFailure("TrainingError: non-finite loss", "last lines\n")))
    assert (failure.reason, failure.log_tail) == ("TrainingError: non-finite loss", "last lines\n")
    wrapped = WorkerGroupError("rank 1 failed", {0: RuntimeError("peer gone"), 1: failure})
    assert trial_failure(wrapped) is failure
    assert trial_failure(pickle.loads(pickle.dumps(wrapped))).reason == failure.reason
    assert trial_failure(WorkerGroupError("killed", {0: RuntimeError("actor died")})) is None
    assert trial_failure(ControllerError(RuntimeError("x"))) is None


def test_log_tail_keeps_the_last_lines_and_the_traceback(capsys):
    with LogTail(lines=3) as tail:
        for i in range(5):
            print(f"line {i}")
        sys.stderr.write("warn: partial")
    try:
        raise TrainingError("non-finite loss")
    except TrainingError as e:
        text = tail.text(e)
    assert text.startswith("line 2\nline 3\nline 4\nwarn: partial\n") and "TrainingError: non-finite loss" in text
    assert "line 0" in capsys.readouterr().out  # still written through


def test_failure_reason_reads_what_run_trial_raised():
    error = f"Traceback ...\nRuntimeError: {FAILURE_REASON}=TrainingError: non-finite loss (nan) at step 3\n"
    assert failure_reason(error) == "TrainingError: non-finite loss (nan) at step 3"
    assert (
        failure_reason("ray.exceptions.ActorDiedError: the actor died\n\n")
        == "ray.exceptions.ActorDiedError: the actor died"
    )
    assert failure_reason(None) == "the trial's process failed without an error message"


def test_relative_paths_resolve_against_the_drivers_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tree = {
        "eval": {"cache_dir": "cache", "inception_weights": "~/w.pt", "out": None},
        "train": {"resume": "s3://b/c.pt"},
    }
    resolve_paths(tree)
    assert tree == {
        "eval": {"cache_dir": str(tmp_path / "cache"), "inception_weights": os.path.expanduser("~/w.pt"), "out": None},
        "train": {"resume": "s3://b/c.pt"},
    }


def test_a_resume_must_be_given_redacted_credentials_again(tmp_path):
    stored = ["sweep=design_space", "sweep.tracking_uri=https://***@mlflow.example.com", "train.steps=8"]
    state = SweepRecord(tmp_path, overrides=stored)
    with pytest.raises(ConfigError, match="sweep.tracking_uri: its credentials were not stored"):
        resume_overrides(state, ["sweep=design_space"])
    again = resume_overrides(state, ["sweep.tracking_uri=https://a:b@mlflow.example.com"])
    assert again == ["sweep=design_space", "train.steps=8", "sweep.tracking_uri=https://a:b@mlflow.example.com"]


def test_a_finished_trials_checkpoint_is_kept_once(run, tmp_path):
    tracker, run_id = run
    storage = tmp_path / "storage"
    for stamp in ("2026-01-01_00-00-01", "2026-01-01_00-00-02"):
        (storage / "train-t1" / f"checkpoint_{stamp}").mkdir(parents=True)
        (storage / "train-t1" / f"checkpoint_{stamp}" / "ckpt.pt").write_bytes(b"x")
    # Stopped early (or keep=false): Ray Train's copy is the only one, and the run says where it is.
    place_checkpoint(tracker, run_id, str(storage), "t1", "last", finished=False)
    newest = storage / "train-t1" / "checkpoint_2026-01-01_00-00-02" / "ckpt.pt"
    assert tracker.client.get_run(run_id).data.tags[CHECKPOINT_TAG] == str(newest)
    # Finished with its final checkpoint in MLflow: Ray Train's copies go.
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"final")
    tracker.log_artifact(run_id, ckpt, "checkpoint")
    place_checkpoint(tracker, run_id, str(storage), "t1", "last", finished=True)
    assert list((storage / "train-t1").iterdir()) == []


def test_an_inline_trials_checkpoint_is_kept_once_where_tune_keeps_it(run, tmp_path):
    from ray.tune import Checkpoint

    tracker, run_id = run
    folder = tmp_path / "storage" / "tune" / "run_trial_t1" / "checkpoint_000001"
    earlier = folder.with_name("checkpoint_000000")  # Tune keeps the one before the last too
    for kept in (earlier, folder):
        kept.mkdir(parents=True)
        (kept / "ckpt.pt").write_bytes(b"x")
    place_checkpoint(
        tracker, run_id, str(tmp_path / "storage"), "t1", "last", finished=False, inline=Checkpoint(str(folder))
    )
    assert tracker.client.get_run(run_id).data.tags[CHECKPOINT_TAG] == str(folder / "ckpt.pt")
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"final")
    tracker.log_artifact(run_id, ckpt, "checkpoint")
    place_checkpoint(
        tracker, run_id, str(tmp_path / "storage"), "t1", "last", finished=True, inline=Checkpoint(str(folder))
    )
    # Both emptied, both kept: a Tune state that still names one restores the (ended) trial.
    assert list(folder.iterdir()) == [] and list(earlier.iterdir()) == []


def test_a_trial_whose_checkpoint_is_gone_trains_from_the_start(tmp_path, capsys):
    from ray.train import Checkpoint

    from switchsweep.sweeps.worker import restore

    kept = tmp_path / "checkpoint_000001"
    kept.mkdir()
    (kept / "ckpt.pt").write_bytes(b"x")
    scratches = [tmp_path / f"scratch{i}" for i in range(3)]
    for scratch in scratches:
        scratch.mkdir()
    assert restore(Checkpoint.from_directory(str(kept)), scratches[0])
    assert (scratches[0] / "ckpt.pt").read_bytes() == b"x"
    # Deleted by Ray (kept checkpoints rotate) before the state naming it was replaced; emptied once in MLflow.
    gone, emptied = tmp_path / "checkpoint_000000", tmp_path / "checkpoint_000002"
    emptied.mkdir()
    for folder, scratch in ((gone, scratches[1]), (emptied, scratches[2])):
        assert not restore(Checkpoint.from_directory(str(folder)), scratch)
        assert f"checkpoint {folder} is gone: it trains from step 0" in capsys.readouterr().err


def test_resume_refuses_in_one_line_when_the_tune_state_is_missing(tmp_path, capsys):
    from switchsweep.cli import main

    root = tmp_path / "runs"
    sweep_dir = root / "sweeps" / "design_space" / "design_space-1"
    SweepRecord(
        sweep_dir,
        sweep_id="design_space-1",
        name="design_space",
        created=1.0,
        status=INTERRUPTED,
        overrides=[f"sweep.root={root}"],
    ).save()
    assert main(["sweep", "--resume", f"sweep.root={root}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume: sweep design_space-1 has no Tune state under" in err[0]
    assert [p.name for p in sweep_dir.iterdir()] == ["sweep.json"]  # not started afresh, nothing else made


def test_log_checkpoints_best_moves_the_best_trials_checkpoint_into_mlflow(run, tmp_path):
    from types import SimpleNamespace

    from switchsweep.sweeps.parent_run import keep_best_checkpoint

    tracker, run_id = run
    folder = tmp_path / "storage" / "train-t1" / "checkpoint_2026-01-01_00-00-02"
    folder.mkdir(parents=True)
    (folder / "ckpt.pt").write_bytes(b"final weights")
    tracker.set_tags(run_id, {CHECKPOINT_TAG: f"{folder}/ckpt.pt"})
    keep_best_checkpoint(tracker, SimpleNamespace(run_id=run_id))
    assert tracker.client.get_run(run_id).data.tags[CHECKPOINT_TAG] == "mlflow:checkpoint/ckpt.pt"
    got = tracker.download(run_id, "checkpoint/ckpt.pt", tmp_path / "dl")
    assert got.read_bytes() == b"final weights" and not folder.exists()  # one copy, in MLflow


def _cut_short_state(tmp_path):
    """A sweep's Tune folder whose newest state was cut short, and Ray's temp folder with its staging copy."""
    tune_dir = tmp_path / "storage" / "tune"
    tune_dir.mkdir(parents=True)
    (tune_dir / "experiment_state-2026-01-01_00-00-01.json").write_text('{"trial_data": ["older"]}')
    newest = tune_dir / "experiment_state-2026-01-01_00-00-09.json"
    newest.write_text('{"trial_data": ["a", "b"')  # what a driver killed during Tune's copy leaves
    staging = (
        tmp_path
        / "ray"
        / "session_2026-01-01_00-00-00_1"
        / "artifacts"
        / "2026-01-01_00-00-09"
        / "tune"
        / "driver_artifacts"
    )
    staging.mkdir(parents=True)
    return tune_dir, newest, staging


def test_a_cut_short_tune_state_is_put_back_from_its_staging_copy(tmp_path):
    from switchsweep.sweeps.tune_state import repair

    tune_dir, newest, staging = _cut_short_state(tmp_path)
    (staging / newest.name).write_text('{"trial_data": ["a", "b"]}')
    said = repair(str(tune_dir), str(tmp_path / "ray"))
    assert "cut short" in said and json.loads(newest.read_text()) == {"trial_data": ["a", "b"]}
    assert repair(str(tune_dir), str(tmp_path / "ray")) is None  # whole now: nothing to do


def test_a_cut_short_tune_state_without_a_whole_copy_falls_back_or_is_refused(tmp_path):
    from switchsweep.sweeps.tune_state import repair

    tune_dir, newest, staging = _cut_short_state(tmp_path)
    (staging / newest.name).write_text('{"trial')  # the staging copy is cut short too
    assert "resuming from experiment_state-2026-01-01_00-00-01.json" in repair(str(tune_dir), str(tmp_path / "ray"))
    assert sorted(p.name for p in tune_dir.iterdir()) == [
        "experiment_state-2026-01-01_00-00-01.json",
        "experiment_state-2026-01-01_00-00-09.json.cut-short",
    ]
    (tune_dir / "experiment_state-2026-01-01_00-00-01.json").write_text("")
    with pytest.raises(ConfigError, match="was cut short .* no whole copy is left on this machine: start a new sweep"):
        repair(str(tune_dir), str(tmp_path / "ray"))


def test_a_trial_tune_restarts_keeps_its_wall_clock_and_counts_the_attempt(tmp_path):
    import time
    from types import SimpleNamespace

    from switchsweep.sweeps.callbacks import TrialTracking

    SweepRecord(tmp_path, sweep_id="s").save()
    tracking = TrialTracking("sqlite:///unused.db", "0", "p", str(tmp_path), 40, str(tmp_path), "last")
    trial = SimpleNamespace(trial_id="t1", error_file=None, get_error=lambda: "ActorDiedError: the actor died")
    tracking.on_trial_start(0, [], trial)
    time.sleep(0.3)  # the trial's process dies here; Tune starts it again
    tracking.on_trial_recover(0, [], trial)
    tracking.on_trial_start(0, [], trial)
    tracking.on_trial_result(0, [], trial, {"step": 10, "loop_s": 0.1})
    entry = SweepRecord.load(tmp_path).trials["t1"]
    assert entry.wall_s >= 0.3 and entry.attempt == 2 and entry.reason == ""  # a crash: the restart trains
    trial.get_error = lambda: f"RuntimeError: {FAILURE_REASON}=TrainingError: non-finite loss\n"
    tracking.on_trial_recover(0, [], trial)  # deterministic: the next restart ends with it (trial._train_inline)
    assert SweepRecord.load(tmp_path).trials["t1"].reason == "TrainingError: non-finite loss"


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    from switchsweep.platform.files import atomic_write, atomic_write_text

    path = atomic_write_text(tmp_path / "sub" / "sweep.json", "old\n")

    def half(fh):
        fh.write(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half)
    assert path.read_text() == "old\n" and sorted(p.name for p in path.parent.iterdir()) == ["sweep.json"]


@pytest.mark.parametrize(
    "override, want",
    [
        ("sweep.ray.address=auto", ("sweep.ray.address", "auto")),
        ("+sweep.ray.worker_resources={A: 1}", ("sweep.ray.worker_resources", "{A: 1}")),
        ("++train.steps=3", ("train.steps", "3")),
        ("~eval.out", ("eval.out", "")),
        ("sweep.tracking_uri=http://h:5000/?a=b", ("sweep.tracking_uri", "http://h:5000/?a=b")),
    ],
)
def test_an_override_splits_into_its_key_and_value(override, want):
    from switchsweep.config.compose import split_override

    assert split_override(override) == want


def test_trials_on_a_cluster_get_the_drivers_mlflow_login_and_local_ones_need_none(monkeypatch):
    from switchsweep.config.sweep_schema import RayConfig
    from switchsweep.sweeps.runtime import worker_env

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "switchsweep")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    on_cluster = worker_env(RayConfig(address="auto"))
    assert (on_cluster["MLFLOW_TRACKING_USERNAME"], on_cluster["MLFLOW_TRACKING_PASSWORD"]) == ("switchsweep", "pw")
    assert "MLFLOW_TRACKING_TOKEN" not in on_cluster
    assert not [k for k in worker_env(RayConfig()) if k.startswith("MLFLOW_")]


def test_a_server_that_asks_for_a_login_is_one_line_before_anything_starts(monkeypatch):
    """A server answering as MLflow's basic-auth app does: 401 without its user's password, 200 with it."""
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from switchsweep.platform.tracking import reachable

    good = "Basic " + base64.b64encode(b"switchsweep:right").decode()

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.headers.get("Authorization") == good else 401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_port}"
    try:
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
        with pytest.raises(ConfigError, match=r"^sweep.tracking_uri=http://127.0.0.1:\d+: the MLflow server asks for"):
            reachable(uri)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "switchsweep")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
        with pytest.raises(ConfigError, match="refused the login of MLFLOW_TRACKING_USERNAME.*cluster-login"):
            reachable(uri)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "right")
        assert reachable(uri) == uri
    finally:
        server.shutdown()
