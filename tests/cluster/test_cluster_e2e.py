"""Autoscaling end to end on one machine: a fake multi-node cluster made from cluster.yaml (its own
module: the cluster has its own head, and stops only its own processes), an S3 endpoint as its bucket
(tests/support/s3.py), an MLflow server with served artifacts in that bucket, and a 2-trial sweep submitted as a
Ray job with platform=cluster, as on a real cluster.

It checks that the autoscaler launched worker nodes for the trials (the head has no CPUs for them),
that both trials finished with metrics and artifacts the driver reads back from the tracking server,
that the Tune state and the sweep's own state are in the bucket under <storage>/<name>/<id>, that a bad
token, a missing GPU type and a local store are refused in one line before any trial, and that the
worker nodes are gone after the idle timeout."""

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from switchsweep.platform.tracking import SERVER_ENV
from tests.support import s3
from tests.support.fake_cluster import FAKE_GPU, FakeCluster, fake_config, wait_http
from tests.support.sweep_harness import (
    BIN,
    EVAL_EVERY,
    STEPS,
    TINY_EVAL,
    audit,
    free_port,
    pids,
    record,
    sweep_cmd,
    trial_facts,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "sweep.num_trials=2",
    "sweep.baseline=none",
    "sweep.max_concurrent=2",
    "sweep.eval_every=4",
    "train.steps=4",
    "train.log_every=2",
    "sweep.asha=false",
    "train.device=cpu",  # platform=cluster trains on CUDA only; this cluster's "GPUs" are a custom resource
    *TINY_EVAL,
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, digits_net):
    """An S3 endpoint standing in for the bucket, an MLflow server (artifacts served from the bucket) and
    the fake cluster, whose head environment names them as cluster.yaml's head does; every node gets the
    bucket's credentials in its environment, as a cluster's nodes get them from their instance profile."""
    tmp = tmp_path_factory.mktemp("cluster")
    bucket = s3.S3(free_port()).start()
    mlflow_port, gcs_port, dash_port = free_port(), free_port(), free_port()
    token = secrets.token_hex(16)
    env = {
        **os.environ,
        **bucket.env,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PYTHONUNBUFFERED": "1",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # the head and its nodes stay on 127.0.0.1
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "HOME": str(tmp / "head-home"),
        "SWITCHSWEEP_STORAGE": f"s3://{bucket.bucket}/switchsweep",
        "SWITCHSWEEP_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
    }
    env.pop("RAY_ADDRESS", None)
    mlflow = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(mlflow_port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp / 'mlflow.db'}",
            "--artifacts-destination",
            f"s3://{bucket.bucket}/mlflow",
            "--serve-artifacts",
        ],
        env={**env, **SERVER_ENV},
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "mlflow.log", "w"),
        start_new_session=True,
    )
    # Ray's unix sockets live under its temp folder, and their paths may not exceed 107 bytes.
    short = Path(tempfile.mkdtemp(prefix="ssfc-", dir="/tmp"))
    fake = FakeCluster(short, fake_config(REPO / "cluster.yaml", gcs_port), env, dash_port)
    try:
        wait_http(f"http://127.0.0.1:{mlflow_port}/health", 120, mlflow)
        started = time.time()
        fake.start()
        yield {
            "fake": fake,
            # `sweep.ray.address=auto` (platform=cluster) finds this cluster, not whichever one this machine
            # started last (a test beside this one may start its own), as a job on the head finds its own.
            "env": {**env, "RAY_ADDRESS": fake.address},
            "tmp": tmp,
            "bucket": bucket,
            "cache": digits_net[2],
            "started": started,
            "tracking": env["SWITCHSWEEP_TRACKING_URI"],
            "dashboard": f"http://127.0.0.1:{dash_port}",
        }
    finally:
        fake.stop()
        shutil.rmtree(short, ignore_errors=True)
        os.killpg(mlflow.pid, 15)
        mlflow.wait(timeout=30)
        bucket.stop()


def _sweep_cmd(c, *extra: str) -> list[str]:
    """The sweep run directly on the 'head' (this machine), as `ray job submit` would run it."""
    return [str(BIN / "switchsweep"), "sweep", "platform=cluster", f"eval.cache_dir={c['cache']}", *TINY, *extra]


