"""What the end-to-end tests and `benchmarks/faults.py` drive sweeps with: a throwaway Ray head on
127.0.0.1, a tiny sweep through the CLI, the sweep's record, processes to kill, and an audit of every
MLflow metric point; plus the two fault scenarios (a killed worker, a killed driver) and what surviving
each means."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the tests' S3 endpoint (tests/support/s3.py), for the lost-head scenario
    from tests.support.s3 import S3

BIN = Path(sys.executable).parent
# A throwaway head: token auth off for it and its clients alike, and on 127.0.0.1 only (see
# sweeps.runtime: Ray otherwise swaps a loopback node address for the machine's own).
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
STEPS, EVAL_EVERY, LOG_EVERY = 40, 10, 2
POINTS = (
    "sweep.points_to_evaluate=[{model.num_experts: 3, model.top_k: 1, model.lambda_dp: 1.0, model.prior_alpha: 4.0},"
    " {model.num_experts: 2, model.top_k: 1, model.lambda_dp: 0.5, model.prior_alpha: 2.0}]"
)


# Batches, evaluation and sample grids small enough that a trial's time goes to what a test checks.
TINY_EVAL = [
    "data.batch_size=16",
    "eval.num_samples=20",
    "eval.batch_size=20",
    "eval.steps=2",
    "eval.kid_subset_size=20",
    "eval.kid_subsets=2",
    "sample.per_class=1",
    "sample.steps=2",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Head(str):
    """A throwaway head's address, as sweeps take it, and the session its processes share (the head's
    pid): a test that kills a trial's process looks for it there, never in another head's."""

    session: int

    def __new__(cls, address: str, session: int) -> Head:
        head = super().__new__(cls, address)
        head.session = session
        return head


def start_head(temp: Path, num_cpus: int = 3, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Head]:
    """A Ray head on 127.0.0.1 with its dashboard (Train frees stopped trials' workers through it); its
    processes (trials, workers) get `env` (default ENV)."""
    env = env or ENV
    port, dash = free_port(), free_port()
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--num-cpus={num_cpus}",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            # Its own agent port: Ray's fixed default lets only one head per machine serve jobs.
            f"--dashboard-agent-listen-port={free_port()}",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # its own process group: stop_head ends every process it started
    )
    address = Head(f"127.0.0.1:{port}", head.pid)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (
            subprocess.run(
                [str(BIN / "ray"), "status", f"--address={address}"], capture_output=True, env=ENV
            ).returncode
            == 0
        ):
            return head, address
        if head.poll() is not None:
            break
        time.sleep(2)
    head.kill()
    raise RuntimeError("the Ray head did not start")


def stop_head(head: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the head's process group, then SIGKILL what is left after `grace_s`: a throwaway head
    keeps nothing worth a graceful shutdown."""
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(head.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    head.wait(timeout=30)


def sweep_cmd(
    root: Path,
    address: str | None,
    cache: Path | None,
    *extra: str,
    sweep: str = "design_space",
    log_every: int = LOG_EVERY,
) -> list[str]:
    """A tiny sweep, long enough (40 steps, an evaluation every 10) to be hit mid-trial. Any `sweep`
    is run under the name design_space; that one evaluates two given configurations first."""
    given = [POINTS, "sweep.baseline=none"] if sweep == "design_space" else ["sweep.name=design_space"]
    return [
        str(BIN / "switchsweep"),
        "sweep",
        f"sweep={sweep}",
        f"sweep.root={root}",
        *given,
        *([f"sweep.ray.address={address}"] if address else []),
        *([f"eval.cache_dir={cache}"] if cache else []),
        f"sweep.eval_every={EVAL_EVERY}",
        f"train.steps={STEPS}",
        f"train.log_every={log_every}",
        "sweep.asha=false",
        *TINY_EVAL,
        *extra,
    ]


def record(root: Path, name: str = "design_space") -> dict[str, Any]:
    """The record of the one sweep `name` under `root` as it is written, or {} before it exists."""
    from switchsweep.platform.sweep_record import SweepRecord

    found = [p for p in (root / "sweeps" / name).glob("*") if SweepRecord.exists(p)]
    return SweepRecord.load(found[0]).to_json() if found else {}


def wait_for(what, timeout: float, proc: subprocess.Popen | None = None, poll: float = 0.2) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = what()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the sweep exited ({proc.returncode}) before the fault could be injected")
        time.sleep(poll)
    raise TimeoutError("the sweep did not get there in time")


def pids(matches: Callable[[bytes], bool], session: int | None = None) -> list[int]:
    """PIDs of this machine's processes (but this one) whose command line (NUL-separated) `matches`,
    in process session `session` if given."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if (
                int(pid) != os.getpid()
                and (session is None or os.getsid(int(pid)) == session)
                and matches(Path(f"/proc/{pid}/cmdline").read_bytes())
            ):
                found.append(int(pid))
        except OSError:
            continue
    return sorted(found)


def train_workers(head: Head) -> list[int]:
    """PIDs of the Ray Train DDP worker processes of `head`."""
    return pids(lambda cmd: cmd.startswith(b"ray::RayTrainWorker"), head.session)


def inline_trials(head: Head) -> list[int]:
    """PIDs of the Tune trial processes of `head` (an inline trial trains in its own)."""
    return pids(lambda cmd: cmd.startswith(b"ray::ImplicitFunc"), head.session)


def _store(root: Path, tracking_uri: str | None = None, experiment: str = "design_space"):
    """The MLflow client of the sweep's store (its local one unless `tracking_uri`) and its experiment's id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri or f"sqlite:///{root.resolve() / 'mlflow.db'}")
    return client, client.get_experiment_by_name(experiment).experiment_id


def audit(
    root: Path, log_every: int = LOG_EVERY, tracking_uri: str | None = None, experiment: str = "design_space"
) -> dict[str, Any]:
    """Every metric point of the sweep's trial runs against the steps it should be at: a point logged
    at every log step (losses), every evaluation (metrics, routing), step 0 (model size) or the end
    (trial timing). Failed trials count for duplicates only."""
    client, exp = _store(root, tracking_uri, experiment)
    runs = client.search_runs([exp])
    trials = [r for r in runs if r.data.tags.get("switchsweep.role") == "trial"]
    points = duplicates = lost = 0
    for run in trials:
        final = int(run.data.metrics.get("step", 0))
        evals = set(range(EVAL_EVERY, final + 1, EVAL_EVERY)) | ({final} if final else set())
        logs = set(range(log_every, final + 1, log_every)) | evals
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            points += len(steps)
            duplicates += len(steps) - len(set(steps))
            if run.info.status == "FAILED":
                continue
            have = set(steps)
            want = (
                {0} if have == {0} else {final} if key.startswith("trial_") else logs if have - evals - {0} else evals
            )
            lost += len(want - have)
    return {"runs": len(runs), "trial_runs": len(trials), "points": points, "duplicates": duplicates, "lost": lost}


def _logged_loss_steps(root: Path) -> list[int]:
    client, exp = _store(root)
    runs = client.search_runs([exp], "tags.`switchsweep.role` = 'trial'")
    return [m.step for r in runs for m in client.get_metric_history(r.info.run_id, "loss")]


def worker_kill(
    root: Path, address: Head, cache: Path | None = None, at_step: int = 20, delay_s: float = 0.5, workers: int = 2
) -> dict[str, Any]:
    """SIGKILL one of a 2-worker trial's DDP workers (workers=1: the process of the trial, which trains
    inline) `delay_s` after it reported step `at_step`, so steps past that checkpoint are already in
    MLflow when the restarted attempt runs them again."""
    log = open(root.parent / f"{root.name}-worker-kill.log", "w")
    cmd = sweep_cmd(root, address, cache, "sweep.num_trials=1", f"sweep.ray.num_workers={workers}")
    driver = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV)
    steps = lambda: [e.get("step", 0) for e in record(root).get("trials", {}).values()]  # noqa: E731
    find = train_workers if workers > 1 else inline_trials
    wait_for(lambda: any(s >= at_step for s in steps()) and find(address), 400, driver)
    time.sleep(delay_s)
    workers = find(address)
    if not workers:
        driver.kill()
        raise RuntimeError(
            f"the trial ended within {delay_s} s of its step-{at_step} report, before a worker could be "
            "killed: lower delay_s"
        )
    os.kill(workers[-1], signal.SIGKILL)
    logged = max(_logged_loss_steps(root), default=0)
    rc = driver.wait(timeout=600)
    return {"rc": rc, "logged_before_kill": logged, **trial_facts(root), **audit(root), "log": log.name}


