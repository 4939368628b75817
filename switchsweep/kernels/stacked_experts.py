"""Timestep-routed linear experts for samples of few tokens (the CPU path at the digits' shape).

With few tokens per sample, a per-sample mixed [D, D] weight (and its gradient) costs more than the
tokens' own maths. Instead each token is scaled by its sample's dense gates and stacked,
zg[b, l] = [g_b1 z_bl, ..., g_bM z_bl] of width M*D, and multiplied once by the experts' weights
stacked as [M*D, D] (a free view of the parameter): sum_m g_bm z_bl W_m in one large GEMM. That is
M/k times the useful FLOPs (a gate is 0 off its top-k) but three large GEMMs per step in all; the
hand-written backward saves only zg and builds none of the per-expert outputs, permuted weight copies
and broadcast gate tensors that autograd's graph of the same maths keeps.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _StackedExperts(torch.autograd.Function):
    """y = z * (1 + zg @ W_stack + g @ bias) for z [B, L, D], W [M, D, D], bias [M, D], dense gates g [B, M]."""

    @staticmethod
    def forward(ctx, z: Tensor, weight: Tensor, bias: Tensor, gates: Tensor) -> Tensor:
        z = z.contiguous()
        (b, l, d), m = z.shape, weight.shape[0]
        w = weight.to(z.dtype)
        zg = (z.view(b, l, 1, d) * gates.view(b, 1, m, 1)).view(b * l, m * d)
        delta = torch.mm(zg, w.view(m * d, d)).view(b, l, d)
        delta.add_((gates @ bias.to(z.dtype)).view(b, 1, d))
        ctx.save_for_backward(z, w, bias, gates, zg, delta)
        ctx.param_dtypes = weight.dtype, bias.dtype
        return torch.addcmul(z, z, delta)

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        z, w, bias, gates, zg, delta = ctx.saved_tensors
        dy = dy.contiguous()
        (b, l, d), m = z.shape, w.shape[0]
        dd = dy * z  # d loss / d delta
        dzg = torch.mm(dd.view(b * l, d), w.view(m * d, d).t()).view(b, l, m, d)
        dz = torch.addcmul(dy, dy, delta).add_((dzg * gates.view(b, 1, m, 1)).sum(2))
        dw = torch.mm(zg.t(), dd.view(b * l, d)).view(m, d, d)
        dd_sum = dd.sum(1)
        db = gates.t() @ dd_sum
        dg = (dzg * z.view(b, l, 1, d)).sum((1, 3)) + dd_sum @ bias.to(z.dtype).t()
        w_dtype, b_dtype = ctx.param_dtypes
        return dz, dw.to(w_dtype), db.to(b_dtype), dg


def stacked_experts_linear(z: Tensor, weight: Tensor, bias: Tensor, expert_idx: Tensor, gates: Tensor) -> Tensor:
    """z * (1 + sum_j gates[b, j] * (z[b] @ weight[e_bj] + bias[e_bj])) (Switch-DiT SMoE, Sec. 4.1) with every
    expert applied to every token as one stacked GEMM (module doc); z [B, L, D], expert_idx and gates [B, k]."""
    dense = gates.new_zeros(gates.shape[0], weight.shape[0]).scatter_add(1, expert_idx, gates)
    return _StackedExperts.apply(z, weight, bias, dense.to(z.dtype))
