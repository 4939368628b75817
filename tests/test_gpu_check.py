"""`make gpu-check` is wired, and its GPU parts import on a GPU machine without the full install."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine gpu-check runs for real")
def test_gpu_check_says_in_one_line_that_there_is_no_gpu():
    run = subprocess.run(["make", "-s", "gpu-check"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "gpu-check: no CUDA device on this machine (torch.cuda.is_available() is False): nothing to check here"
    ]


def test_gpu_parts_import_without_ray_mlflow_optuna():
    # What a GPU machine with PyTorch, Triton, numpy, scipy, scikit-learn and pytest (and the carried config
    # wheels) lacks: every module the kernel, model and benchmark parts load must do without it.
    code = r"""
import importlib.util, sys
MISSING = ("ray", "mlflow", "optuna", "optuna_dashboard", "diffusers", "plotly")
class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in MISSING:
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, Missing())
import benchmarks.gpu_check as gc, benchmarks.moe_kernels, benchmarks.step_time, tests.support.kernel_paths
for test in ["tests/conftest.py", *gc.KERNEL_TESTS]:
    spec = importlib.util.spec_from_file_location(test.replace("/", ".")[:-3], test)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(sorted(m for m in sys.modules if m.split(".")[0] in MISSING))
"""
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"
