"""Every node of cluster.yaml can install the package: the whole install of `make install EXTRAS=`, pinned by
constraints.txt, resolves against the registry for the Python and glibc of each node's image, so that an
image and the dependencies cannot drift apart unnoticed."""

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
CLUSTER = yaml.safe_load((REPO / "cluster.yaml").read_text())
# The python3 and glibc of AWS's Ubuntu images and of the Deep Learning AMIs built on them.
UBUNTU = {"22.04": ("3.10", 35), "24.04": ("3.12", 39)}
# hydra-core's parser runtime is published as a source distribution only; it is pure Python, so a node
# builds it for any Python, and here it is built once into a wheel that stands for that.
PURE_SDISTS = ["antlr4-python3-runtime==4.9.3"]
REGISTRY = "https://pypi.org/simple/"


def _release(image_id: str) -> str:
    match = re.search(r"ubuntu[-/](?:server/)?(\d\d\.\d\d)", image_id)
    assert match, f"{image_id}: not an Ubuntu image whose Python this test knows: add it to UBUNTU"
    return match.group(1)


def _image_pythons() -> dict[str, tuple[str, int]]:
    """Node type -> (its image's Python, its glibc minor version)."""
    out = {}
    for name, t in CLUSTER["available_node_types"].items():
        release = _release(t["node_config"]["ImageId"])
        assert release in UBUNTU, f"{name}: Ubuntu {release}'s Python is not known here: add it to UBUNTU"
        out[name] = UBUNTU[release]
    return out


def _locked() -> dict[str, str]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    pins = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    return {canonicalize_name(r.name): str(r.specifier).removeprefix("==") for r in pins}


def _node_env() -> dict[str, str]:
    """pip as on a fresh node: the registry alone, none of this machine's pip settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _resolve(python: str, glibc: int, wheels: Path, report: Path) -> subprocess.CompletedProcess:
    tag = python.replace(".", "")
    platforms = [f"manylinux_2_{m}_x86_64" for m in range(glibc, 4, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--report", str(report)]
    cmd += ["--python-version", python, "--implementation", "cp", "--abi", f"cp{tag}"]
    cmd += [arg for p in platforms for arg in ("--platform", p)]
    cmd += ["--only-binary", ":all:", "--find-links", str(wheels), "-c", "constraints.txt", "."]
    return subprocess.run(cmd, cwd=REPO, env=_node_env(), capture_output=True, text=True, timeout=600)


def test_every_image_is_ubuntu_whose_python_the_package_supports():
    requires = SpecifierSet(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"])
    for name, (python, _) in _image_pythons().items():
        assert requires.contains(python), f"{name}: its image's Python {python} is outside requires-python {requires}"
    assert _release("resolve:ssm:/aws/service/canonical/ubuntu/server/22.04/stable/x/ami-id") == "22.04"
    assert _release("resolve:ssm:/aws/service/deeplearning/ami/x86_64/base-oss-ubuntu-24.04/latest/ami-id") == "24.04"


def test_the_lock_leaves_each_machine_its_own_torch_build_and_pins_the_rest():
    locked = _locked()
    assert "torch" in locked and "+" not in locked["torch"]  # 2.13.0 matches the CPU and the CUDA build alike
    assert "triton" not in locked  # torch's CUDA build pins its own
    assert "switchsweep" not in locked
    assert all(re.fullmatch(r"[\w.]+", v) for v in locked.values()), "every line an exact == pin"


@pytest.mark.slow  # a minute of registry round trips, outside the fast suite
@pytest.mark.registry  # which `make test` runs beside the end-to-end tests: it waits on the network, not the CPU
def test_every_images_python_resolves_a_nodes_whole_install(tmp_path):
    try:
        urllib.request.urlopen(REGISTRY + "pip/", timeout=10).close()
    except OSError as e:
        pytest.skip(f"no route to the registry ({REGISTRY}: {e}): the node install is resolved where there is one")
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), *PURE_SDISTS],
        env=_node_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    locked = _locked()
    for python, glibc in sorted(set(_image_pythons().values())):
        report = tmp_path / f"report-{python}.json"
        result = _resolve(python, glibc, wheels, report)
        said = (result.stdout + result.stderr).splitlines()
        errors = [line for line in said if line.strip() and not line.startswith(("WARNING", "Collecting", "Looking"))]
        assert result.returncode == 0, f"Python {python}: a node's install does not resolve:\n" + "\n".join(
            errors[-15:]
        )
        chosen = {
            canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"]
            for i in json.loads(report.read_text())["install"]
        }
        assert chosen["torch"].split("+")[0] == locked["torch"]
        drift = {n: (v, locked[n]) for n, v in chosen.items() if n in locked and v.split("+")[0] != locked[n]}
        assert drift == {}, f"Python {python}: the install left constraints.txt"
