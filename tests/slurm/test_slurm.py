"""deploy/slurm/ on a real Slurm (tests/support/slurm.py: Debian's slurmctld and two slurmd nodes on this
machine, each in namespaces of its own), submitted as a user would, with `make slurm-sweep`'s script.

A 6-configuration sweep, two trials at once (one a node), in a job whose time limit cuts it: Slurm's USR1
interrupts it, the job says how to resume, and a second job (`--resume`, after the first by a dependency)
finishes it: every configuration trained once, on both nodes, every MLflow point logged once. Bad settings
are refused in one line before any job is submitted."""

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support import slurm as slurm_support
from tests.support.sweep_harness import EVAL_EVERY, STEPS, TINY_EVAL, audit, record

REPO = Path(__file__).resolve().parents[2]
SUBMIT = REPO / "deploy" / "slurm" / "submit.sh"
TRIALS = 6


@pytest.fixture(scope="module")
def cluster(digits_net):
    why = slurm_support.available()
    if why:
        pytest.skip(why)
    munge = slurm_support.Munge().start()
    root = Path(tempfile.mkdtemp(prefix="sss-", dir="/var/tmp"))
    cluster = slurm_support.SlurmCluster(root)
    try:
        cluster.start()
        shutil.copytree(digits_net[2], cluster.shared / "eval-cache")
        yield cluster
    finally:
        cluster.stop()
        munge.stop()
        shutil.rmtree(root, ignore_errors=True)


def _args(c) -> list[str]:
    return [
        "sweep=design_space",
        f"sweep.num_trials={TRIALS}",
        "sweep.baseline=none",
        "sweep.max_concurrent=2",
        "sweep.asha=false",
        f"sweep.eval_every={EVAL_EVERY}",
        f"train.steps={STEPS}",
        "train.log_every=2",
        f"eval.cache_dir={c.shared / 'eval-cache'}",
        *TINY_EVAL,
    ]


def _submit(c, *args: str, **settings: str) -> subprocess.CompletedProcess:
    env = {**c.env, "SWITCHSWEEP_SHARED": str(c.shared), **settings}
    return subprocess.run(["bash", str(SUBMIT), *args], env=env, capture_output=True, text=True, timeout=120)


def _job_id(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    (job,) = re.findall(r"Submitted batch job (\d+)", done.stdout)
    return job


@pytest.mark.parametrize(
    "settings, args, words",
    [
        ({"SWITCHSWEEP_SHARED": ""}, [], "SWITCHSWEEP_SHARED is unset"),
        ({"SWITCHSWEEP_SHARED": "/nowhere/at/all"}, [], "SWITCHSWEEP_SHARED=/nowhere/at/all is not a writable folder"),
        ({"NODES": "3"}, [], "NODES=3: partition (default) has 2 node(s)"),
        ({"GPUS_PER_NODE": "2"}, [], "GPUS_PER_NODE=2: partition (default) gives at most 0 GPU(s) a node"),
        ({"SWITCHSWEEP_TRACKING_URI": "sqlite:///x.db"}, [], "SWITCHSWEEP_TRACKING_URI=sqlite:///x.db is not a server"),
        ({}, ["sweep.max_concurrent=0"], "sweep.max_concurrent"),
    ],
    ids=["no-shared", "shared-missing", "too-many-nodes", "no-gpus", "local-store", "bad-sweep"],
)
def test_bad_settings_are_one_line_before_any_job(cluster, settings, args, words):
    done = _submit(cluster, *_args(cluster), *args, **settings)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and words in lines[0], done.stderr
    assert cluster.run("squeue", "-h").stdout.strip() == "", "a job was submitted"


def test_a_sweep_cut_by_the_time_limit_resumes_in_the_next_job_with_nothing_lost(cluster):
    c, out = cluster, cluster.shared / "job-%j.out"
    # A time limit too short for the sweep; Slurm signals the job a minute before it (give or take a minute).
    first = _job_id(_submit(c, *_args(c), TIME="3", SBATCH_ARGS=f"--signal=B:USR1@60 --output={out}"))
    ended = c.wait_done(first, 400)
    said = (c.shared / f"job-{first}.out").read_text()
    assert "the time limit is near: interrupting the sweep" in said, said[-3000:]
    resume = re.search(rf"to resume: sbatch --dependency=afterany:{first} deploy/slurm/sweep.sbatch .* --resume", said)
    assert resume, said[-3000:]
    runs = c.shared / "runs"
    cut = record(runs)
    assert cut["status"] == "interrupted" and 0 < len(cut["trials"]), (ended, said[-3000:])

    second = _job_id(
        _submit(c, *_args(c), "--resume", TIME="15", SBATCH_ARGS=f"--dependency=afterany:{first} --output={out}")
    )
    ended = c.wait_done(second, 900)
    said = (c.shared / f"job-{second}.out").read_text()
    assert (ended["JobState"], ended["ExitCode"]) == ("COMPLETED", "0:0"), said[-4000:]

    # MLflow's database, read directly (its artifacts are the job's server's, which ended with the job).
    tracking = f"sqlite:///{c.shared / 'mlflow.db'}"
    done = record(runs)
    assert done["status"] == "finished" and len(done["trials"]) == TRIALS
    assert all((t["status"], t["step"]) == ("finished", STEPS) for t in done["trials"].values()), done["trials"]
    checked = audit(runs, tracking_uri=tracking)
    assert (checked["trial_runs"], checked["duplicates"], checked["lost"]) == (TRIALS, 0, 0), checked
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name("design_space").experiment_id
    trials = client.search_runs([exp], "tags.`switchsweep.role` = 'trial'")
    assert [r.info.status for r in trials] == ["FINISHED"] * TRIALS
    hosts = {r.data.tags.get("switchsweep.host") for r in trials}
    assert hosts == {"sn1", "sn2"}, hosts  # the trials trained on the allocated nodes
    print(f"\nslurm: job {first} cut, job {second} resumed: {json.dumps(checked)}", file=sys.stderr)