def _one_line_refusals(c, cases: list[tuple[list[str], dict, tuple[str, ...]]]) -> None:
    """Each refusal is its own sweep command line; those sharing a Ray token run one after another in one
    process (tests/support/cli_cases.py), the processes all at once: none of them gets to any work."""
    by_token: dict[str, list[int]] = {}
    for i, (_, env, _) in enumerate(cases):
        by_token.setdefault(env.get("RAY_AUTH_TOKEN", ""), []).append(i)
    procs = []
    for n, indices in enumerate(by_token.values()):
        given, found = c["tmp"] / f"cases{n}.json", c["tmp"] / f"refusals{n}.json"
        given.write_text(json.dumps([{"argv": _sweep_cmd(c, *cases[i][0])[1:], "env": cases[i][1]} for i in indices]))
        script = str(Path(__file__).parents[1] / "support" / "cli_cases.py")
        procs.append((indices, found, subprocess.Popen([sys.executable, script, str(given), str(found)], env=c["env"])))
    for indices, found, proc in procs:
        assert proc.wait(timeout=300) == 0
        for got, i in zip(json.loads(found.read_text()), indices):
            extra, _, words = cases[i]
            lines = got["stderr"].strip().splitlines()
            assert got["code"] == 2 and len(lines) == 1, (extra, got["stderr"][-2000:])
            assert all(w in lines[0] for w in words), lines[0]


def test_refusals_come_in_one_line_before_any_trial(cluster):
    c = cluster
    local = {**c["env"], "SWITCHSWEEP_STORAGE": str(c["tmp"] / "local")}
    cpu = ["sweep.ray.use_gpu=false"]
    wrong = {**c["env"], "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    _one_line_refusals(
        c,
        [
            (["sweep.ray.use_gpu=false"], local, ("sweep.ray.storage_path", "shared_fs=true")),
            (
                [*cpu, f"sweep.tracking_uri=sqlite:///{c['tmp']}/x.db"],
                c["env"],
                ("sweep.tracking_uri", "mlflow server"),
            ),
            ([*cpu, f"sweep.ray.address=127.0.0.1:{free_port()}"], c["env"], ("nothing answers",)),
            (cpu, wrong, ("token",)),
            # platform=cluster asks for GPUs; the fake cluster's types have fake_gpu instead: no GPU type.
            (
                [f"sweep.ray.cluster_config={c['fake'].config_file}"],
                c["env"],
                ("GPU", "add a GPU node type"),
            ),
        ],
    )
    assert not [k for k in c["bucket"].keys("switchsweep/") if "/tune/" in k], "a refused sweep left Tune state behind"


