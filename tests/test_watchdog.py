"""deploy/watchdog.sh, a GPU node's guard against a lost head, against a port on 127.0.0.1 standing in for
the head's: it never fires while the head only stops accepting (busy), fires once within its bound after the
head is gone with the reason in its log, and runs once a node."""

import re
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIMIT_S, EVERY_S = 1, 0.25


def _watchdog(home: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        ["bash", str(REPO / "deploy" / "watchdog.sh"), "127.0.0.1", str(port)],
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
        start_new_session=True,
    )


def test_a_busy_head_is_left_alone_and_a_lost_one_shuts_the_node_down_once(tmp_path):
    (tmp_path / ".switchsweep").mkdir()
    fired = tmp_path / "shutdown-called"
    (tmp_path / ".switchsweep" / "watchdog.env").write_text(
        f"SWITCHSWEEP_WATCHDOG_S={LIMIT_S}\nSWITCHSWEEP_WATCHDOG_EVERY_S={EVERY_S}\n"
        f"SWITCHSWEEP_WATCHDOG_SHUTDOWN='echo shutdown >> {fired}'\n"
    )
    head = socket.socket()
    head.bind(("127.0.0.1", 0))
    head.listen(64)  # never accept()ed: a head too busy to answer, whose kernel still completes connections
    port = head.getsockname()[1]
    watchdog = _watchdog(tmp_path, port)
    try:
        time.sleep(0.5)
        second = _watchdog(tmp_path, port)
        assert second.wait(timeout=10) == 0  # one watchdog a node
        time.sleep(2 * LIMIT_S)  # twice the bound, as a head only busy
        assert not fired.exists() and watchdog.poll() is None, "fired while the head was only busy"
        head.close()  # the head is gone: connections are refused
        lost = time.time()
        assert watchdog.wait(timeout=LIMIT_S + 4 * EVERY_S + 10) == 0
        assert time.time() - lost < LIMIT_S + 4 * EVERY_S + 5
        assert fired.read_text() == "shutdown\n"
    finally:
        watchdog.kill()
        head.close()
    log = (tmp_path / "watchdog.log").read_text().splitlines()
    assert log[0].endswith(f"watching 127.0.0.1:{port} every {EVERY_S} s, shutting down after {LIMIT_S} s without it")
    reason = rf"has not answered for \d+ s \(limit {LIMIT_S} s\): shutting this node down$"
    assert len(log) == 2 and re.search(reason, log[1]), log
