"""deploy/mlflow-service.sh, the head's MLflow start, run here in a made-up head's home: the server it starts
(an `mlflow` that records what it was given), the database URI reaching it through its environment only,
a second run replacing the first server, and the systemd unit it writes for the cluster's images."""

import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
URI = "postgresql://mlflow:s3cr%24t@db.internal:5432/mlflow"
# Records its arguments and environment, then stays up as a server would.
FAKE_MLFLOW = """#!/usr/bin/env bash
printf '%s\\n' "$*" > "$HOME/given-args"
printf '%s\\n' "$MLFLOW_SERVER_ENABLE_JOB_EXECUTION" > "$HOME/given-jobs"
printf '%s\\n' "$MLFLOW_AUTH_ADMIN_PASSWORD" > "$HOME/given-password"
printf '%s\\n' "$MLFLOW_AUTH_CONFIG_PATH" > "$HOME/given-auth"
printf '%s\\n' "$MLFLOW_BACKEND_STORE_URI" > "$HOME/given-uri"
while :; do sleep 0.5; done
"""


def _head(tmp: Path, db: str | None) -> Path:
    home = tmp / "home"
    venv_bin = home / "switchsweep" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "mlflow").write_text(FAKE_MLFLOW)
    (venv_bin / "mlflow").chmod(0o755)
    (home / "switchsweep.env").write_text(f"export SWITCHSWEEP_STORAGE={tmp / 'bucket'}\n")
    if db is not None:
        (home / ".switchsweep").mkdir()
        (home / ".switchsweep" / "mlflow-db").write_text(db + "\n")
    return home


def _start(home: Path) -> int:
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    done = subprocess.run(
        ["bash", str(REPO / "deploy" / "mlflow-service.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    deadline = time.time() + 20
    while not (home / "given-uri").exists() and time.time() < deadline:
        time.sleep(0.1)
    return int((home / ".switchsweep" / "mlflow.pid").read_text())


def _login(home: Path) -> str:
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    cmd = ["bash", str(REPO / "deploy" / "mlflow-service.sh"), "login"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30, check=True).stdout


def _running(pid: int) -> bool:
    """Alive, not a zombie awaiting its reaper."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _stop(pid: int) -> None:
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        pass


@pytest.mark.skipif(os.path.isdir("/run/systemd/system"), reason="a machine with systemd would install the unit")
def test_the_server_gets_the_database_uri_from_its_environment_and_a_restart_replaces_it(tmp_path):
    home = _head(tmp_path, URI)
    first = _start(home)
    try:
        args = (home / "given-args").read_text().split()
        assert args[:2] == ["server", "--host"] and args[3:] == [
            "--port",
            "5000",
            "--artifacts-destination",
            f"{tmp_path / 'bucket'}/mlflow",
            "--serve-artifacts",
            "--app-name",
            "basic-auth",
        ]
        assert (home / "given-uri").read_text().strip() == URI
        assert (home / "given-jobs").read_text().strip() == "false"  # no GenAI job runner
        assert "s3cr" not in Path(f"/proc/{first}/cmdline").read_text()  # not in the process list
        env_file = home / ".switchsweep" / "mlflow.env"
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600 and URI in env_file.read_text()
        assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in env_file.read_text()  # the systemd unit's too
        # A login: the head's own user and random password, in a file of mode 600 and the server's environment.
        login = home / ".switchsweep" / "mlflow-login"
        user, password, key = login.read_text().strip().split(":")
        assert stat.S_IMODE(login.stat().st_mode) == 0o600 and user == "switchsweep" and len(password) == len(key) == 32
        assert f"MLFLOW_FLASK_SERVER_SECRET_KEY={key}" in env_file.read_text()
        assert (home / "given-password").read_text().strip() == password and password not in Path(
            f"/proc/{first}/cmdline"
        ).read_text()
        auth = Path((home / "given-auth").read_text().strip()).read_text()
        assert "admin_username = switchsweep" in auth and "default_permission = NO_PERMISSIONS" in auth
        printed = _login(home)
        assert printed == f"export MLFLOW_TRACKING_USERNAME=switchsweep\nexport MLFLOW_TRACKING_PASSWORD={password}\n"

        # The unit a head with systemd installs: it starts the same server at boot and again if it exits.
        unit = (home / ".switchsweep" / "switchsweep-mlflow.service").read_text()
        assert f"EnvironmentFile={home}/.switchsweep/mlflow.env" in unit and "Restart=always" in unit
        assert f"ExecStart={home}/switchsweep/.venv/bin/mlflow server --host " in unit and "s3cr" not in unit
        if shutil.which("systemd-analyze"):
            check = subprocess.run(
                ["systemd-analyze", "verify", str(home / ".switchsweep" / "switchsweep-mlflow.service")],
                capture_output=True,
                text=True,
            )
            assert check.returncode == 0, check.stderr

        # Started again (`ray up` on a rebooted head runs the start commands again): one server, the new one.
        (home / "given-uri").unlink()
        second = _start(home)
        assert second != first and not _running(first) and _running(second)
        assert _login(home) == printed  # the same login: the clients' environment stays right
    finally:
        _stop(int((home / ".switchsweep" / "mlflow.pid").read_text()))
        _stop(first)


@pytest.mark.skipif(os.path.isdir("/run/systemd/system"), reason="a machine with systemd would install the unit")
def test_an_empty_database_file_keeps_the_runs_in_sqlite_on_the_head(tmp_path):
    home = _head(tmp_path, "")
    pid = _start(home)
    try:
        assert (home / "given-uri").read_text().strip() == f"sqlite:///{home}/mlflow.db"
    finally:
        _stop(pid)
