"""A lost head (its driver, Ray and MLflow server killed, its disk gone) and the resume on a new one from
what outlives it (`python -m benchmarks.faults` repeats it)."""

import csv
from pathlib import Path

import pytest

from tests.support import postgres, s3
from tests.support.sweep_harness import STEPS, free_port, lost_head, resume_survived


def _log(r) -> str:
    return Path(r["log"]).read_text()[-3000:]


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
