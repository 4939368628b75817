"""One model's forward and backward through the Triton MoE kernels against the pure-torch reference path:
the check that the kernels are right inside the model, not only op by op."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from switchsweep.kernels.backend import kernels_backend


@torch.no_grad()
def randomize_(model: nn.Module, std: float = 0.05, seed: int = 0) -> nn.Module:
    """Add N(0, std^2) noise to every parameter, so that the zero-initialised ones (adaLN-Zero, the
    experts' one-vector init) pass gradients and every kernel's output matters to the loss."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_((torch.randn(p.shape, generator=g) * std).to(p.device, p.dtype))
    return model


def _run(model: nn.Module, backend: str, x: Tensor, t: Tensor, y: Tensor, cotangent: Tensor | None):
    model.zero_grad(set_to_none=True)
    with kernels_backend(backend):
        out = model(x, t, y)
        if cotangent is None:
            cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device, out.dtype)
        out.backward(cotangent)
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads, cotangent


def relative_gap(a: Tensor, ref: Tensor) -> float:
    """max |a - ref| / max |ref|, in float64 (0 when both are zero)."""
    a, ref = a.double(), ref.double()
    scale = ref.abs().max().item()
    diff = (a - ref).abs().max().item()
    return diff / scale if scale > 0 else diff


def kernel_path_gaps(model: nn.Module, x: Tensor, t: Tensor, y: Tensor) -> dict[str, float]:
    """Relative gaps (`relative_gap`) between the Triton path and the reference path, same inputs and
    the same random cotangent: "output", then every parameter's gradient by name. A parameter that
    gets a gradient on one path only is a ValueError."""
    ref_out, ref_grads, cotangent = _run(model, "reference", x, t, y, None)
    out, grads, _ = _run(model, "triton", x, t, y, cotangent)
    if grads.keys() != ref_grads.keys():
        raise ValueError(
            f"parameters with a gradient differ between the paths: {sorted(grads.keys() ^ ref_grads.keys())}"
        )
    return {"output": relative_gap(out, ref_out), **{n: relative_gap(grads[n], ref_grads[n]) for n in ref_grads}}