def trial_facts(root: Path, tracking_uri: str | None = None, experiment: str = "design_space") -> dict[str, Any]:
    """The record's trials, each with what MLflow holds of it (status, where it resumed from, loop times)."""
    state = record(root, experiment)
    client, exp = _store(root, tracking_uri, experiment)
    out: dict[str, Any] = {"status": state.get("status"), "trials": state.get("trials", {})}
    for run in client.search_runs([exp], "tags.`switchsweep.role` = 'trial'"):
        tid = run.data.tags["switchsweep.trial_id"]
        loop = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loop_s")}
        resumed = run.data.tags.get("switchsweep.resumed_from_step")
        out["trials"].setdefault(tid, {}).update(
            mlflow_status=run.info.status,
            resumed_from=int(resumed) if resumed else None,
            loop_s_history=loop,
            end_time=run.info.end_time,
            checkpoint=run.data.tags.get("switchsweep.checkpoint"),
            artifacts=sorted(a.path for a in client.list_artifacts(run.info.run_id)),
        )
    return out


def worker_kill_survived(r: dict[str, Any]) -> bool:
    (t,) = r["trials"].values()
    resumed = t.get("resumed_from")
    return (
        r["rc"] == 0
        and t["status"] == "finished"
        and t["step"] == STEPS
        and t.get("attempt") == 2
        and resumed is not None
        and t["loop_s"] > t["loop_s_history"].get(resumed, float("inf"))
        and r["duplicates"] == 0
        and r["lost"] == 0
    )