def test_a_sweep_submitted_as_a_job_scales_up_runs_on_workers_and_scales_down(cluster):
    c, fake = cluster, cluster["fake"]
    assert fake.workers() == [], "the cluster starts with its head only"
    cmd = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        c["dashboard"],
        "--",
        "switchsweep",
        "sweep",
        "platform=cluster",
        "sweep.ray.use_gpu=false",
        "sweep.ray.cpus_per_worker=1",
        f"+sweep.ray.worker_resources={{{FAKE_GPU}: 1}}",
        f"sweep.ray.cluster_config={fake.config_file}",
        f"eval.cache_dir={c['cache']}",
        *TINY,
    ]
    t0 = time.time()
    submit = subprocess.run(cmd, env=c["env"], capture_output=True, text=True, timeout=600)
    sweep_s = time.time() - t0
    assert submit.returncode == 0, (submit.stdout + submit.stderr)[-4000:]
    # The head has no CPU for the trials' workers: the autoscaler launched GPU-type nodes for them.
    launched = fake.workers()
    added = [(n, kind) for verb, n, kind in fake.autoscaler_events() if verb == "Adding"]
    assert len(launched) >= 1 and added and all(kind.startswith("ray.worker.gpu") for _, kind in added), added

    # Both trials finished, with metrics and artifacts read back from the tracking server.
    client = MlflowClient(c["tracking"])
    (exp,) = [e for e in client.search_experiments() if e.name == "design_space"]
    assert exp.artifact_location.startswith("mlflow-artifacts:"), exp.artifact_location
    runs = client.search_runs([exp.experiment_id], "tags.`switchsweep.role` = 'trial'")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
    for run in runs:
        assert run.data.metrics["step"] == 4 and "kid_x1e3" in run.data.metrics
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "routing", "checkpoint"} <= names, names
        folder = client.download_artifacts(run.info.run_id, "checkpoint", str(c["tmp"] / run.info.run_id))
        assert (Path(folder) / "ckpt.pt").stat().st_size > 0
    # The bucket holds, under <storage>/<name>/<id>, the Tune state and the sweep's own state (what a new
    # head resumes from), no Train checkpoint (kept once: in MLflow, whose artifacts are in the bucket too).
    keys = c["bucket"].keys()
    (sweep_id,) = {k.split("/")[2] for k in keys if k.startswith("switchsweep/design_space/")} - {""}
    kept = {k.removeprefix(f"switchsweep/design_space/{sweep_id}/").split("/")[0] for k in keys if sweep_id in k}
    assert {"tune", "sweep.json", "optuna.journal"} <= kept, kept
    assert not [k for k in keys if "/checkpoint_" in k and "/train-" in k], "checkpoints kept once: in MLflow"
    assert [k for k in keys if k.startswith(f"mlflow/{exp.experiment_id}/") and k.endswith("ckpt.pt")]

    # export reads the configs from the tracking server.
    out = c["tmp"] / "export"
    exported = subprocess.run(
        [
            str(BIN / "switchsweep"),
            "export",
            "sweep=design_space",
            f"sweep.tracking_uri={c['tracking']}",
            "top=2",
            f"out={out}",
        ],
        env=c["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert exported.returncode == 0 and len(list(out.glob("rank0*.yaml"))) == 2, exported.stderr[-2000:]

    # Idle worker nodes are released (idle timeout 6 s, autoscaler update every 1 s).
    deadline = time.time() + 120
    while fake.workers(alive=True) and time.time() < deadline:
        time.sleep(3)
    assert fake.workers(alive=True) == [], "worker nodes still up after the idle timeout"
    removed = sum(n for verb, n, _ in fake.autoscaler_events() if verb == "Removing")
    assert removed == len(launched), (removed, launched)
    print(
        f"\nfake cluster: {len(launched)} worker node(s) launched ({added}), {removed} released as idle; "
        f"job {sweep_s:.0f} s; {time.time() - c['started']:.0f} s since the head started",
        file=sys.stderr,
    )


def test_latents_prepared_into_the_bucket_train_a_sweep_whose_reference_features_a_worker_computes(cluster):
    """`prepare out=s3://...` on the cluster, then a sweep reading those latents from the bucket: the trial
    trains on a worker node from its copy, and the reference features (ADM-style reference batch in the
    bucket) are computed by a task with a trial worker's resources, on a worker node, not the head."""
    import io

    import numpy as np
    import torch

    from switchsweep.sweeps.run import REFERENCE_TASK
    from switchsweep.trainers.data.imagefolder import read_image, scan
    from tests.support.latent_data import image_folder, inception_weights, tiny_vae

    c, fake = cluster, cluster["fake"]
    tmp = c["tmp"] / "latents"
    root = image_folder(tmp / "images", per_class=4)
    vae = tiny_vae(tmp / "vae")
    weights = inception_weights(tmp / "inception.pt")
    bucket = f"s3://{c['bucket'].bucket}"
    ref = io.BytesIO()
    np.savez(ref, arr_0=np.stack([read_image(p, 16) for p, _ in scan(root)[1]]))
    c["bucket"].client().put_object(Bucket=c["bucket"].bucket, Key="ref/ref.npz", Body=ref.getvalue())
    run = dict(env=c["env"], capture_output=True, text=True)
    prepared = subprocess.run(
        [
            str(BIN / "switchsweep"),
            "prepare",
            "address=auto",
            f"data.root={root}",
            f"data.vae={vae}",
            "data.resolution=16",
            "data.shard_size=8",
            f"out={bucket}/latents/tiny",
        ],
        timeout=300,
        **run,
    )
    assert prepared.returncode == 0, (prepared.stdout + prepared.stderr)[-3000:]
    assert f"prepared 12 latents in 2 shards (2 encoded now) in {bucket}/latents/tiny" in prepared.stdout
    keys = set(c["bucket"].keys("latents/tiny/"))
    assert "latents/tiny/manifest.json" in keys and len([k for k in keys if k.endswith(".npy")]) == 4, keys

    latents = [
        "data=latents",
        f"data.path={bucket}/latents/tiny",
        "data.image_size=8",
        "data.num_classes=3",
        f"eval.inception_weights={weights}",
        "sweep.name=bucket_latents",
        "sweep.num_trials=1",
        "sweep.ray.use_gpu=false",
        "sweep.ray.cpus_per_worker=1",
        f"+sweep.ray.worker_resources={{{FAKE_GPU}: 1}}",
        f"sweep.ray.cluster_config={fake.config_file}",
        "eval.num_samples=6",
        "eval.batch_size=6",
        "eval.kid_subset_size=3",
        "eval.pr_k=2",
        "data.batch_size=8",
    ]
    sweep = [str(BIN / "switchsweep"), "sweep", "platform=cluster", *TINY, *latents]
    # The head's ImageFolder is no reference a GPU node can read: refused in one line before any trial.
    refused = subprocess.run(sweep, timeout=300, **run)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1 and "data.ref_batch=null" in lines[0], refused.stderr[-2000:]
    done = subprocess.run([*sweep, f"data.ref_batch={bucket}/ref/ref.npz"], timeout=600, **run)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]

    client = MlflowClient(c["tracking"])
    exp = client.get_experiment_by_name("bucket_latents")
    (trial,) = client.search_runs([exp.experiment_id], "tags.`switchsweep.role` = 'trial'")
    assert trial.info.status == "FINISHED" and trial.data.params["data.path"] == f"{bucket}/latents/tiny"
    assert [m.step for m in client.get_metric_history(trial.info.run_id, "kid_x1e3")] == [4]
    (cached,) = [k for k in c["bucket"].keys("switchsweep/eval-cache/") if "ref-latents-" in k]
    features = c["bucket"].client().get_object(Bucket=c["bucket"].bucket, Key=cached)["Body"].read()
    assert torch.load(io.BytesIO(features), weights_only=True)["features"].shape == (12, 2048)

    def state(kind: str, where: str) -> list[dict]:
        cmd = [str(BIN / "ray"), "list", kind, "--address", c["dashboard"], "-f", where, "--format=json"]
        return json.loads(subprocess.run(cmd, timeout=60, check=True, **run).stdout)

    tasks = state("tasks", f"name={REFERENCE_TASK}")  # an entry per attempt
    head = {n["node_id"] for n in state("nodes", "is_head_node=True")}
    assert "FINISHED" in {t["state"] for t in tasks} and not {t["node_id"] for t in tasks} & head, (tasks, head)


def _training_node(gcs_address: str) -> tuple[int, str] | None:
    """(raylet pid, node id) of the node on which a Train worker of the cluster at `gcs_address` runs."""
    for pid in pids(lambda cmd: cmd.startswith(b"ray::RayTrainWorker")):
        raylet = _parent(pid)
        try:
            cmd = Path(f"/proc/{raylet}/cmdline").read_bytes()
        except (OSError, TypeError):
            continue
        found = re.search(rb"--node_id=(\w+)", cmd)
        if f"--gcs-address={gcs_address}".encode() in cmd and found:
            return raylet, found.group(1).decode()
    return None


def _lose_node(raylet: int, node_id: str) -> int:
    """A fake node disappears: its raylet, every process it started and its agent, SIGKILLed. How many."""
    doomed = [p for p in pids(lambda cmd: True) if _parent(p) == raylet]
    doomed += [raylet, *pids(lambda cmd: f"--node-id={node_id}".encode() in cmd)]
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(doomed)


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_a_worker_node_lost_mid_trial_is_survived_on_another_node(cluster):
    """The node a trial trains on disappears (its raylet and every process on it killed) past the trial's
    first checkpoint: the trial goes on from its last checkpoint on another node, the sweep finishes, and
    MLflow holds every point once. A reclaimed spot node is this case."""
    c, fake = cluster, cluster["fake"]
    root = c["tmp"] / "node-loss"
    cmd = sweep_cmd(
        root,
        None,
        c["cache"],
        "platform=cluster",
        "sweep.name=node_loss",
        "sweep.num_trials=1",
        "train.device=cpu",
        "sweep.ray.use_gpu=false",
        "sweep.ray.cpus_per_worker=1",
        f"+sweep.ray.worker_resources={{{FAKE_GPU}: 1}}",
        f"sweep.ray.cluster_config={fake.config_file}",
    )
    log = open(c["tmp"] / "node-loss.log", "w")
    driver = subprocess.Popen(cmd, env=c["env"], stdout=log, stderr=subprocess.STDOUT)

    def training_node() -> tuple[int, str] | None:
        past = any(e.get("step", 0) > EVAL_EVERY for e in record(root, "node_loss").get("trials", {}).values())
        return _training_node(fake.address) if past else None

    try:
        raylet, node = wait_for(training_node, 400, driver)
        assert _lose_node(raylet, node) >= 3
        rc = driver.wait(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
    said = (c["tmp"] / "node-loss.log").read_text()[-4000:]
    assert rc == 0, said
    facts = trial_facts(root, c["tracking"], "node_loss")
    (t,) = facts["trials"].values()
    assert (t["status"], t["step"], t["attempt"], t["mlflow_status"]) == ("finished", STEPS, 2, "FINISHED"), said
    assert t["resumed_from"] is not None and t["resumed_from"] >= EVAL_EVERY, t["resumed_from"]
    checked = audit(root, tracking_uri=c["tracking"], experiment="node_loss")
    assert (checked["duplicates"], checked["lost"]) == (0, 0) and checked["points"] > 0, checked
    dead = [n for n in fake.nodes() if n["node_id"] == node]
    assert dead and dead[0]["state"] == "DEAD"
