"""Listening TCP sockets of a process tree, read from /proc (Linux): which address each one binds; and the
tree's command lines."""

import os
import socket
from pathlib import Path

LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")


def _tree(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    found, stack = set(), [root]
    while stack:
        pid = stack.pop()
        found.add(pid)
        stack += children.get(pid, [])
    return found


def commands(root_pid: int) -> list[str]:
    """The command lines of `root_pid` and its descendants, arguments joined by spaces."""
    found = []
    for pid in _tree(root_pid):
        try:
            found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


def _listening_inodes() -> dict[str, tuple[str, int]]:
    out = {}
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if f[3] != "0A":  # LISTEN
                continue
            addr, port = f[1].split(":")
            raw = bytes.fromhex(addr)
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # /proc prints host-order words
            out[f[9]] = (socket.inet_ntop(family, raw), int(port, 16))
    return out


def listening(root_pid: int) -> set[tuple[str, int, str]]:
    """(address, port, process name) of every socket listening in `root_pid` and its descendants."""
    inodes = _listening_inodes()
    found = set()
    for pid in _tree(root_pid):
        try:
            name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")[-60:]
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    found.add((*inodes[target[8:-1]], name))
        except OSError:
            continue
    return found
