"""Where the MoE ops run: Triton compiled on a GPU, Triton's interpreter only without CUDA, and the
SWITCHSWEEP_KERNELS testing aid."""

import os

import pytest
import torch

from switchsweep.kernels import sample_routed_linear
from switchsweep.kernels.backend import (
    ENV,
    INTERPRET,
    backend,
    interpreted,
    kernels_backend,
    set_interpreter,
    uses_triton,
)


@pytest.mark.parametrize(
    "cuda, before, after",
    [
        (False, {}, {INTERPRET: "1"}),  # no CUDA: the interpreter
        (True, {}, {}),  # CUDA: the compiled kernels
        (False, {INTERPRET: "0"}, {INTERPRET: "0"}),  # a setting made before is kept
    ],
)
def test_interpreter_is_set_only_without_cuda(cuda, before, after):
    env = dict(before)
    set_interpreter(cuda, env)
    assert env == after


def test_this_session_runs_the_kernels_the_rule_says():
    # On a CPU machine the interpreter, on a GPU the compiled kernels (gpu-check runs this there).
    assert interpreted() == (not torch.cuda.is_available())


def test_backend_setting_decides_the_path(monkeypatch):
    t = torch.ones(1, device="cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.delenv(ENV, raising=False)
    assert backend() == "auto" and uses_triton(t) == t.is_cuda
    with kernels_backend("triton"):
        assert uses_triton(t)  # compiled on a GPU, in the interpreter on a CPU
    with kernels_backend("reference"):
        assert not uses_triton(t)
    assert ENV not in os.environ


def test_a_bad_backend_setting_is_one_line(monkeypatch):
    monkeypatch.setenv(ENV, "fast")
    with pytest.raises(ValueError, match=r"SWITCHSWEEP_KERNELS='fast' is not one of auto, triton, reference"):
        sample_routed_linear(
            torch.ones(2, 3, 4), torch.zeros(3, 4, 4), torch.zeros(3, 4), torch.tensor([[0], [1]]), torch.ones(2, 1)
        )
    with pytest.raises(ValueError, match="kernels backend 'gpu' is not one of"):
        with kernels_backend("gpu"):
            pass


def test_triton_on_cpu_without_the_interpreter_is_one_line():
    import subprocess
    import sys

    code = (
        "import os, torch; os.environ.pop('TRITON_INTERPRET', None); os.environ['SWITCHSWEEP_KERNELS'] = 'triton'\n"
        "from switchsweep.kernels import token_routed_linear\n"
        "token_routed_linear(torch.ones(2, 4), torch.ones(3, 4, 4), torch.tensor([[0], [1]]), torch.ones(2, 1))"
    )
    env = {k: v for k, v in os.environ.items() if k != INTERPRET}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines()[-1] == (
        "RuntimeError: SWITCHSWEEP_KERNELS=triton on CPU tensors needs Triton's interpreter: set TRITON_INTERPRET=1 "
        "before switchsweep.kernels is imported"
    )
