"""cluster.yaml through Ray's own config preparation and schema, our invariants on it, and what a sweep
pointed at a cluster accepts or refuses before any work (storage, tracking, node types)."""

import dataclasses
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config  # pinned Ray (pyproject): private API

from switchsweep.config.compose import load_sweep_config
from switchsweep.config.resources import check_node_types, node_types, worker_bundle
from switchsweep.config.sweep_schema import RayConfig, is_local_address
from switchsweep.platform.errors import ConfigError
from switchsweep.platform.uris import is_database, is_local_store, is_server
from switchsweep.sweeps.locate import sweep_storage
from switchsweep.sweeps.runtime import resolve_worker_cpus
from tests.support.fake_cluster import FAKE_GPU, fake_config

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


def test_the_commented_spot_type_is_a_valid_one_gpu_type_on_spot_capacity():
    lines = (REPO / "cluster.yaml").read_text().splitlines()
    start = lines.index("  # ray.worker.gpu1spot:")
    block = []
    for line in lines[start:]:
        if not line.startswith("  #   ") and line != "  # ray.worker.gpu1spot:":
            break
        block.append("  " + line[4:])
    spot = yaml.safe_load("\n".join(block))["ray.worker.gpu1spot"]
    gpu1 = CLUSTER["available_node_types"]["ray.worker.gpu1"]
    assert spot["resources"] == gpu1["resources"]  # one-GPU trials and prepare's encoders take it alike
    assert spot["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert {k: v for k, v in spot["node_config"].items() if k != "InstanceMarketOptions"} == gpu1["node_config"]
    with_spot = json.loads(json.dumps(CLUSTER))
    with_spot["available_node_types"]["ray.worker.gpu1spot"] = spot
    with_spot["max_workers"] += spot["max_workers"]
    validate_config(prepare_config(with_spot))


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
    cpu = "make install EXTRAS= TORCH_INDEX=https://download.pytorch.org/whl/cpu"  # the head trains nothing
    assert any(c.strip().endswith(cpu) for c in CLUSTER["head_setup_commands"])
    assert any(c.strip().endswith("make install EXTRAS=") for c in CLUSTER["worker_setup_commands"])
    env = " ".join(CLUSTER["head_setup_commands"])
    for name in re.findall(r"oc\.env:(SWITCHSWEEP_\w+)", json.dumps(PLATFORM)):
        assert f"export {name}=" in env, f"platform=cluster reads {name}, which the head never sets"


def test_the_fake_cluster_keeps_the_real_types_with_gpus_as_a_custom_resource():
    fake = fake_config(REPO / "cluster.yaml", gcs_port=6400)
    assert set(fake["available_node_types"]) == set(CLUSTER["available_node_types"])
    for name, t in fake["available_node_types"].items():
        real = CLUSTER["available_node_types"][name]["resources"]
        assert "GPU" not in t["resources"] and t["resources"].get(FAKE_GPU, 0) == real.get("GPU", 0)
        assert {k: v for k, v in real.items() if k not in ("CPU", "GPU")}.items() <= t["resources"].items()
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
        ["sweep.ray.storage_path=s3://b/s", "sweep.tracking_uri=postgresql://u:pw@db.internal:5432/mlflow"],
        ["sweep.ray.storage_path=s3://b/s", "sweep.tracking_uri=postgresql+psycopg://u:pw@db/mlflow"],
        ["sweep.ray.storage_path=s3://b/s", "sweep.tracking_uri=mysql+pymysql://u:pw@db/mlflow"],
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
    assert is_database("postgresql://u:p@h/db") and is_database("postgresql+psycopg://h/db")
    assert is_database("mysql+pymysql://h/db") and not is_database("sqlite:////tmp/m.db")
    assert is_server("http://h:5000") and is_server("databricks") and is_server("databricks://profile")
    assert not is_server("postgresql://h/db") and not is_local_store("postgresql://h/db")


def test_platform_cluster_reads_the_heads_environment(monkeypatch):
    monkeypatch.delenv("SWITCHSWEEP_TRACKING_URI", raising=False)
    monkeypatch.setenv("SWITCHSWEEP_STORAGE", "s3://b/switchsweep")
    with pytest.raises(ConfigError, match="SWITCHSWEEP_TRACKING_URI"):
        load_sweep_config(["platform=cluster"])
    monkeypatch.setenv("SWITCHSWEEP_TRACKING_URI", "http://10.0.0.5:5000")
    job = load_sweep_config(["platform=cluster"])
    r = job.sweep.ray
    assert (r.address, r.storage_path, r.use_gpu, r.driver_resource) == ("auto", "s3://b/switchsweep", True, DRIVER)
    # Training there needs CUDA (a node without it fails in one line, not silently on one CPU), and a cold
    # GPU node has the time to boot and install before its trial's workers give up.
    assert job.train.device == "cuda" and r.worker_start_timeout_s >= 900
    # Every node reads one evaluation cache in the bucket rather than computing its own.
    assert job.eval.cache_dir == "s3://b/switchsweep/eval-cache"


def _cluster_trial(monkeypatch, gpus: int, *extra: str) -> RayConfig:
    monkeypatch.setenv("SWITCHSWEEP_STORAGE", "s3://b/switchsweep")
    monkeypatch.setenv("SWITCHSWEEP_TRACKING_URI", "http://10.0.0.5:5000")
    job = load_sweep_config(["platform=cluster", f"sweep.ray.num_workers={gpus}", *extra])
    return resolve_worker_cpus(job.sweep.ray, job.sweep.max_concurrent)


def _nodes_ray_picks(r: RayConfig, trials: int = 1, cluster: dict | None = None) -> tuple[dict[str, int], list]:
    """What Ray's autoscaler adds, from cluster.yaml's types (or `cluster`'s), for `trials` pending trials'
    placement groups, and the demands it leaves waiting."""
    cluster = cluster or CLUSTER
    from functools import partial

    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
    from ray.autoscaler._private.resource_demand_scheduler import (
        _default_utilization_scorer,
        get_nodes_for,
        placement_groups_to_resource_demands,
    )
    from ray.core.generated.common_pb2 import Bundle, PlacementStrategy
    from ray.core.generated.gcs_pb2 import PlacementGroupTableData

    bundles = [Bundle(unit_resources=worker_bundle(r)) for _ in range(r.num_workers)]
    strategy = PlacementStrategy.Value(r.placement_strategy)
    groups = [PlacementGroupTableData(strategy=strategy, bundles=bundles) for _ in range(trials)]
    demands, _ = placement_groups_to_resource_demands(groups)
    types = prepare_config(json.loads(json.dumps(cluster)))["available_node_types"]
    scorer = partial(_default_utilization_scorer, node_availability_summary=NodeAvailabilitySummary({}))
    added, left = get_nodes_for(types, {}, cluster["head_node_type"], cluster["max_workers"], demands, scorer)
    return {t: n for t, n in added.items() if n}, left


@pytest.mark.parametrize(
    "gpus, node_type", [(1, "ray.worker.gpu1"), (2, "ray.worker.gpu8"), (4, "ray.worker.gpu8"), (8, "ray.worker.gpu8")]
)
def test_rays_node_picker_gives_each_trial_size_one_node_of_the_intended_type(monkeypatch, gpus, node_type):
    r = _cluster_trial(monkeypatch, gpus)
    assert _nodes_ray_picks(r) == ({node_type: 1}, [])
    types = {n: t["resources"] for n, t in CLUSTER["available_node_types"].items()}
    check_node_types(r, types, [])  # and the sweep's own check lets it through
    # The caps allow it: every type can reach its own max_workers at once.
    workers = [t for n, t in CLUSTER["available_node_types"].items() if n != CLUSTER["head_node_type"]]
    assert CLUSTER["max_workers"] >= sum(t["max_workers"] for t in workers)


def _at_scale(one_gpu_nodes: int, eight_gpu_nodes: int) -> dict:
    """cluster.yaml with its GPU types' caps raised, as docs/cluster.md's scale table says to."""
    scaled = json.loads(json.dumps(CLUSTER))
    scaled["available_node_types"]["ray.worker.gpu1"]["max_workers"] = one_gpu_nodes
    scaled["available_node_types"]["ray.worker.gpu8"]["max_workers"] = eight_gpu_nodes
    scaled["max_workers"] = one_gpu_nodes + eight_gpu_nodes
    return scaled


def test_at_64_gpus_each_trial_size_gets_nodes_of_its_own_type(monkeypatch):
    scaled = _at_scale(64, 8)
    assert _nodes_ray_picks(_cluster_trial(monkeypatch, 1), 64, scaled) == ({"ray.worker.gpu1": 64}, [])
    assert _nodes_ray_picks(_cluster_trial(monkeypatch, 8), 8, scaled) == ({"ray.worker.gpu8": 8}, [])


def test_one_gpu_trials_wait_for_one_gpu_nodes_rather_than_split_an_8_gpu_node(monkeypatch):
    one = _cluster_trial(monkeypatch, 1)
    assert worker_bundle(one)["ONE_GPU_NODE"] == 1 and "ONE_GPU_NODE" not in worker_bundle(
        _cluster_trial(monkeypatch, 8)
    )
    added, left = _nodes_ray_picks(one, 6)  # the shipped caps: four one-GPU nodes
    assert added == {"ray.worker.gpu1": 4} and len(left) == 2
    # Unmarked, Ray's picker would put the two left over on the 8-GPU node, and an 8-GPU trial would starve.
    added, _ = _nodes_ray_picks(dataclasses.replace(one, one_gpu_resource=None), 6)
    assert added.get("ray.worker.gpu8", 0) == 1


def test_platform_cluster_runs_as_many_trials_at_once_as_the_head_has_driver_slots(monkeypatch):
    monkeypatch.setenv("SWITCHSWEEP_STORAGE", "s3://bucket/switchsweep")
    monkeypatch.setenv("SWITCHSWEEP_TRACKING_URI", "http://10.0.0.5:5000")
    job = load_sweep_config(["platform=cluster"])
    head = CLUSTER["available_node_types"][CLUSTER["head_node_type"]]
    assert job.sweep.max_concurrent == head["resources"][DRIVER] > 1


def test_packing_workers_loosely_spreads_an_8_gpu_trial_over_1_gpu_nodes_only_without_their_marker(monkeypatch):
    # What STRICT_PACK and ONE_GPU_NODE each prevent: with neither, Ray's picker fills the 1-GPU type first
    # and DDP runs across nodes.
    r = _cluster_trial(monkeypatch, 8, "sweep.ray.placement_strategy=PACK")
    assert _nodes_ray_picks(r)[0] == {"ray.worker.gpu8": 1}
    unmarked = json.loads(json.dumps(CLUSTER))
    del unmarked["available_node_types"]["ray.worker.gpu1"]["resources"]["ONE_GPU_NODE"]
    assert _nodes_ray_picks(r, cluster=unmarked)[0].get("ray.worker.gpu1", 0) > 1


def test_a_trial_too_big_for_any_one_node_is_refused_in_one_line(monkeypatch):
    r = _cluster_trial(monkeypatch, 16)
    types = {n: t["resources"] for n, t in CLUSTER["available_node_types"].items()}
    with pytest.raises(ConfigError, match=r"its 16 DDP workers on one node.*placement_strategy=PACK"):
        check_node_types(r, types, [])
    with pytest.raises(ConfigError, match="sweep.ray.placement_strategy=TIGHT must be one of STRICT_PACK"):
        load_sweep_config(["sweep.ray.placement_strategy=TIGHT"])


def _commands() -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "head_start_ray_commands")
    return [c for k in (*keys, "worker_setup_commands", "worker_start_ray_commands") for c in CLUSTER.get(k, [])]


