"""A fake multi-node Ray cluster on this machine, derived from the repository's cluster.yaml.

Ray's fake multi-node provider starts each "node" the autoscaler launches as a real raylet on this
machine. Node type names, the head's resources and the scaling settings come from cluster.yaml;
what a CPU-only machine cannot give is replaced: a worker type's GPUs become as many units of the
custom resource `fake_gpu` (the trials ask for that instead), each node gets one CPU, and node counts
and the idle timeout shrink to test size. The 2.60 wheel lacks the base config Ray's own
`AutoscalingCluster` reads, so the whole config is written here.

The cluster is stopped by killing exactly the processes of its own temp folder, never with
`ray stop --force`, which would also kill every other Ray instance on the machine.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.support.sweep_harness import BIN, free_port, pids

FAKE_GPU = "fake_gpu"


def fake_config(cluster_yaml: Path, gcs_port: int, max_per_type: int = 2, idle_minutes: float = 0.1) -> dict[str, Any]:
    """The fake provider's autoscaling config for `cluster_yaml`'s node types."""
    real = yaml.safe_load(cluster_yaml.read_text())
    head = real["head_node_type"]
    types: dict[str, Any] = {}
    for name, t in real["available_node_types"].items():
        if name == head:
            types[name] = {"resources": dict(t["resources"]), "node_config": {}, "max_workers": 0}
            continue
        gpus = t["resources"].get("GPU", 0)
        custom = {k: v for k, v in t["resources"].items() if k not in ("CPU", "GPU")}  # ONE_GPU_NODE, ...
        types[name] = {
            "resources": {"CPU": 1, **({FAKE_GPU: gpus} if gpus else {}), **custom},
            "node_config": {},
            "min_workers": t.get("min_workers", 0),
            "max_workers": min(t["max_workers"], max_per_type),
        }
    return {
        "cluster_name": f"fake-{real['cluster_name']}",
        "max_workers": min(real["max_workers"], max_per_type),
        "upscaling_speed": real.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": idle_minutes,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"127.0.0.1:{gcs_port}",
        },
        "head_node_type": head,
        "available_node_types": types,
        "auth": {"ssh_user": "ubuntu"},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def wait_http(url: str, seconds: float, proc: subprocess.Popen | None = None) -> None:
    """Until `url` answers at all (401 without a token counts: the server is up)."""
    deadline = time.time() + seconds
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.time() > deadline:
                raise TimeoutError(f"{url} never answered") from None
            time.sleep(1)


class FakeCluster:
    """`start()` the head with the autoscaler (worker nodes come and go by themselves); `stop()`."""

    def __init__(self, temp: Path, config: dict[str, Any], env: dict[str, str], dashboard_port: int):
        self.temp, self.config, self.dashboard_port = temp, config, dashboard_port
        self.address = config["provider"]["gcs_address"]
        self.env = {**env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
        self.config_file = temp / "autoscaling.json"

    def start(self) -> None:
        self.config_file.write_text(json.dumps(self.config))
        head = self.config["available_node_types"][self.config["head_node_type"]]["resources"]
        custom = {k: v for k, v in head.items() if k not in ("CPU", "GPU")}
        subprocess.run(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                f"--port={self.address.rsplit(':', 1)[1]}",
                "--node-ip-address=127.0.0.1",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                # Its own agent port: Ray's fixed default would clash with the test session's head.
                f"--dashboard-agent-listen-port={free_port()}",
                f"--num-cpus={head.get('CPU', 0)}",
                f"--resources={json.dumps(custom)}",
                f"--temp-dir={self.temp / 'ray'}",
                f"--autoscaling-config={self.config_file}",
                "--disable-usage-stats",
            ],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=180,
        )
        # Jobs are submitted through the dashboard, which comes up after `ray start` returns.
        wait_http(f"http://127.0.0.1:{self.dashboard_port}/api/version", 90)

    def nodes(self) -> list[dict[str, Any]]:
        """Every node the cluster has had (dead ones too), from Ray's state API: node_id, state, resources_total."""
        token = self.env.get("RAY_AUTH_TOKEN")
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.dashboard_port}/api/v0/nodes?limit=1000",
            headers={"Authorization": f"Bearer {token}"} if token else {},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())["data"]["result"]["result"]

    def workers(self, alive: bool | None = None) -> list[dict[str, Any]]:
        """The nodes the autoscaler launched (all but the head), alive or not."""
        head_type = self.config["head_node_type"]
        head_resources = set(self.config["available_node_types"][head_type]["resources"]) - {"CPU", "GPU"}
        found = [n for n in self.nodes() if not head_resources & set(n["resources_total"])]
        return [n for n in found if alive is None or (n["state"] == "ALIVE") == alive]

    def autoscaler_events(self) -> list[tuple[str, int, str]]:
        """What the autoscaler says it did, from its own log: ("Adding"|"Removing", nodes, node type)."""
        log = self.temp / "ray" / "session_latest" / "logs" / "monitor.log"
        found = re.findall(
            r":event_summary:(Adding|Removing) (\d+) nodes? ?(?:\(s\))? of type (\S+?)\.?(?:\s|$)",
            log.read_text(),
            re.M,
        )
        return [(verb, int(n), kind) for verb, n, kind in found]

    def stop(self) -> None:
        """Kill the processes of this cluster (their command lines name its temp folder), SIGTERM first."""
        mine = str(self.temp).encode()
        procs = pids(lambda cmd: mine in cmd)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in procs:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + 5
            while sig == signal.SIGTERM and time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in procs):
                time.sleep(0.5)