def driver_kill(root: Path, address: str, cache: Path | None = None) -> dict[str, Any]:
    """SIGKILL the driver of a 2-configuration sweep once its first trial is over and its second has
    reported past a checkpoint; a second driver is refused while `--resume` finishes the sweep."""
    log = open(root.parent / f"{root.name}-driver-kill.log", "w")
    cmd = sweep_cmd(root, address, cache, "sweep.num_trials=2", "sweep.ray.num_workers=1")

    def second_under_way() -> bool:
        # Past the checkpoint's report, not at it: Tune snapshots its state (the checkpoint with it) while
        # handling that report, which may end after the record has it; a later report means it is done.
        entries = list(record(root).get("trials", {}).values())
        return any(e.get("status") == "finished" for e in entries) and any(
            e.get("status") == "running" and e.get("step", 0) > EVAL_EVERY for e in entries
        )

    driver = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV)
    wait_for(second_under_way, 600, driver)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    before = trial_facts(root)
    sweep_dir = next((root / "sweeps" / "design_space").iterdir())
    from switchsweep.platform.sweep_dir import SweepDir
    from switchsweep.platform.sweep_record import sweep_status

    status_after_kill = sweep_status(sweep_dir)
    resumed = subprocess.Popen([*cmd, "--resume"], stdout=log, stderr=subprocess.STDOUT, env=ENV)
    lock = SweepDir(sweep_dir).lock
    wait_for(lambda: lock.is_file() and f"pid {resumed.pid} " in lock.read_text(), 120, resumed)
    second = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=ENV, timeout=120)
    rc = resumed.wait(timeout=600)
    after = trial_facts(root)
    return {
        "rc": rc,
        "status_after_kill": status_after_kill,
        "second_driver": (second.returncode, second.stderr),
        "before": before,
        **after,
        **audit(root),
        "log": log.name,
    }