def test_every_node_has_a_pinned_image_and_an_instance_profile_for_the_bucket():
    # The cluster's own security group (make cluster-account): Ray's own would take SSH from anywhere.
    assert CLUSTER["provider"]["security_group"]["GroupName"] == "switchsweep-cluster"
    assert "mlflow-db" not in json.dumps(CLUSTER["file_mounts"])  # the database URI reaches the head through SSM
    for name, t in CLUSTER["available_node_types"].items():
        config = t["node_config"]
        assert config.get("ImageId", "").startswith(("ami-", "resolve:ssm:/aws/service/")), name
        assert config.get("IamInstanceProfile", {}).get("Name"), name  # Ray gives one to the head only
        assert config.get("MetadataOptions", {}).get("HttpTokens") == "required", name  # IMDSv2: the head's policy
    head_policy = json.loads((REPO / "deploy" / "aws" / "head-policy.json").read_text())
    worker_policy = json.loads((REPO / "deploy" / "aws" / "worker-policy.json").read_text())
    head_actions = {
        a
        for st in head_policy["Statement"]
        for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])
    }
    # The head launches workers with their profile and resolves their image; workers reach one bucket only.
    assert {"ec2:RunInstances", "iam:PassRole", "ssm:GetParameters"} <= head_actions
    for st in worker_policy["Statement"]:
        assert all(a.startswith("s3:") for a in st["Action"]) and "*" not in st["Resource"].split(":::")[1][:1]


