"""Machines for Ray's cluster launcher to SSH into, made on this one (root only).

Each node is Debian's sshd in its own network, PID and mount namespaces: its `ray stop` sees and ends
only its own processes, its home folder (a temp folder) is /root, its Ray session folder /tmp/ray is its
own, and Ray's fixed ports are its own; everything else (packages, this checkout, the test's temp
folders) is this machine's. The nodes sit on a bridge with this machine, with no route beyond it and a
resolver that refuses at once: their apt finds only the packages this machine has, as on an image built
with them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def available() -> str | None:
    """Why nodes cannot be made here, or None."""
    if os.geteuid() != 0:
        return "the SSH nodes need root (network and PID namespaces)"
    missing = [tool for tool in (SSHD, "ssh", "rsync", "unshare", "ip") if not shutil.which(tool)]
    if missing:
        return f"missing {', '.join(missing)}: apt-get install -y openssh-server rsync (.ci/run does)"
    probe = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "true"]
    if subprocess.run(probe, capture_output=True).returncode != 0:
        return "this machine does not allow new network and PID namespaces (unshare --net --pid failed)"
    return None


def make_key(folder: Path) -> Path:
    """A fresh ed25519 key pair: the private key's path (the public one beside it, .pub)."""
    key = folder / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


class Bridge:
    """A Linux bridge with this machine's address `ip`/24 on it, for the nodes' network namespaces."""

    def __init__(self, name: str, ip: str):
        self.name, self.ip = name, ip
        subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", f"{ip}/24", "dev", name], check=True)
        subprocess.run(["ip", "link", "set", name, "up"], check=True)

    def delete(self) -> None:
        subprocess.run(["ip", "link", "del", self.name], capture_output=True)

    def join(self, netns: str, host_end: str, ip: str) -> None:
        """A new network namespace `netns` with one interface, eth0 at `ip`/24, on this bridge (its peer
        `host_end` here), routed through this machine."""
        subprocess.run(["ip", "netns", "add", netns], check=True)
        veth = ["ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", netns]
        subprocess.run(veth, check=True)
        subprocess.run(["ip", "link", "set", host_end, "master", self.name, "up"], check=True)
        for cmd in (
            ["addr", "add", f"{ip}/24", "dev", "eth0"],
            ["link", "set", "eth0", "up"],
            ["link", "set", "lo", "up"],
            ["route", "add", "default", "via", self.ip],
        ):
            subprocess.run(["ip", "-n", netns, *cmd], check=True)


class SshNode:
    """sshd for root on `ip`, in namespaces of its own (see the module); `stop()` ends every process in it.
    `keep`: folders of this machine's /root the node still sees (a Python installed there, say)."""

    def __init__(self, name: str, ip: str, home: Path, public_key: Path, bridge: Bridge, keep: tuple[Path, ...] = ()):
        self.name, self.ip, self.home = name, ip, home
        self.netns, self.host_end = f"{name}-ns", f"{name[:12]}-v"
        ssh = home / ".ssh"
        ssh.mkdir(parents=True)
        (home / "ray-tmp").mkdir()
        shutil.copy(public_key, ssh / "authorized_keys")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / "host_key")], check=True)
        (ssh / "sshd_config").write_text(
            f"ListenAddress {ip}\nPort 22\nHostKey /root/.ssh/host_key\nPermitRootLogin prohibit-password\n"
            "AuthorizedKeysFile /root/.ssh/authorized_keys\nStrictModes no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nPidFile none\nMaxStartups 100\nMaxSessions 100\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
        self._join(bridge)
        kept = [(path, home / path.relative_to("/root")) for path in keep]
        inside = " && ".join(
            [
                *(f"mkdir -p {there} && mount --bind {path} {there}" for path, there in kept),
                f"mount --rbind {home} /root",
                f"mkdir -p /tmp/ray && mount --bind {home / 'ray-tmp'} /tmp/ray",
                f"exec {SSHD} -D -e -f /root/.ssh/sshd_config",
            ]
        )
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.netns,
                "unshare",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "bash",
                "-c",
                inside,
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(home.parent / f"{name}-sshd.log", "w"),
        )
        try:
            self._wait_listening()
        except Exception:
            self.stop()
            raise

    def _join(self, bridge: Bridge) -> None:
        """A network namespace with one interface on `bridge`, at self.ip, and DNS that fails at once."""
        bridge.join(self.netns, self.host_end, self.ip)
        resolver = Path("/etc/netns") / self.netns  # `ip netns exec` mounts it over /etc/resolv.conf
        resolver.mkdir(parents=True, exist_ok=True)
        (resolver / "resolv.conf").write_text("nameserver 127.0.0.1\n")

    def _wait_listening(self, seconds: float = 30) -> None:
        """Until sshd accepts connections (this machine reaches the node over the bridge)."""
        deadline = time.time() + seconds
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"sshd of {self.name} exited: {(self.home.parent / f'{self.name}-sshd.log').read_text()}"
                )
            if port_open(self.ip, 22):
                return
            time.sleep(0.3)
        raise TimeoutError(f"sshd of {self.name} is not listening on {self.ip}:22")

    def stop(self) -> None:
        """End the namespace's first process: the kernel then kills every other process in it."""
        if self.proc.poll() is None:
            self.proc.kill()  # unshare (which ignores SIGTERM) then sends SIGKILL to the first process
            self.proc.wait(timeout=30)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_end], capture_output=True)  # it can outlive the namespace
        shutil.rmtree(Path("/etc/netns") / self.netns, ignore_errors=True)


def port_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False
