"""A Slurm cluster on this machine (root only): Debian's slurmctld here, and a slurmd per node, each node in
network, UTS (its own hostname), PID and mount namespaces of its own on a bridge with this machine; the nodes
see this machine's files, as a cluster's nodes see its shared file system. munged is this machine's, started
if it is not running; the nodes reach it through its socket.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.support.ssh_nodes import Bridge
from tests.support.sweep_harness import free_port

MUNGE_SOCKET = Path("/run/munge/munge.socket.2")


def available() -> str | None:
    """Why a Slurm cluster cannot be made here, or None."""
    if os.geteuid() != 0:
        return "the Slurm nodes need root (network, UTS and PID namespaces)"
    missing = [t for t in ("slurmctld", "slurmd", "sbatch", "munged", "unshare", "ip") if not shutil.which(t)]
    if missing:
        return f"missing {', '.join(missing)}: apt-get install -y slurm-wlm munge (.ci/run does)"
    return None


class Munge:
    """munged, started (as the munge user, with a key made if there is none) unless one already answers."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def start(self) -> Munge:
        if self._answers():
            return self
        if not Path("/etc/munge/munge.key").exists():
            subprocess.run(["mungekey", "-c"], check=True)
            shutil.chown("/etc/munge/munge.key", "munge", "munge")
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        self.proc = subprocess.Popen(["runuser", "-u", "munge", "--", "munged", "-F"])
        deadline = time.time() + 20
        while not self._answers():
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("munged did not start")
            time.sleep(0.2)
        return self

    @staticmethod
    def _answers() -> bool:
        if not MUNGE_SOCKET.exists():
            return False
        token = subprocess.run(["munge", "-n"], capture_output=True)
        return (
            token.returncode == 0
            and subprocess.run(["unmunge"], input=token.stdout, capture_output=True).returncode == 0
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


class SlurmCluster:
    """A controller and `nodes` nodes of `cpus` CPUs each, in one partition `debug`; `env` is what a user's
    shell needs (SLURM_CONF). Folders under `root`: conf, state, logs, and `shared`."""

    def __init__(self, root: Path, nodes: int = 2, cpus: int = 1, subnet: str = "10.231.9"):
        self.root, self.cpus, self.subnet = root, cpus, subnet
        self.names = [f"sn{i + 1}" for i in range(nodes)]
        self.here_ip = f"{subnet}.254"
        self.conf = root / "slurm.conf"
        self.shared = root / "shared"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.bridge: Bridge | None = None
        self.ctld: subprocess.Popen | None = None
        self.nodes: list[subprocess.Popen] = []

    @staticmethod
    def _netns(name: str) -> str:
        return f"{name}-ns{os.getpid() % 100000}"

    def ip(self, name: str) -> str:
        return f"{self.subnet}.{self.names.index(name) + 1}"

    def _write_conf(self) -> None:
        node_lines = "\n".join(
            f"NodeName={n} NodeAddr={self.ip(n)} CPUs={self.cpus} RealMemory=2000 State=UNKNOWN" for n in self.names
        )
        r = self.root
        self.conf.write_text(
            f"""ClusterName=switchsweep-test
SlurmctldHost={socket.gethostname().split(".")[0]}({self.here_ip})
SlurmUser=root
SlurmdUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool-%n
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd-%n.pid
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
KillWait=10
SchedulerType=sched/backfill
{node_lines}
PartitionName=debug Nodes={",".join(self.names)} Default=YES MaxTime=INFINITE State=UP
"""
        )

    def start(self) -> SlurmCluster:
        for folder in ("state", "shared", *(f"spool-{n}" for n in self.names)):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self._write_conf()
        self.bridge = Bridge(f"ssl{os.getpid() % 100000}", self.here_ip)
        self.ctld = subprocess.Popen(["slurmctld", "-D", "-f", str(self.conf)], stderr=subprocess.DEVNULL)
        for name in self.names:
            self.bridge.join(self._netns(name), f"{name}v{os.getpid() % 100000}", self.ip(name))
            inside = " && ".join(
                [
                    f"hostname {name}",
                    f"exec slurmd -D -f {self.conf} -N {name}",
                ]
            )
            self.nodes.append(
                subprocess.Popen(
                    [
                        "nsenter",  # not `ip netns exec`: it mounts a /sys without the cgroups slurmd reads
                        f"--net=/run/netns/{self._netns(name)}",
                        "unshare",
                        "--uts",
                        "--pid",
                        "--fork",
                        "--kill-child",
                        "--mount-proc",
                        "bash",
                        "-c",
                        inside,
                    ],
                    env=self.env,
                    stderr=open(self.root / f"{name}-slurmd.err", "w"),
                )
            )
        self.wait_idle(120)
        return self

    def run(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout)

    def wait_idle(self, seconds: float) -> None:
        deadline = time.time() + seconds
        while time.time() < deadline:
            states = self.run("sinfo", "-h", "-N", "-o", "%N %T").stdout.split()
            if states[1::2] and all(s == "idle" for s in states[1::2]) and len(states) == 2 * len(self.names):
                return
            time.sleep(1)
        raise TimeoutError(f"the Slurm nodes never became idle: {self.run('sinfo', '-N').stdout}")

    def job(self, job_id: str) -> dict[str, str]:
        """The job's fields as `scontrol show job` gives them (JobState, ExitCode, NodeList, ...)."""
        said = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return dict(field.split("=", 1) for field in said.split() if "=" in field)

    def wait_done(self, job_id: str, seconds: float) -> dict[str, str]:
        deadline = time.time() + seconds
        while time.time() < deadline:
            job = self.job(job_id)
            if job.get("JobState") in ("COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY"):
                return job
            time.sleep(2)
        raise TimeoutError(f"job {job_id} did not end in {seconds} s: {self.job(job_id)}")

    def stop(self) -> None:
        for proc in self.nodes:
            if proc.poll() is None:
                proc.kill()  # unshare's --kill-child ends everything in the node's PID namespace
                proc.wait(timeout=30)
        if self.ctld is not None and self.ctld.poll() is None:
            self.ctld.terminate()
            self.ctld.wait(timeout=30)
        for name in self.names:
            subprocess.run(["ip", "netns", "del", self._netns(name)], capture_output=True)
            subprocess.run(["ip", "link", "del", f"{name}v{os.getpid() % 100000}"], capture_output=True)
        if self.bridge is not None:
            self.bridge.delete()