def test_nodes_install_what_they_run_and_nothing_for_tests():
    installs = " ".join(CLUSTER["head_setup_commands"] + CLUSTER["worker_setup_commands"])
    assert "make install EXTRAS=" in installs and "[dev]" not in installs
    setup = " ".join(CLUSTER["setup_commands"])
    for package in ("build-essential", "python3-dev"):  # Triton compiles its launcher against Python.h
        assert package in setup
    assert "DPkg::Lock::Timeout" in setup  # a first boot's unattended upgrades hold the apt lock
    assert "sudo apt-get" not in setup  # sudo only where the node's user is not root
    # the driver is checked before the CUDA build is downloaded
    worker = CLUSTER["worker_setup_commands"]
    assert [i for i, c in enumerate(worker) if "check-driver.sh" in c] == [0]


def _first_boot(tmp_path, update_failures: int) -> tuple[subprocess.CompletedProcess, list[str]]:
    """The apt part of cluster.yaml's setup in bash, on stand-ins that log their calls: cloud-init, and an
    apt-get whose `update` fails `update_failures` times (a lists lock held, a mirror down)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir(parents=True)
    stand_ins = {
        "sudo": 'exec "$@"',  # never the machine's own apt
        "cloud-init": f'echo "cloud-init $*" >> {calls}',
        "sleep": f'echo "sleep $*" >> {calls}',
        "apt-get": f"""echo "apt-get $*" >> {calls}
