"""cluster.yaml's own commands, run by Ray's cluster launcher over SSH on this machine.

A launcher config is derived from cluster.yaml with Ray's `local` provider: every command section and
the file mounts are kept verbatim, only the provider, the SSH login and the node types (the local
provider has one, made from the nodes it is given) change, plus the one EDIT value a real cluster
needs set: the bucket, here a folder both nodes see. The nodes are sshd in namespaces of their own
(`ssh_nodes`), a head and a worker on a bridge with this machine. The head's image already holds this
checkout's environment (`~/switchsweep/.venv` is linked to it), as a built image would, so its
`make install EXTRAS=` has nothing left to do; the worker's has none: its setup installs everything from
scratch, from the package registry, which it reaches through an HTTPS proxy on this machine
(`registry_proxy`, named in the node's pip.conf) as a cloud node reaches it directly. Everything else runs
as written.

Then, as an operator would: `make cluster-up`, the head's Ray with token auth, the MLflow server on its
port keeping runs in a PostgreSQL database (a server on this machine, reached over the bridge, as a
managed one would be), `make cluster-sweep` running a 1-trial sweep on the worker to FINISHED, and
`make cluster-down`.
"""

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest
import yaml
from mlflow.tracking import MlflowClient

from switchsweep.trainers.evaluation.features import DigitsClassifier
from tests.support import postgres, s3
from tests.support.fake_cluster import wait_http
from tests.support.registry_proxy import RegistryProxy
from tests.support.ssh_nodes import Bridge, SshNode, available, make_key, port_open
from tests.support.sweep_harness import BIN, TINY_EVAL, free_port

REPO = Path(__file__).resolve().parents[2]
# Kept verbatim from cluster.yaml (but for the bucket's EDIT value).
SECTIONS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
    "file_mounts",
    "rsync_exclude",
)
BUCKET = "s3://my-bucket/switchsweep"  # cluster.yaml's placeholder, marked EDIT
SUBNET = "10.231.7"
HERE_IP, HEAD_IP, WORKER_IP = f"{SUBNET}.254", f"{SUBNET}.1", f"{SUBNET}.2"
WATCHDOG_S = 12  # the worker's watchdog bound here (10 minutes on a cluster)
DASHBOARD = "http://127.0.0.1:8265"  # forwarded by `make cluster-ui`, as the Ray job commands of docs/cluster.md expect


def launcher_config(cluster_yaml: Path, key: Path, bucket: Path) -> dict:
    """cluster.yaml for the local provider (see the module): provider, auth and node types replaced,
    the bucket set; the rest as it is."""
    real = yaml.safe_load(cluster_yaml.read_text())
    text = json.dumps({s: real.get(s, []) for s in SECTIONS})
    assert text.count(BUCKET) == 1, f"cluster.yaml should name the bucket once, as {BUCKET}"
    derived = {k: v for k, v in real.items() if k not in ("provider", "auth", "available_node_types", "head_node_type")}
    derived.update(json.loads(text.replace(BUCKET, str(bucket))))
    derived["provider"] = {"type": "local", "head_ip": HEAD_IP, "worker_ips": [WORKER_IP]}
    derived["auth"] = {"ssh_user": "root", "ssh_private_key": str(key)}
    return derived


