"""Pure-torch reference of the MoE ops: the CPU path and the oracle the Triton kernels are tested against."""

from __future__ import annotations

import torch
from torch import Tensor


def mixed_expert_params(weight: Tensor, bias: Tensor, expert_idx: Tensor, gates: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample gate-weighted sums of the selected experts' weights [B, D, D] and biases [B, D].

    Experts are linear, so sum_j g_j (z W_j + b_j) = z (sum_j g_j W_j) + sum_j g_j b_j: mixing the
    weights first costs one GEMM per sample instead of k.
    """
    num_experts, dim, _ = weight.shape
    dense_gates = gates.new_zeros(gates.shape[0], num_experts).scatter_add(1, expert_idx, gates)
    w_mix = (dense_gates.to(weight.dtype) @ weight.reshape(num_experts, dim * dim)).view(-1, dim, dim)
    b_mix = dense_gates.to(bias.dtype) @ bias
    return w_mix, b_mix


def sample_routed_linear_reference(z: Tensor, weight: Tensor, bias: Tensor, expert_idx: Tensor, gates: Tensor) -> Tensor:
    """z * m(z) with m(z) = 1 + sum_j gates[b, j] (z[b] @ weight[e_bj] + bias[e_bj]) (Switch-DiT SMoE, Sec. 4.1)."""
    w_mix, b_mix = mixed_expert_params(weight, bias, expert_idx, gates)
    delta = torch.baddbmm(b_mix.unsqueeze(1).to(z.dtype), z, w_mix.to(z.dtype))
    return z * (1 + delta)
