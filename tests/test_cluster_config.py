"""cluster.yaml through Ray's own config preparation and schema, our invariants on it, and what a sweep
pointed at a cluster accepts or refuses before any work (storage, tracking, node types)."""

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from fake_cluster import FAKE_GPU, fake_config
from ray.autoscaler._private.util import prepare_config, validate_config  # pinned Ray (pyproject): private API

from switchsweep.platform.compose import load_sweep_config
from switchsweep.platform.errors import ConfigError
from switchsweep.platform.runtime import check_node_types, node_types
from switchsweep.platform.sweep_config import RayConfig, is_local_address
from switchsweep.platform.tracking import is_local_store
from switchsweep.sweeps.run import sweep_storage

REPO = Path(__file__).resolve().parent.parent
CLUSTER = yaml.safe_load((REPO / "cluster.yaml").read_text())
PLATFORM = yaml.safe_load((REPO / "switchsweep" / "conf" / "platform" / "cluster.yaml").read_text())
DRIVER = PLATFORM["sweep"]["ray"]["driver_resource"]


def _start_flags(command: str) -> dict[str, str]:
    """`--key=value` flags of a `ray start` command line."""
    words = shlex.split(command.replace("\n", " "))
    return dict(w[2:].split("=", 1) for w in words if w.startswith("--") and "=" in w)


def test_cluster_yaml_passes_rays_own_preparation_and_schema():
    prepared = prepare_config(json.loads(json.dumps(CLUSTER)))
    validate_config(prepared)  # raises on a schema violation
    assert prepared["provider"]["type"] == "aws"
    assert set(prepared["available_node_types"]) == set(CLUSTER["available_node_types"])


