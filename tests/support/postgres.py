"""A throwaway PostgreSQL server: its own cluster in a temp folder, on 127.0.0.1 at a free port, with a
password, stopped by its own pid. Run by the `postgres` system user when the tests run as root (the
server refuses root), as the tests' own user otherwise."""

from __future__ import annotations

import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

_INSTALLED = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))


def available() -> str | None:
    """Why a server cannot be started here, or None."""
    if not _INSTALLED and not shutil.which("postgres"):
        return "no PostgreSQL server on this machine: apt-get install -y postgresql (.ci/run does)"
    if importlib.util.find_spec("psycopg") is None:
        return "psycopg is not installed: pip install -e '.[dev]'"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root with no `postgres` user to run the server as (Debian's package makes one)"
    return None


class Postgres:
    """`start()`, then `uri(database)`; `stop()` shuts the server down fast and deletes its folder."""

    USER = "switchsweep"

    def __init__(self, port: int, hosts: tuple[str, ...] = ("127.0.0.1",), network: str | None = None):
        """Listening on `hosts`, answering clients on loopback and, with a password too, in `network` (a CIDR)."""
        self.port, self.password = port, secrets.token_hex(12)
        self.hosts, self.network = hosts, network
        self.bin = _INSTALLED[-1].parent if _INSTALLED else Path(shutil.which("postgres")).parent
        self.folder = Path(tempfile.mkdtemp(prefix="sspg-", dir="/tmp"))  # short: its unix socket lives here
        self.proc: subprocess.Popen | None = None
        self._as = {}
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
            self._as = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}

    def uri(self, database: str, host: str = "127.0.0.1") -> str:
        return f"postgresql://{self.USER}:{self.password}@{host}:{self.port}/{database}"

    def _run(self, *cmd: str) -> None:
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=self.folder, **self._as)
        if done.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {done.stderr.strip()[-2000:]}")

    def start(self, databases: tuple[str, ...] = ("mlflow",)) -> Postgres:
        secret = self.folder / "pw"
        secret.write_text(self.password)
        if self._as:
            os.chown(secret, self._as["user"], self._as["group"])
        data = self.folder / "data"
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(data),
            "-U",
            self.USER,
            f"--pwfile={secret}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        )
        secret.unlink()
        if self.network:
            with open(data / "pg_hba.conf", "a") as hba:
                hba.write(f"host all all {self.network} scram-sha-256\n")
        self.proc = subprocess.Popen(
            [
                str(self.bin / "postgres"),
                "-D",
                str(data),
                "-h",
                ",".join(self.hosts),
                "-p",
                str(self.port),
                "-k",
                str(self.folder),
                "-c",
                "fsync=off",  # a throwaway server: durability of its disk writes is not under test
                "-c",
                "max_connections=200",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.folder / "server.log", "w"),
            cwd=self.folder,
            start_new_session=True,
            **self._as,
        )
        import psycopg

        deadline = time.time() + 60
        while True:
            try:
                with psycopg.connect(self.uri("postgres"), autocommit=True, connect_timeout=2) as conn:
                    for name in databases:
                        conn.execute(f'CREATE DATABASE "{name}"')
                return self
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.time() > deadline:
                    log = (self.folder / "server.log").read_text()[-2000:]
                    self.stop()
                    raise RuntimeError(f"PostgreSQL did not start: {log}") from None
                time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown: ends its sessions, then exits
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)
