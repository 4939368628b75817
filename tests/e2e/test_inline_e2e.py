"""Inline trials (one worker, trained in Tune's trial process) against Train jobs: the same sweep both
ways logs the same numbers, bit for bit."""

import subprocess

from mlflow.tracking import MlflowClient

from switchsweep.platform.tracking import default_tracking_uri
from switchsweep.sweeps.worker_spec import PHASES
from tests.support.sweep_harness import ENV, record, sweep_cmd

# A Train job's phases in the order they happen (benchmarks/sweep_overhead.py reads them): the trial's start,
# the worker's phases as PHASES lists them, the trial's end.
TRAIN_PHASES = ["t_trial_start", *(p for p in PHASES if p.startswith("t_")), "t_trial_end"]


def _logged(root) -> dict[str, dict[str, list[tuple[int, float]]]]:
    client = MlflowClient(default_tracking_uri(root))
    exp = client.get_experiment_by_name("design_space")
    runs = client.search_runs([exp.experiment_id], "tags.`switchsweep.role` = 'trial'")
    return {
        r.info.run_name: {
            k: sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, k))
            for k in ("loss", "kid_x1e3", "routing_jsd")
        }
        for r in runs
    }


def test_inline_trials_log_what_train_jobs_log(ray_head, digits_net, tmp_path):
    kinds = {"inline": [], "train": ["sweep.ray.inline=false"]}
    # Both sweeps at once on the session's head: each trial is seeded, so sharing the machine changes no number.
    procs = {
        kind: subprocess.Popen(
            sweep_cmd(tmp_path / kind, ray_head, digits_net[2], "sweep.num_trials=1", "train.steps=20", *extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=ENV,
        )
        for kind, extra in kinds.items()
    }
    logged = {}
    for kind, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
        (trial,) = record(tmp_path / kind)["trials"].values()
        assert ("t_worker_process" in trial) == (kind == "train")  # a Train job starts a worker process
        if kind == "train":  # the record times each phase of it, in order, across its processes
            times = [trial[k] for k in TRAIN_PHASES]
            assert times == sorted(times), dict(zip(TRAIN_PHASES, times))
        logged[kind] = _logged(tmp_path / kind)
    assert len(logged["inline"]) == 1 and all(v["loss"] and v["kid_x1e3"] for v in logged["inline"].values())
    assert logged["inline"] == logged["train"]