case " $* " in *" update "*) n=$(grep -c " update " {calls}); [ "$n" -gt {update_failures} ] || exit 100;; esac""",
    }
    for name, body in stand_ins.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    (apt,) = [c for c in CLUSTER["setup_commands"] if "apt-get" in c]
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(["bash", "-c", apt], env=env, capture_output=True, text=True, timeout=60)
    return done, calls.read_text().splitlines() if calls.exists() else []


def test_a_first_boot_waits_for_cloud_init_and_retries_apts_update(tmp_path):
    done, calls = _first_boot(tmp_path / "busy", update_failures=2)
    assert done.returncode == 0, done.stderr
    assert calls[0] == "cloud-init status --wait"
    updates = [c for c in calls if " update" in c]
    assert len(updates) == 3 and calls.count("sleep 30") == 2 and "install" in calls[-1]


def test_a_first_boot_gives_up_on_apt_after_five_tries_in_one_line(tmp_path):
    done, calls = _first_boot(tmp_path / "down", update_failures=99)
    assert done.returncode == 1 and done.stderr.strip() == "setup: apt-get update failed 5 times"
    assert sum(" update" in c for c in calls) == 5 and not any(" install " in c for c in calls)


@pytest.mark.parametrize(
    "smi, code, says",
    [
        ("echo 595.91.07", 0, "NVIDIA driver 595.91.07 runs torch's CUDA 13.0 build"),
        ("echo 580.65.06", 0, "NVIDIA driver 580.65.06 runs"),
        ("echo 535.247.01", 1, "NVIDIA driver 535.247.01 is older than 580"),
        ("exit 9", 1, "nvidia-smi reports no driver version"),
        (None, 0, "no nvidia-smi on this node"),
    ],
)
def test_a_gpu_nodes_driver_is_checked_against_torchs_cuda_build(tmp_path, smi, code, says):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if smi is not None:
        (bin_dir / "nvidia-smi").write_text(f"#!/bin/bash\n{smi}\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    done = subprocess.run(
        ["bash", str(REPO / "deploy" / "check-driver.sh")],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == code
    said = (done.stdout if code == 0 else done.stderr).strip()
    assert says in said and len(said.splitlines()) == 1


def test_the_autoscaler_that_runs_is_the_one_tested():
    """`ray up` starts autoscaler v2 by default since Ray 2.50, which does not launch the local provider's
    nodes that tests/cluster/test_cluster_launch.py runs cluster.yaml's commands on: make cluster-up pins v1."""
    makefile = (REPO / "Makefile").read_text()
    (up,) = [line for line in makefile.splitlines() if "ray up" in line]
    assert "RAY_UP_enable_autoscaler_v2=0" in up
    launch = (REPO / "tests" / "cluster" / "test_cluster_launch.py").read_text()
    assert 'env["RAY_UP_enable_autoscaler_v2"] = "0"' in launch


