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


def sample_routed_linear_reference(
    z: Tensor, weight: Tensor, bias: Tensor, expert_idx: Tensor, gates: Tensor
) -> Tensor:
    """z * m(z) with m(z) = 1 + sum_j gates[b, j] (z[b] @ weight[e_bj] + bias[e_bj]) (Switch-DiT SMoE, Sec. 4.1)."""
    w_mix, b_mix = mixed_expert_params(weight, bias, expert_idx, gates)
    delta = torch.baddbmm(b_mix.unsqueeze(1).to(z.dtype), z, w_mix.to(z.dtype))
    return z * (1 + delta)


def shared_routing_linear(z: Tensor, weight: Tensor, bias: Tensor, expert_idx: Tensor, gates: Tensor) -> Tensor:
    """The same op when all samples share experts expert_idx [k] and gates [k] (sampling: one t per
    step): the experts fold into one [D, D] matrix and the layer is one dense GEMM over all B*L tokens."""
    w_mix = torch.einsum("k,kde->de", gates.to(weight.dtype), weight[expert_idx])
    b_mix = gates.to(bias.dtype) @ bias[expert_idx]
    b, l, d = z.shape
    delta = torch.addmm(b_mix.to(z.dtype), z.reshape(b * l, d), w_mix.to(z.dtype)).view(b, l, d)
    return torch.addcmul(z, z, delta)  # z * (1 + delta) in one pass


def moe_grouped_linear_reference(
    x: Tensor, weight: Tensor, expert_idx: Tensor, gates: Tensor | None, x_is_pairs: bool
) -> Tensor:
    """Per-pair outputs [T*k, Dout] of token-routed experts: row t*k+j is gates[t, j] * x[row] @ weight[e_tj],
    row = t*k+j for per-pair inputs, else t. One GEMM per expert over the rows routed to it."""
    k = expert_idx.shape[1]
    flat = expert_idx.reshape(-1)
    rows = torch.arange(flat.numel(), device=x.device)
    if not x_is_pairs:
        rows = rows // k
    order = torch.argsort(flat, stable=True)
    sizes = torch.bincount(flat, minlength=weight.shape[0]).tolist()  # a host read: this is the CPU path
    parts = [x[rows[chunk]] @ weight[e] for e, chunk in enumerate(order.split(sizes))]
    out = x.new_empty(flat.numel(), weight.shape[2]).index_copy(0, order, torch.cat(parts))
    return out if gates is None else out * gates.reshape(-1, 1).to(out.dtype)


def token_routed_linear_reference(x: Tensor, weight: Tensor, expert_idx: Tensor, gates: Tensor) -> Tensor:
    """sum_j gates[t, j] * x[t] @ weight[expert_idx[t, j]], [T, Dout]."""
    t, k = expert_idx.shape
    return moe_grouped_linear_reference(x, weight, expert_idx, gates, False).view(t, k, -1).sum(1)


def expert_layer_least_ops(z: Tensor, w: Tensor, w_t: Tensor, dy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """y = z (1 + z W_b) per sample b, and its backward: dz and the per-sample dW_b (w_t = W_b^T), in the
    fewest torch ops: the floor a step of the expert layer can reach (benchmarks/step_time.py --floor)."""
    h = torch.bmm(z, w)
    y = torch.addcmul(z, z, h)
    dh = dy * z
    dz = torch.addcmul(dy, dy, h).baddbmm_(dh, w_t)  # dy (1 + h) + dh W^T
    return y, dz, torch.bmm(z.transpose(1, 2), dh)
