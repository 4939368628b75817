"""Whole models through the Triton MoE kernels (Triton's interpreter on a CPU, compiled on a GPU) against
the same models on the pure-torch reference path: the output and every parameter's gradient."""

import pytest
import torch

import switchsweep.kernels.ops as ops
from switchsweep.models.dit_moe import DiTMoE
from switchsweep.models.switch_dit import SwitchDiT
from tests.support.kernel_paths import kernel_path_gaps, randomize_, relative_gap

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Two blocks of width 32 keep the interpreter's programs few; fp32 on both paths, so the paths differ only
# in summation order: relative gaps (max |triton - reference| / max |reference|) stay near 1e-6.
SMALL = dict(image_size=8, channels=1, num_classes=10, patch_size=2, hidden=32, depth=2, heads=2)
TOL = 1e-5
TIMESTEPS = {"per-sample timesteps": [3, 600, 999], "one shared timestep": [417, 417, 417]}


def _models():
    return {
        "switch_dit": SwitchDiT(num_experts=3, top_k=2, **SMALL),
        "dit_moe": DiTMoE(num_experts=4, top_k=2, shared_experts=1, **SMALL),
    }


@pytest.fixture
def triton_calls(monkeypatch):
    """How often each Triton op ran: the comparison means something only if the Triton path was taken."""
    calls = {"sample_routed": 0, "grouped": 0}
    for attr, key in (("sample_routed_linear_triton", "sample_routed"), ("moe_grouped_linear_triton", "grouped")):
        op = getattr(ops, attr)

        def spy(*args, _op=op, _key=key):
            calls[_key] += 1
            return _op(*args)

        monkeypatch.setattr(ops, attr, spy)
    return calls


@pytest.mark.parametrize("timesteps", list(TIMESTEPS), ids=list(TIMESTEPS))
@pytest.mark.parametrize("name", ["switch_dit", "dit_moe"])
def test_model_through_triton_equals_the_reference_path(name, timesteps, triton_calls):
    model = randomize_(_models()[name]).to(DEVICE)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    t = torch.tensor(TIMESTEPS[timesteps], device=DEVICE)  # a full tensor, not a broadcast view: every sample is routed
    y = torch.tensor([0, 3, 9], device=DEVICE)
    gaps = kernel_path_gaps(model, x, t, y)
    assert triton_calls["sample_routed" if name == "switch_dit" else "grouped"] >= SMALL["depth"]
    assert set(gaps) == {"output", *(n for n, p in model.named_parameters())}  # every parameter has a gradient
    worst = {n: g for n, g in gaps.items() if g > TOL}
    assert not worst, f"Triton path off the reference beyond {TOL}: {worst}"


def test_relative_gap_is_normwise():
    ref = torch.tensor([4.0, -2.0, 0.0])
    assert relative_gap(ref + torch.tensor([0.0, 0.04, 0.0]), ref) == pytest.approx(0.01)
    assert relative_gap(torch.zeros(2), torch.zeros(2)) == 0.0
