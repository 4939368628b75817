"""DiT-MoE baseline: each block's MLP becomes token-routed top-k SwiGLU experts plus always-on shared
experts, trained with the expert-level balance loss. The routed experts run on the token-routed
grouped-GEMM op (Triton on CUDA)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from switchsweep.kernels import moe_grouped_linear
from switchsweep.models.dit import DiT
from switchsweep.models.layers import AdaLNBranches, modulate
from switchsweep.models.routing import expert_balance_loss, gate_probs, topk_gates


def swiglu_hidden(dim: int, mlp_ratio: float) -> int:
    """2/3 of the GELU MLP's width, rounded up to a multiple of 8: one SwiGLU expert then has about
    the parameters of one DiT MLP."""
    return 8 * math.ceil(2 * mlp_ratio * dim / 3 / 8)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w13 = nn.Linear(dim, 2 * hidden)
        self.w2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(a) * b)


class MoEMlp(nn.Module):
    """Token-level top-k routing over M SwiGLU experts (gates: top-k softmax probabilities), plus
    `shared` always-on experts folded into one SwiGLU of shared x hidden width."""

    def __init__(self, dim: int, hidden: int, num_experts: int, top_k: int, shared: int):
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(dim, num_experts, bias=False)
        self.w13 = nn.Parameter(torch.empty(num_experts, dim, 2 * hidden).uniform_(-(dim**-0.5), dim**-0.5))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, dim).uniform_(-(hidden**-0.5), hidden**-0.5))
        self.shared = SwiGLU(dim, shared * hidden) if shared > 0 else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(output [B, L, D], router probabilities [B*L, M], chosen experts [B*L, k])."""
        b, l, d = x.shape
        tokens = x.reshape(b * l, d)
        probs = gate_probs(self.router(tokens))
        gates, idx = topk_gates(probs, self.top_k)
        a, g = moe_grouped_linear(tokens, self.w13, idx).chunk(2, dim=-1)  # per (token, choice) pair
        out = moe_grouped_linear(F.silu(a) * g, self.w2, idx, gates.to(x.dtype), x_is_pairs=True)
        out = out.view(b * l, self.top_k, d).sum(1)
        if self.shared is not None:
            out = out + self.shared(tokens)
        return out.view(b, l, d), probs, idx


class DiTMoEBlock(AdaLNBranches):
    compilable = False  # token routing sizes each expert's work from the data (and reads it on the host on a CPU)

    def __init__(self, dim: int, heads: int, mlp_ratio: float, num_experts: int, top_k: int, shared: int):
        super().__init__(dim, heads, mlp_ratio)
        self.mlp = MoEMlp(dim, swiglu_hidden(dim, mlp_ratio), num_experts, top_k, shared)

    def forward(self, x: Tensor, c: Tensor, routing: list | None = None) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        out, probs, idx = self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        if routing is not None:
            routing.append((probs, idx))
        return x + gate_mlp.unsqueeze(1) * out


class DiTMoE(DiT):
    def __init__(
        self, *, num_experts: int = 8, top_k: int = 2, shared_experts: int = 1, expert_balance: float = 0.01, **kwargs
    ):
        self.num_experts, self.top_k, self.shared_experts = num_experts, top_k, shared_experts
        self.expert_balance = expert_balance
        super().__init__(**kwargs)

    def _make_block(self, index: int) -> DiTMoEBlock:
        return DiTMoEBlock(self.hidden, self.heads, self.mlp_ratio, self.num_experts, self.top_k, self.shared_experts)

    def _run_blocks(self, x: Tensor, c: Tensor, t: Tensor, e_t: Tensor, aux: dict[str, Any] | None) -> Tensor:
        routing: list | None = [] if aux is not None else None
        for block in self.blocks:
            x = block(x, c, routing)
        if aux is not None:
            aux["token_routing"] = routing
        return x

    def aux_losses(self, aux: dict[str, Any], t: Tensor) -> dict[str, tuple[float, Tensor]]:
        if self.expert_balance <= 0:
            return {}
        losses = [expert_balance_loss(probs, idx) for probs, idx in aux["token_routing"]]
        return {"balance": (self.expert_balance, torch.stack(losses).mean())}