def start_mlflow(database: str, artifacts: str, log: Path, env: dict[str, str] = ENV) -> tuple[subprocess.Popen, str]:
    """An MLflow server on 127.0.0.1 over `database` (its URI, password included, in the server's environment
    only, as the cluster's head runs it, without MLflow's job runner) serving the artifacts it keeps in
    `artifacts`: it and its address."""
    from switchsweep.platform.tracking import SERVER_ENV

    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        + ["--artifacts-destination", artifacts, "--serve-artifacts"],
        env={**env, **SERVER_ENV, "MLFLOW_BACKEND_STORE_URI": database},
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),
        start_new_session=True,  # its own process group: its workers stop with it
    )
    tracking = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{tracking}/health"), 180, server, poll=1)
    except (RuntimeError, TimeoutError):
        os.killpg(server.pid, signal.SIGKILL)
        raise
    return server, tracking


def _head_with_mlflow(tmp: Path, name: str, database: str, bucket: str, env: dict[str, str]) -> dict[str, Any]:
    """A throwaway Ray head and an MLflow server over `database` with its artifacts in `bucket`, as a
    cluster's head runs them; `env` reaches the bucket."""
    temp = Path(tempfile.mkdtemp(prefix=f"ss{name}-", dir="/tmp"))  # short: Ray's unix sockets live there
    head, address = start_head(temp, env=env)
    try:
        server, tracking = start_mlflow(database, f"{bucket}/mlflow", tmp / f"mlflow-{name}.log", env)
    except BaseException:  # no head left behind by a server that did not start
        stop_head(head)
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return {"head": head, "address": address, "mlflow": server, "tracking": tracking, "temp": temp}


def _answers(url: str) -> bool:
    import urllib.request

    try:
        urllib.request.urlopen(url, timeout=2).close()
        return True
    except OSError:
        return False


def _lose(node: dict[str, Any]) -> None:
    for proc in (node["mlflow"], node["head"]):  # every process of each: SIGKILL, as a lost machine
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
    shutil.rmtree(node["temp"], ignore_errors=True)