def test_the_head_runs_drivers_and_no_training():
    head = CLUSTER["available_node_types"][CLUSTER["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and head["resources"].get(DRIVER, 0) >= 1
    (start,) = [c for c in CLUSTER["head_start_ray_commands"] if "ray start" in c]
    flags = _start_flags(start)
    assert flags["num-cpus"] == "0" and json.loads(flags["resources"]) == {DRIVER: head["resources"][DRIVER]}
    assert flags["dashboard-host"] == "127.0.0.1"  # reached through `ray dashboard cluster.yaml`
    assert "RAY_AUTH_MODE=token" in start


def test_gpu_worker_types_scale_from_zero_and_are_capped():
    workers = {n: t for n, t in CLUSTER["available_node_types"].items() if n != CLUSTER["head_node_type"]}
    gpus = sorted(t["resources"].get("GPU", 0) for t in workers.values())
    assert len(workers) >= 2 and gpus[0] == 1 and gpus[-1] == 8
    for name, t in workers.items():
        assert t["min_workers"] == 0 and 1 <= t["max_workers"] <= CLUSTER["max_workers"], name
        assert t["resources"]["GPU"] >= 1 and DRIVER not in t["resources"], name
    assert 0 < CLUSTER["idle_timeout_minutes"] <= 30 and CLUSTER["provider"]["cache_stopped_nodes"] is False
    (start,) = [c for c in CLUSTER["worker_start_ray_commands"] if "ray start" in c]
    assert "RAY_AUTH_MODE=token" in start


def test_every_node_gets_this_tree_the_token_and_the_readme_install():
    assert CLUSTER["file_mounts"]["~/switchsweep"] == "." and "~/.ray/auth_token" in CLUSTER["file_mounts"]
    assert ".venv" in CLUSTER["rsync_exclude"]
    assert any(c.strip().endswith("make install") for c in CLUSTER["setup_commands"])
    env = " ".join(CLUSTER["head_setup_commands"])
    for name in re.findall(r"oc\.env:(SWITCHSWEEP_\w+)", json.dumps(PLATFORM)):
        assert f"export {name}=" in env, f"platform=cluster reads {name}, which the head never sets"


def test_the_fake_cluster_keeps_the_real_types_with_gpus_as_a_custom_resource():
    fake = fake_config(REPO / "cluster.yaml", gcs_port=6400)
    assert set(fake["available_node_types"]) == set(CLUSTER["available_node_types"])
    for name, t in fake["available_node_types"].items():
        real = CLUSTER["available_node_types"][name]["resources"]
        assert "GPU" not in t["resources"] and t["resources"].get(FAKE_GPU, 0) == real.get("GPU", 0)
    head = fake["available_node_types"][fake["head_node_type"]]["resources"]
    assert head["CPU"] == 0 and head[DRIVER] >= 1  # only worker nodes can run trials
    validate_config(fake)  # complete as written: the wheel lacks the defaults prepare_config would merge in


def test_sweeps_sharing_a_storage_path_keep_their_state_apart():
    job = load_sweep_config(["sweep.ray.storage_path=s3://bucket/sweeps"])
    a, b = sweep_storage(job, "design_space-1"), sweep_storage(job, "design_space-2")
    assert a == "s3://bucket/sweeps/design_space/design_space-1" and b.endswith("/design_space-2") and a != b
    other = load_sweep_config(["sweep=table1", "sweep.ray.storage_path=s3://bucket/sweeps/"])
    assert sweep_storage(other, "x") == "s3://bucket/sweeps/table1/x"
    local = load_sweep_config(["sweep.root=/data/runs"])  # default: the sweep's own folder, as before
    assert sweep_storage(local, "s1") == "/data/runs/sweeps/design_space/s1"


CLUSTER_ADDRESS = ["sweep.ray.address=auto"]


@pytest.mark.parametrize(
    "overrides,words",
    [
        ([], "sweep.ray.storage_path=null"),
        (["sweep.ray.storage_path=runs/shared"], "cannot reach a path on this machine"),
        (["sweep.ray.storage_path=/mnt/nfs/sweeps"], "shared_fs=true"),
        (
            ["sweep.ray.storage_path=file:///mnt/sweeps", "sweep.ray.shared_fs=true"],
            "sweep.ray.storage_path=file:///mnt/sweeps",
        ),
        (["sweep.ray.storage_path=s3://b/s"], "sweep.tracking_uri=null"),
        (["sweep.ray.storage_path=s3://b/s", "sweep.tracking_uri=sqlite:////tmp/m.db"], "mlflow server"),
        (["sweep.ray.storage_path=s3://b/s", "sweep.tracking_uri=/tmp/mlruns"], "sweep.tracking_uri=/tmp/mlruns"),
    ],
)
def test_a_cluster_address_refuses_stores_only_one_machine_has(overrides, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_sweep_config([*CLUSTER_ADDRESS, *overrides])


@pytest.mark.parametrize(
    "overrides",
    [
        ["sweep.ray.storage_path=s3://b/s", "sweep.tracking_uri=http://10.0.0.5:5000"],
        ["sweep.ray.storage_path=gs://b/s", "sweep.tracking_uri=https://mlflow.example.com"],
        ["sweep.ray.storage_path=/mnt/nfs/sweeps", "sweep.ray.shared_fs=true", "sweep.tracking_uri=http://head:5000"],
    ],
)
def test_a_cluster_address_accepts_shared_stores(overrides):
    load_sweep_config([*CLUSTER_ADDRESS, *overrides])


def test_a_head_on_loopback_is_this_machine_and_keeps_local_stores():
    assert is_local_address(None) and is_local_address("127.0.0.1:6379") and is_local_address("ray://localhost:10001")
    assert not is_local_address("auto") and not is_local_address("ray://head.example:10001")
    assert not is_local_address("localhost.example.com:6379") and is_local_address("[::1]:6379")
    load_sweep_config(["sweep.ray.address=127.0.0.1:6379"])  # SQLite store, local storage: fine
    assert is_local_store("sqlite:////tmp/m.db") and is_local_store("/tmp/mlruns") and is_local_store("file:///tmp/x")
    assert not is_local_store("http://127.0.0.1:5000") and not is_local_store("mlflow-artifacts:/1/abc")


def test_platform_cluster_reads_the_heads_environment(monkeypatch):
    monkeypatch.delenv("SWITCHSWEEP_TRACKING_URI", raising=False)
    monkeypatch.setenv("SWITCHSWEEP_STORAGE", "s3://b/switchsweep")
    with pytest.raises(ConfigError, match="SWITCHSWEEP_TRACKING_URI"):
        load_sweep_config(["platform=cluster"])
    monkeypatch.setenv("SWITCHSWEEP_TRACKING_URI", "http://10.0.0.5:5000")
    r = load_sweep_config(["platform=cluster"]).sweep.ray
    assert (r.address, r.storage_path, r.use_gpu, r.driver_resource) == ("auto", "s3://b/switchsweep", True, DRIVER)


def _types(tmp_path, config) -> dict:
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(config))
    return node_types(str(path))


def test_node_types_refuse_a_trial_no_node_can_hold(tmp_path):
    types = _types(tmp_path, CLUSTER)
    gpu = RayConfig(use_gpu=True, cpus_per_worker=8, driver_resource=DRIVER)
    check_node_types(gpu, types, [])  # 8 CPUs + 1 GPU: the 1-GPU type
    check_node_types(RayConfig(num_workers=8, use_gpu=True, cpus_per_worker=24, driver_resource=DRIVER), types, [])
    with pytest.raises(ConfigError, match="add a GPU node type"):
        check_node_types(gpu, {n: {k: v for k, v in t.items() if k != "GPU"} for n, t in types.items()}, [])
    with pytest.raises(ConfigError, match=r"one DDP worker needs \{CPU: 400, GPU: 1\}"):
        check_node_types(RayConfig(use_gpu=True, cpus_per_worker=400, driver_resource=DRIVER), types, [])
    with pytest.raises(ConfigError, match="a trial's driver needs"):
        check_node_types(RayConfig(use_gpu=True, cpus_per_worker=1, driver_resource="NO_SUCH"), types, [])
    # A node that is up counts as well as the types the autoscaler may add.
    check_node_types(RayConfig(use_gpu=True, cpus_per_worker=1, driver_resource="NO_SUCH"), types, [{"NO_SUCH": 1.0}])
    assert node_types(str(tmp_path / "missing.yaml")) is None
    (tmp_path / "bad.yaml").write_text("just: text\n")
    with pytest.raises(ConfigError, match="sweep.ray.cluster_config"):
        node_types(str(tmp_path / "bad.yaml"))
