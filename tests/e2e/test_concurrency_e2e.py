"""Concurrent trials end to end: four on the default SQLite store, one of which fails deterministically,
on the project's own local Ray instance (whose every socket must listen on 127.0.0.1), and four on an
MLflow server over PostgreSQL."""

import csv
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from switchsweep.cli import EXIT_TRIALS_FAILED
from switchsweep.platform.tracking import default_tracking_uri
from tests.support import postgres
from tests.support.netstat import LOOPBACK, listening
from tests.support.sweep_harness import ENV, audit, free_port, record, start_mlflow, sweep_cmd

SHORT = 20  # steps of a trial: two evaluations each


def test_four_concurrent_trials_on_sqlite_lose_no_point_and_a_failing_one_is_not_retried(digits_net, tmp_path):
    root = tmp_path / "runs"
    grid = "sweep.grid=[['model=dit'],['model=dtr'],['model=switch_dit','model.top_k=1'],['model=dit','train.lr=1e30']]"
    cmd = sweep_cmd(
        root,
        None,
        digits_net[2],
        "sweep.max_concurrent=4",
        "sweep.ray.cpus_per_worker=0.5",
        f"train.steps={SHORT}",
        grid,
        sweep="table1",
        log_every=1,
    )
    log = open(tmp_path / "sweep.log", "w")
    driver = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV)
    sockets: set = set()
    while driver.poll() is None:  # everything the sweep starts (Ray's processes, trials, workers)
        sockets |= listening(driver.pid)
        time.sleep(0.5)
    out = (tmp_path / "sweep.log").read_text()
    assert driver.returncode == EXIT_TRIALS_FAILED, out[-3000:]
    assert len(sockets) >= 8 and {a for a, _, _ in sockets} <= set(LOOPBACK), sockets
    assert "1 trial(s) failed and were not retried" in out and "database is locked" not in out

    trials = record(root)["trials"]
    failed = {t: e for t, e in trials.items() if e["status"] == "failed"}
    assert len(trials) == 4 and len(failed) == 1
    ((failed_id, entry),) = failed.items()
    assert "non-finite loss (nan) at step 2" in entry["reason"]
    assert all(e["status"] == "finished" and e["step"] == SHORT for t, e in trials.items() if t != failed_id)
    assert audit(root, log_every=1) | {"points": 0} == {
        "runs": 5,
        "trial_runs": 4,
        "points": 0,
        "duplicates": 0,
        "lost": 0,
    }

    client = MlflowClient(default_tracking_uri(root))
    exp = client.get_experiment_by_name("design_space")
    run = client.search_runs([exp.experiment_id], f"tags.`switchsweep.trial_id` = '{failed_id}'")[0]
    assert run.info.status == "FAILED" and "non-finite loss" in run.data.tags["switchsweep.failure"]
    assert run.data.tags["switchsweep.attempts"] == "1"  # deterministic: not retried
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1]  # step 2 was the NaN
    worker_log = Path(client.download_artifacts(run.info.run_id, "failure/worker.log", str(tmp_path)))
    assert "TrainingError: non-finite loss" in worker_log.read_text()
    sweep_dir = next((root / "sweeps" / "design_space").iterdir())
    with open(sweep_dir / "ranking.csv", newline="") as fh:
        rows = {r["trial_id"]: r for r in csv.DictReader(fh)}
    assert rows[failed_id]["status"] == "FAILED" and "non-finite loss" in rows[failed_id]["failure"]


def test_four_concurrent_trials_on_an_mlflow_server_over_postgresql_lose_no_point(ray_head, digits_net, tmp_path):
    """The cluster's store: an MLflow server whose backend is PostgreSQL (its URI, password included, in
    the server's environment only), with four trials writing to it at once."""
    why = postgres.available()
    if why:
        pytest.skip(why)
    db = postgres.Postgres(free_port()).start()
    server = None
    try:
        server, tracking = start_mlflow(db.uri("mlflow"), str(tmp_path / "bucket" / "mlflow"), tmp_path / "mlflow.log")
        root = tmp_path / "runs"
        grid = "sweep.grid=[['model=dit'],['model=dtr'],['model=switch_dit','model.top_k=1'],['model=dit_moe']]"
        done = subprocess.run(
            sweep_cmd(
                root,
                ray_head,
                digits_net[2],
                "sweep.max_concurrent=4",
                "sweep.ray.cpus_per_worker=0.5",
                f"sweep.tracking_uri={tracking}",
                f"train.steps={SHORT}",
                grid,
                sweep="table1",
                log_every=1,
            ),
            capture_output=True,
            text=True,
            env=ENV,
            timeout=600,
        )
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        trials = record(root)["trials"]
        assert len(trials) == 4 and {(e["status"], e["step"]) for e in trials.values()} == {("finished", SHORT)}
        found = audit(root, log_every=1, tracking_uri=tracking)
        assert found | {"points": 0} == {"runs": 5, "trial_runs": 4, "points": 0, "duplicates": 0, "lost": 0}
        # Every point is a row of the database itself, and the password is in no file the sweep wrote.
        import psycopg

        with psycopg.connect(db.uri("mlflow")) as conn:
            rows = conn.execute(
                "SELECT count(*) FROM metrics m JOIN tags t ON t.run_uuid = m.run_uuid "
                "WHERE t.key = 'switchsweep.role' AND t.value = 'trial'"
            ).fetchone()[0]
        assert rows == found["points"] > 4 * SHORT
        written = [p for p in root.rglob("*") if p.is_file() and p.suffix in (".json", ".md", ".csv", ".html", ".log")]
        assert written and not [p for p in written if db.password in p.read_text(errors="replace")]
        print(f"\npostgresql store: {found['points']} points from 4 concurrent trials, 0 lost, 0 duplicated")
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        db.stop()
