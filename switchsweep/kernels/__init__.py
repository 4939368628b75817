"""MoE ops behind one call each: Triton on CUDA tensors, the pure-torch reference elsewhere (`backend`)."""

from __future__ import annotations

import torch
from torch import Tensor

from switchsweep.kernels.backend import uses_triton
from switchsweep.kernels.reference import (
    moe_grouped_linear_reference,
    sample_routed_linear_reference,
    shared_routing_linear,
)
from switchsweep.kernels.stacked_experts import stacked_experts_linear

__all__ = ["sample_routed_linear", "moe_grouped_linear", "token_routed_linear"]

# Up to this many tokens x experts per sample the torch path runs every expert on every token
# (`stacked_experts_linear`) instead of mixing a weight per sample: on a CPU faster at 4 and 16 tokens x 3
# experts, slower at 64 x 3 (benchmarks/moe_kernels.py, `stacked` against `reference`).
ALL_EXPERTS_MAX = 48


def routing_is_shared(expert_idx: Tensor, gates: Tensor) -> bool:
    """True when every sample provably has the same experts and gates: both are broadcast views over
    the batch (stride 0), as the model builds them when all samples share a timestep. Reads only
    metadata, so deciding costs no host synchronisation."""
    return expert_idx.shape[0] == 1 or (expert_idx.stride(0) == 0 and gates.stride(0) == 0)


def sample_routed_linear(z: Tensor, weight: Tensor, bias: Tensor, expert_idx: Tensor, gates: Tensor) -> Tensor:
    """Timestep-routed linear experts: z [B, L, D], weight [M, D, D], bias [M, D], expert_idx [B, k],
    gates [B, k] -> z * (1 + sum_j gates[b, j] * (z[b] @ weight[e_bj] + bias[e_bj]))."""
    if routing_is_shared(expert_idx, gates):
        return shared_routing_linear(z, weight, bias, expert_idx[0], gates[0])
    if uses_triton(z):
        from switchsweep.kernels.ops import sample_routed_linear_triton

        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (z, weight, bias, gates))
        return sample_routed_linear_triton(z, weight, bias, expert_idx, gates, needs_grad)[0]
    if z.shape[1] * weight.shape[0] <= ALL_EXPERTS_MAX:
        return stacked_experts_linear(z, weight, bias, expert_idx, gates)
    return sample_routed_linear_reference(z, weight, bias, expert_idx, gates)


def moe_grouped_linear(
    x: Tensor, weight: Tensor, expert_idx: Tensor, gates: Tensor | None = None, x_is_pairs: bool = False
) -> Tensor:
    """Token-routed experts, one output row per (token, choice) pair: [T*k, Dout], row t*k+j =
    gates[t, j] (if given) * x[row] @ weight[expert_idx[t, j]], row = t*k+j if x_is_pairs else t.
    x [T or T*k, Din], weight [M, Din, Dout], expert_idx [T, k] (long)."""
    if uses_triton(x):
        from switchsweep.kernels.ops import moe_grouped_linear_triton

        return moe_grouped_linear_triton(x, weight, expert_idx, gates, x_is_pairs)[0]
    return moe_grouped_linear_reference(x, weight, expert_idx, gates, x_is_pairs)


def token_routed_linear(x: Tensor, weight: Tensor, expert_idx: Tensor, gates: Tensor) -> Tensor:
    """sum_j gates[t, j] * x[t] @ weight[expert_idx[t, j]]: x [T, Din] -> [T, Dout]."""
    t, k = expert_idx.shape
    return moe_grouped_linear(x, weight, expert_idx, gates).view(t, k, -1).sum(1)