def test_ray_starts_wherever_the_open_files_limit_is_lower_than_rays_wish():
    starts = [c for c in CLUSTER["head_start_ray_commands"] + CLUSTER["worker_start_ray_commands"] if "ray start" in c]
    assert starts and all('ulimit -n "$(ulimit -Hn)"' in c for c in starts)  # a fixed number above it fails


def test_the_launchers_own_shells_find_the_projects_commands():
    setup = CLUSTER["setup_commands"]
    assert any("~/.bashrc" in c and "switchsweep/.venv/bin" in c for c in setup)  # ray exec, ray down's ray stop


def test_the_heads_driver_slots_fit_its_memory():
    head = CLUSTER["available_node_types"][CLUSTER["head_node_type"]]
    (start,) = [c for c in CLUSTER["head_start_ray_commands"] if "ray start" in c]
    slots = head["resources"][DRIVER]
    assert json.loads(_start_flags(start)["resources"])[DRIVER] == slots
    gib = {"m6i.xlarge": 16, "m6i.2xlarge": 32, "m6i.4xlarge": 64}[head["node_config"]["InstanceType"]]
    assert slots * 2 <= gib - 4  # about 2 GiB a trial's driver, and room for the sweep's driver and MLflow


def test_the_docs_ray_job_commands_carry_the_clusters_token_mode():
    readme = "\n".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])
    commands = re.findall(r"^\s*(?:\S+=\S+\s+)*(?:\S*/)?ray job \S+.*$", readme, re.M)
    assert commands and all("RAY_AUTH_MODE=token" in c for c in commands), commands
    assert "mountpoint" not in readme.lower()  # no rename: atomic writes cannot work on it


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


@pytest.fixture
def no_aws_credentials(monkeypatch, tmp_path):
    """A machine with no AWS credentials: none in the environment, no ~/.aws, not on EC2."""
    import os

    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_a_bucket_without_credentials_is_one_line_naming_the_fix(no_aws_credentials, monkeypatch):
    from switchsweep.platform.storage import check_credentials

    with pytest.raises(ConfigError) as e:
        check_credentials("s3://b/sweeps", "sweep.ray.storage_path")
    said = str(e.value)
    assert said.startswith("sweep.ray.storage_path=s3://b/sweeps: no AWS credentials on ") and "\n" not in said
    assert "IamInstanceProfile" in said and "AWS_ACCESS_KEY_ID" in said
    check_credentials("/mnt/nfs/sweeps", "sweep.ray.storage_path")  # a shared folder needs none
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    check_credentials("s3://b/sweeps", "sweep.ray.storage_path")


def test_a_node_without_credentials_fails_its_trial_in_one_line_before_training(no_aws_credentials):
    from switchsweep.config.schema import Config
    from switchsweep.sweeps.failures import TrialFailure
    from switchsweep.sweeps.worker import run_worker
    from switchsweep.sweeps.worker_spec import SweepReports, WorkerSpec

    spec = WorkerSpec(Config(), "run", SweepReports("s", "sqlite:///x.db", "s3://b/s/x", 4, (4,)), "t", 1, 1.0)
    with pytest.raises(TrialFailure) as e:
        run_worker(spec)  # Ray Train's session, MLflow and the model are never reached
    assert e.value.reason.startswith("ConfigError: sweep.ray.storage_path=s3://b/s/x: no AWS credentials on ")