def lost_head(tmp: Path, cache: Path | None, database: str, bucket: S3) -> dict[str, Any]:
    """Lose the head of a 3-configuration sweep: its driver, Ray head (with the trial processes) and MLflow
    server are SIGKILLed once one trial is over and another has reported past a checkpoint in the bucket's
    copy of Tune's state. A new head, with an empty home but the same bucket and database, resumes it with
    --resume; a second driver there is refused meanwhile."""
    env = {**ENV, **bucket.env}
    storage = f"sweep.ray.storage_path=s3://{bucket.bucket}/switchsweep"
    roots = [tmp / "home-1" / "runs", tmp / "home-2" / "runs"]
    first = _head_with_mlflow(tmp, "lh1", database, f"s3://{bucket.bucket}", env)
    second, drivers = None, []
    try:
        cmd = sweep_cmd(roots[0], first["address"], cache, "sweep.num_trials=3", storage)
        log = open(tmp / "lost-head.log", "w")
        driver = subprocess.Popen(
            [*cmd, f"sweep.tracking_uri={first['tracking']}"], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        drivers.append(driver)

        # As in driver_kill, past the checkpoint's report, not at it; and as the bucket has it: Tune copies its
        # state there every few seconds and after every KEPT_CHECKPOINTS checkpoints of a trial, and a new head
        # resumes from that copy alone.
        wait_for(lambda: _under_way(_tune_trials(bucket)), 600, driver, poll=0.5)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        before = trial_facts(roots[0], first["tracking"])
        _lose(first)
        shutil.rmtree(roots[0].parent)  # the old head's disk is gone with it

        second = _head_with_mlflow(tmp, "lh2", database, f"s3://{bucket.bucket}", env)
        again = sweep_cmd(roots[1], second["address"], cache, "sweep.num_trials=3", storage)
        again += [f"sweep.tracking_uri={second['tracking']}", "--resume"]
        resumed = subprocess.Popen(again, stdout=log, stderr=subprocess.STDOUT, env=env)
        drivers.append(resumed)
        wait_for(lambda: record(roots[1]).get("status") == "running" and _locked(roots[1]), 120, resumed)
        refused = subprocess.run(again, capture_output=True, text=True, env=env, timeout=120)
        rc = resumed.wait(timeout=600)
        after = trial_facts(roots[1], second["tracking"])
        return {
            "rc": rc,
            "second_driver": (refused.returncode, refused.stderr),
            "before": before,
            **after,
            **audit(roots[1], tracking_uri=second["tracking"]),
            "sweep_dir": next((roots[1] / "sweeps" / "design_space").iterdir()),
            "log": log.name,
        }
    finally:
        for driver in drivers:  # a driver a failed wait left running
            if driver.poll() is None:
                driver.kill()
                driver.wait(timeout=30)
        if second is not None:
            _lose(second)
        elif first["head"].poll() is None:
            _lose(first)


def _under_way(trials: list[tuple[str, int]]) -> bool:
    """One trial over and another past its first checkpoint, from (Tune status, last step) pairs."""
    return any(s == "TERMINATED" for s, _ in trials) and any(s == "RUNNING" and n > EVAL_EVERY for s, n in trials)


def _tune_trials(bucket: S3) -> list[tuple[str, int]]:
    """(status, last reported step) of each trial in the newest copy of Tune's experiment state in `bucket`."""
    import json

    client = bucket.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket.bucket, Prefix="switchsweep/")
    states = [o for page in pages for o in page.get("Contents", []) if "/tune/experiment_state-" in o["Key"]]
    if not states:
        return []
    newest = max(states, key=lambda o: o["LastModified"])["Key"]
    state = json.loads(client.get_object(Bucket=bucket.bucket, Key=newest)["Body"].read())
    trials = [(json.loads(t), json.loads(meta)) for t, meta in state["trial_data"]]
    return [(t["status"], m["last_result"].get("step", 0)) for t, m in trials]


def _locked(root: Path) -> bool:
    from switchsweep.platform.sweep_record import is_locked

    found = list((root / "sweeps" / "design_space").glob("*"))
    return bool(found) and is_locked(found[0])


def resume_survived(r: dict[str, Any], trials: int) -> bool:
    """A sweep of `trials` trials cut with one finished and one past a checkpoint (a killed driver, a lost
    head), then resumed with --resume: a second driver refused meanwhile, the finished trial not run again,
    the cut one going on from its checkpoint, every trial at its last step, one MLflow run each (and the
    parent's) and no metric point lost or logged twice."""
    before, after = r["before"]["trials"], r["trials"]
    over = [t for t, e in before.items() if e.get("status") == "finished"]
    cut = [t for t, e in before.items() if e.get("status") == "running"]
    return (
        r["rc"] == 0
        and r["status"] == "finished"
        and r["second_driver"][0] == 2
        and len(over) == 1
        and all(after[t][key] == before[t][key] for t in over for key in ("end_time", "wall_s"))
        and len(cut) == 1
        and (after[cut[0]].get("resumed_from") or 0) >= EVAL_EVERY
        and len(after) == trials
        and all(e["step"] == STEPS for e in after.values())
        and (r["runs"], r["trial_runs"], r["duplicates"], r["lost"]) == (trials + 1, trials, 0, 0)
    )
