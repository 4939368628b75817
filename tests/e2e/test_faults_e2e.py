"""Faults end to end, each once (`python -m benchmarks.faults` repeats them): a SIGKILLed DDP worker and a
SIGKILLed inline trial (the lost head is a cluster check: tests/cluster/test_lost_head.py)."""

from pathlib import Path

import pytest

from tests.support.sweep_harness import STEPS, worker_kill


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