def _run(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _get(url: str, token: str | None = None, basic: tuple[str, str] | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if basic:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(basic).encode()).decode()
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def _has(path, text: str) -> bool:
    try:
        return text.encode() in Path(path).read_bytes()
    except OSError:
        return False


def _alive_nodes(token: str) -> list[dict]:
    """The cluster's live nodes' resources, from Ray's state API (through `make cluster-ui`)."""
    status, body = _get(f"{DASHBOARD}/api/v0/nodes?limit=100", token)
    assert status == 200, status
    listed = json.loads(body)["data"]["result"]["result"]
    return [n["resources_total"] for n in listed if n["state"] == "ALIVE"]


def _job_status(job: str, token: str) -> str:
    status, body = _get(f"{DASHBOARD}/api/jobs/{job}", token)
    assert status == 200, status
    return json.loads(body)["status"]


def _in_namespace(node: SshNode, program: str) -> list[int]:
    """The pids of `program` among the processes of `node`'s network namespace."""
    pids = subprocess.run(["ip", "netns", "pids", node.netns], capture_output=True, text=True, check=True).stdout
    return [int(p) for p in pids.split() if _has(f"/proc/{p}/cmdline", program)]


def _installed_from_scratch(worker: SshNode, proxy: RegistryProxy) -> float:
    """The worker's `make install EXTRAS=` built its own environment from the registry, every version the
    one constraints.txt pins; how long it took (the environment's folder made to its stamp)."""
    venv = worker.home / "switchsweep" / ".venv"
    assert venv.is_dir() and not venv.is_symlink(), "the worker has no environment of its own"
    assert proxy.hosts["pypi.org"] > 0 and proxy.hosts["files.pythonhosted.org"] > 0, dict(proxy.hosts)
    freeze = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "freeze", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def named(lines: list[str]) -> dict[str, str]:  # a version without its build label (torch's +cpu)
        pairs = (line.partition("==") for line in lines if "==" in line)
        return {re.sub(r"[-_.]+", "-", n.lower()): v.split("+")[0] for n, _, v in pairs}

    installed, pins = named(freeze.split()), named((REPO / "constraints.txt").read_text().splitlines())
    wrong = {n: (v, installed[n]) for n, v in pins.items() if n in installed and installed[n] != v}
    assert not wrong and len(installed) > 100, wrong or freeze
    assert "pytest" not in installed, "a node installs no test tools"
    return (venv / ".installed-stamp").stat().st_mtime - (venv / "pyvenv.cfg").stat().st_mtime


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    why = available() or postgres.available()
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("launch")
    key = make_key(tmp)
    bridge = Bridge(f"ssbr{os.getpid() % 100000}", HERE_IP)
    started: list[SshNode] = []
    db = postgres.Postgres(free_port(), hosts=("127.0.0.1", HERE_IP), network=f"{SUBNET}.0/24")
    proxy = RegistryProxy(HERE_IP, free_port()).start()
    aws = s3.S3(free_port(), host=HERE_IP).start()  # SSM for the head's setup
    # The environment's Python, where it lives in root's home (pyenv): the node's root has another home.
    keep = tuple(p for p in (Path(sys.base_prefix),) if p.is_relative_to("/root"))
    try:
        for name, ip in (("head", HEAD_IP), ("worker", WORKER_IP)):
            home = tmp / name / "home"
            home.mkdir(parents=True)
            (home / "switchsweep").mkdir()
            if name == "head":
                (home / "switchsweep" / ".venv").symlink_to(BIN.parent)  # the built image's environment
                (home / ".aws").mkdir()  # the head's instance profile: its credentials, its region's endpoint
                (home / ".aws" / "config").write_text(f"[default]\nregion = us-east-1\nendpoint_url = {aws.endpoint}\n")
                (home / ".aws" / "credentials").write_text(
                    "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n"
                )
            else:  # a bare image: the registry through the proxy; the watchdog's bound short, its shutdown recorded
                # Its python3 is the head's, as a cluster's images share one (Ray refuses a node of another).
                (home / ".bashrc").write_text(f"export PATH={Path(sys.base_prefix) / 'bin'}:$PATH\n")
                (home / ".config" / "pip").mkdir(parents=True)
                (home / ".config" / "pip" / "pip.conf").write_text(f"[global]\nproxy = {proxy.url}\n")
                (home / ".switchsweep").mkdir()
                (home / ".switchsweep" / "watchdog.env").write_text(
                    f"SWITCHSWEEP_WATCHDOG_S={WATCHDOG_S}\nSWITCHSWEEP_WATCHDOG_EVERY_S=1\n"
                    "SWITCHSWEEP_WATCHDOG_SHUTDOWN='date +%s > ~/shutdown-called'\n"
                )
            started.append(SshNode(f"ss{name}{os.getpid() % 100000}", ip, home, key.with_suffix(".pub"), bridge, keep))
        db.start()
        yield {"tmp": tmp, "key": key, "head": started[0], "worker": started[1], "db": db, "proxy": proxy, "aws": aws}
    finally:
        for node in started:
            node.stop()
        db.stop()
        proxy.stop()
        aws.stop()
        bridge.delete()


def test_cluster_yaml_comes_up_over_ssh_and_runs_a_sweep(nodes, digits_net, monkeypatch):
    tmp, head = nodes["tmp"], nodes["head"]
    bucket = tmp / "bucket"
    bucket.mkdir()
    config = tmp / "cluster-local.yaml"
    config.write_text(yaml.safe_dump(launcher_config(REPO / "cluster.yaml", nodes["key"], bucket)))
    laptop = tmp / "laptop"  # the operator's machine: its own home (the Ray token) and launcher state
    (laptop / "ray").mkdir(parents=True)
    env = {**os.environ, "HOME": str(laptop), "RAY_TMPDIR": str(laptop / "ray"), "PYTHONUNBUFFERED": "1"}
    # Ray's v2 autoscaler (the default on AWS) never starts the local provider's listed workers: its
    # reconciler does not find them among the provider's instances. The v1 autoscaler does.
    env["RAY_UP_enable_autoscaler_v2"] = "0"
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        env.pop(name, None)
    # MLflow's database, a PostgreSQL server on this machine that the head reaches over the bridge (as a
    # cluster's head reaches a managed one), named in the operator's file, which `make cluster-account` puts
    # in SSM (here the AWS endpoint on the bridge), where only the head's setup reads it.
    db, aws = nodes["db"], nodes["aws"]
    env.update(aws.env)
    (laptop / ".switchsweep").mkdir()
    (laptop / ".switchsweep" / "mlflow-db").write_text(db.uri("mlflow", host=HERE_IP))
    put = _run([sys.executable, str(REPO / "deploy" / "aws" / "mlflow_db.py"), "put"], env, 60)
    assert put.returncode == 0 and db.password not in put.stdout + put.stderr, put.stderr
    make = ["make", f"VENV={BIN.parent}", f"CLUSTER={config}"]
    t0 = time.time()

    up = _run([*make, "cluster-up"], env, 900)
    up_s = time.time() - t0
    ui = None
    try:
        assert up.returncode == 0, up.stdout[-5000:] + up.stderr[-3000:]
        token = (laptop / ".ray" / "auth_token").read_text().strip()
        assert (head.home / ".ray" / "auth_token").read_text().strip() == token, "the token mount reached the head"

        # `make cluster-ui`: the dashboard and MLflow through SSH on this machine's loopback.
        ui = subprocess.Popen(
            [*make, "cluster-ui"],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_http(f"{DASHBOARD}/api/version", 120, ui)
        # The head's Ray asks for the token: the dashboard refuses a request without it.
        assert _get(f"{DASHBOARD}/api/jobs/")[0] == 401
        assert _get(f"{DASHBOARD}/api/jobs/", token)[0] == 200

        # MLflow, started by head_start_ray_commands, answers, with its runs in the database.
        tracking = "http://127.0.0.1:5000"
        try:
            wait_http(f"{tracking}/health", 180, ui)  # MLflow's start takes a while beside other tests
        except TimeoutError:
            pytest.fail("the MLflow server of head_start_ray_commands never answered on the head's port 5000")
        assert _get(f"{tracking}/health")[0] == 200
        # It takes a login: the head's own (~/.switchsweep/mlflow-login), which its sweeps log in with.
        user, password, _ = (head.home / ".switchsweep" / "mlflow-login").read_text().strip().split(":")
        search = f"{tracking}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _get(search)[0] == 401, "MLflow answered without a login"
        assert _get(search, basic=(user, password))[0] == 200 and _get(search, basic=(user, "wrong"))[0] == 401
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        said = _run([*make, "-s", "cluster-login"], env, 120)  # the laptop's copy, as docs/cluster.md says
        assert said.stdout.split() == [
            "export",
            f"MLFLOW_TRACKING_USERNAME={user}",
            "export",
            f"MLFLOW_TRACKING_PASSWORD={password}",
        ], said.stdout + said.stderr[-2000:]
        assert _get(f"http://{HEAD_IP}:5000/health")[0] == 200, "the worker nodes cannot reach MLflow"
        assert not (head.home / "mlflow.db").exists(), "MLflow's runs belong in the database, not the head's disk"

        # The local provider starts its worker once the head is up, and it installs everything first.
        deadline = time.time() + 900
        while len(alive := _alive_nodes(token)) < 2 and time.time() < deadline:
            time.sleep(3)
        assert len(alive) == 2, f"the worker never joined: {alive}"
        assert [n.get("CPU", 0) for n in alive if "TRAIN_DRIVER" in n] == [0], "the head trains nothing"
        joined_s = time.time() - t0
        install_s = _installed_from_scratch(nodes["worker"], nodes["proxy"])

        args = [
            "sweep.num_trials=1",
            "sweep.baseline=none",
            "sweep.asha=false",
            "sweep.eval_every=4",
            "train.steps=4",
            "train.log_every=2",
            "train.device=cpu",  # no CUDA here; the trial runs on the worker's CPUs
            "sweep.ray.use_gpu=false",
            "sweep.ray.shared_fs=true",  # the "bucket" is a folder both nodes see
            *TINY_EVAL,
        ]
        # platform=cluster keeps the evaluation cache in the bucket: the classifier is there already (as if
        # an earlier sweep had trained it), the driver adds the reference features, the worker reads both.
        (bucket / "eval-cache").mkdir()
        shutil.copy(digits_net[2] / f"{DigitsClassifier.name}.pt", bucket / "eval-cache")
        ray_env = {**env, "RAY_AUTH_MODE": "token"}  # the token: ~/.ray/auth_token
        submit = _run([*make, "cluster-sweep", f"ARGS={' '.join(args)}"], env, 300)
        assert submit.returncode == 0, (submit.stdout + submit.stderr)[-4000:]
        (job,) = set(re.findall(r"raysubmit_\w+", submit.stdout + submit.stderr))
        deadline = time.time() + 600
        while (state := _job_status(job, token)) not in ("SUCCEEDED", "FAILED", "STOPPED") and time.time() < deadline:
            time.sleep(3)
        logs = _run([str(BIN / "ray"), "job", "logs", "--address", DASHBOARD, job], ray_env, 60)
        assert state == "SUCCEEDED", (state, (logs.stdout + logs.stderr)[-6000:])
        sweep_s = time.time() - t0 - joined_s

        client = MlflowClient(tracking)
        (exp,) = [e for e in client.search_experiments() if e.name == "design_space"]
        (run,) = client.search_runs([exp.experiment_id], "tags.`switchsweep.role` = 'trial'")
        assert run.info.status == "FINISHED" and run.data.metrics["step"] == 4 and "kid_x1e3" in run.data.metrics
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [2, 4]  # every point
        assert list(bucket.glob(f"mlflow/{exp.experiment_id}/{run.info.run_id}")), "artifacts go to the bucket"
        assert list(bucket.glob("design_space/*/tune")), "Tune's state goes to the bucket"
        assert list(bucket.glob("eval-cache/ref-digits-*.pt")), "the reference features are shared in the bucket"
        with psycopg.connect(db.uri("mlflow")) as conn:
            (stored,) = conn.execute("select status from runs where run_uuid = %s", (run.info.run_id,)).fetchone()
        assert stored == "FINISHED", "the run is in the database"
        # The database's password reached the server through its environment only: in no command line, log,
        # or file of the sweep's.
        assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and _has(f"/proc/{pid}/cmdline", db.password)]
        assert not _has(head.home / "mlflow.log", db.password)
        assert not [p for p in bucket.rglob("*") if p.is_file() and _has(p, db.password)]
        # It reached the head alone: its setup's file (mode 600); no file, environment or command line of the
        # worker's holds it.
        secret = head.home / ".switchsweep" / "mlflow-db"
        assert _has(secret, db.password) and secret.stat().st_mode & 0o777 == 0o600
        worker = nodes["worker"]
        venv = worker.home / "switchsweep" / ".venv"
        assert not [p for p in worker.home.rglob("*") if p.is_file() and venv not in p.parents and _has(p, db.password)]
        on_worker = _in_namespace(worker, "")  # every process there
        held = [p for p in on_worker for f in ("environ", "cmdline") if _has(f"/proc/{p}/{f}", db.password)]
        assert on_worker and not held, held

        # The worker's watchdog leaves a head that is only busy alone: its Ray's GCS frozen (SIGSTOP) for
        # twice the bound still accepts connections.
        gcs = _in_namespace(head, "gcs_server")
        assert gcs, "no gcs_server in the head's namespace"
        for pid in gcs:
            os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(2 * WATCHDOG_S + 1)
        finally:
            for pid in gcs:
                os.kill(pid, signal.SIGCONT)
        shutdown = nodes["worker"].home / "shutdown-called"
        assert not shutdown.exists(), (nodes["worker"].home / "watchdog.log").read_text()
    finally:
        if ui is not None:
            os.killpg(ui.pid, signal.SIGTERM)
            ui.wait(timeout=30)
        down = _run([*make, "cluster-down"], env, 300)
    assert down.returncode == 0, (down.stdout + down.stderr)[-4000:]
    assert not port_open(HEAD_IP, 6379), "the head's Ray is still up after cluster-down"
    # The head is gone: the worker's watchdog shuts its node down within its bound, saying why.
    gone = time.time()
    while not shutdown.exists() and time.time() < gone + WATCHDOG_S + 20:
        time.sleep(1)
    assert shutdown.exists(), (nodes["worker"].home / "watchdog.log").read_text()
    assert int(shutdown.read_text()) - gone < WATCHDOG_S + 10
    reason = (nodes["worker"].home / "watchdog.log").read_text().splitlines()[-1]
    assert f"the head {HEAD_IP}:6379 has not answered for" in reason and reason.endswith("shutting this node down")
    print(
        f"\nray up over SSH: head up in {up_s:.0f} s, worker joined at {joined_s:.0f} s "
        f"(its install from scratch {install_s:.0f} s), "
        f"1-trial sweep {sweep_s:.0f} s, {time.time() - t0:.0f} s in all",
        file=sys.stderr,
    )
