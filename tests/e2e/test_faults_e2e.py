"""Faults end to end, each once (`python -m benchmarks.faults` repeats the first two): a SIGKILLed DDP
worker, a SIGKILLed inline trial, and a lost head (its driver, Ray and MLflow server killed, its disk
gone) with the resume on a new one."""

import csv
from pathlib import Path

import pytest

from tests.support import postgres, s3
from tests.support.sweep_harness import STEPS, free_port, lost_head, resume_survived, worker_kill


def _log(r) -> str:
    return Path(r["log"]).read_text()[-3000:]


@pytest.mark.parametrize("workers", [2, 1], ids=["train-worker", "inline-trial"])
def test_a_killed_worker_restarts_from_its_checkpoint_and_logs_each_step_once(ray_head, digits_net, tmp_path, workers):
    root = tmp_path / "runs"
    r = worker_kill(root, ray_head, digits_net[2], workers=workers)
    assert r["rc"] == 0, _log(r)
    (t,) = r["trials"].values()
    assert (t["status"], t["step"], t["attempt"], t["mlflow_status"]) == ("finished", STEPS, 2, "FINISHED"), _log(r)
    # It went on from its last checkpoint (step 20 or 30), not from the start, and ran again steps
    # that MLflow already had, without logging them twice (the audit below).
    assert t["resumed_from"] in (20, 30) and r["logged_before_kill"] >= t["resumed_from"]
    # loop_s sums the attempts: more than what the first attempt had trained by the checkpoint.
    assert t["loop_s"] > t["loop_s_history"][t["resumed_from"]]
    assert t["overhead_s"] == pytest.approx(t["wall_s"] - t["loop_s"]) and t["overhead_s"] > 0
    # An inline trial starts no worker process of its own; both kinds time their reports out of loop_s.
    assert ("t_worker_process" in t) == (workers > 1) and t["report_s"] > 0
    assert (r["duplicates"], r["lost"]) == (0, 0) and r["points"] > 0
    # Stored once: the final checkpoint in MLflow, no copy in the trial folder or Ray Train's storage.
    assert t["checkpoint"] == "mlflow:checkpoint/ckpt.pt" and "checkpoint" in t["artifacts"]
    assert list((root / "sweeps").rglob("*.pt")) == []


def test_a_lost_head_is_survived_by_a_new_one_from_the_bucket_and_the_database(digits_net, tmp_path):
    """The head's driver, Ray and MLflow server are killed and its disk is gone; a new head with an empty
    home resumes the sweep from what outlives it: the bucket (an S3 endpoint) and MLflow's database."""
    why = postgres.available()
    if why:
        pytest.skip(why)
    db, bucket = postgres.Postgres(free_port()).start(), s3.S3(free_port()).start()
    try:
        d = lost_head(tmp_path, digits_net[2], db.uri("mlflow"), bucket)
        kept = bucket.keys()
    finally:
        db.stop()
        bucket.stop()
    code, err = d["second_driver"]  # a driver already runs it on the new head
    assert code == 2 and len(err.strip().splitlines()) == 1 and "is being run by driver pid" in err, err
    assert d["rc"] == 0 and d["status"] == "finished", _log(d)
    over = [t for t, e in d["before"]["trials"].items() if e.get("status") == "finished"]
    assert len(over) == 1
    (first,) = over
    for key in ("end_time", "wall_s", "loop_s", "attempt"):  # not run again
        assert d["trials"][first][key] == d["before"]["trials"][first][key]
    cut = [t for t, e in d["before"]["trials"].items() if e.get("status") == "running"]
    assert len(cut) == 1 and d["trials"][cut[0]]["step"] == STEPS and d["trials"][cut[0]]["resumed_from"] >= 10
    assert len(d["trials"]) == 3 and {e["status"] for e in d["trials"].values()} == {"finished"}
    assert (d["runs"], d["trial_runs"], d["duplicates"], d["lost"]) == (4, 3, 0, 0) and d["points"] > 0
    # The benchmark's verdict on the same run, which a lost point or a trial count off by one turns.
    assert resume_survived(d, 3) and not resume_survived({**d, "lost": 1}, 3) and not resume_survived(d, 2)
    with open(d["sweep_dir"] / "ranking.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 3
    # What the new head resumed from is in the bucket: the sweep's own state beside Tune's, and MLflow's artifacts.
    sweep_id = d["sweep_dir"].name
    assert {f"switchsweep/design_space/{sweep_id}/{f}" for f in ("sweep.json", "optuna.journal")} <= set(kept)
    assert [k for k in kept if k.startswith(f"switchsweep/design_space/{sweep_id}/tune/")]
    assert [k for k in kept if k.startswith("mlflow/") and k.endswith("ckpt.pt")]
    print(f"\nlost head: {d['points']} points, 0 lost, 0 duplicated; 1 finished trial not rerun, 1 resumed")
