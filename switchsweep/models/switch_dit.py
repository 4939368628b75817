"""Switch-DiT: a timestep-gated sparse MoE of linear experts in every DiT block, plus the diffusion prior loss."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from switchsweep.kernels import sample_routed_linear
from switchsweep.kernels.reference import mixed_expert_params
from switchsweep.models.dit import DiT
from switchsweep.models.layers import AdaLNBranches, timestep_embedding
from switchsweep.models.prior_loss import PendingMatch, diffusion_prior_loss, hungarian_match, matching_cost
from switchsweep.models.routing import (
    gate_probs,
    gate_selection_mask,
    importance_balance_loss,
    noisy_logits,
    prior_mask,
    topk_gates,
)


class SwitchDiTBlock(AdaLNBranches):
    """DiT block with a timestep-gated SMoE of linear experts (Sec. 4.1), in one of three integrations:

    - skip_onevec (default): branches see z*m(z), m = 1 + sum_j g_j (z W_j + b_j); experts start at
      zero ("one-vector init": m = 1, the block starts as plain DiT); z*(1 - m) is added back at the
      end, so the residual stream itself is unchanged;
    - skip: the same with m = sum_j g_j (z W_j + b_j), experts randomly initialised;
    - direct: the SMoE output sum_j g_j (z W_j + b_j) replaces the block input.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float,
        num_experts: int,
        top_k: int,
        gating: str = "timestep",
        integration: str = "skip_onevec",
    ):
        super().__init__(dim, heads, mlp_ratio)
        self.top_k, self.integration = top_k, integration
        self.gate = nn.Sequential(nn.SiLU(), nn.Linear(dim, num_experts))
        # Noisy gating: a second head sets the noise scale (zero-initialised by SwitchDiT: softplus(0) at start).
        self.noise = nn.Sequential(nn.SiLU(), nn.Linear(dim, num_experts)) if gating == "noisy" else None
        self.expert_weight = nn.Parameter(torch.zeros(num_experts, dim, dim))
        self.expert_bias = nn.Parameter(torch.zeros(num_experts, dim))
        if integration != "skip_onevec":  # nn.Linear's default range
            bound = dim**-0.5
            nn.init.uniform_(self.expert_weight, -bound, bound)
            nn.init.uniform_(self.expert_bias, -bound, bound)

    def forward(self, x: Tensor, c: Tensor, probs: Tensor) -> Tensor:
        if probs.stride(0) == 0:  # one timestep for the whole batch: keep the routing a broadcast view
            gates, idx = (v.expand(x.shape[0], -1) for v in topk_gates(probs[:1], self.top_k))
        else:
            gates, idx = topk_gates(probs, self.top_k)
        gates = gates.to(x.dtype)
        if self.integration == "direct":
            w_mix, b_mix = mixed_expert_params(self.expert_weight, self.expert_bias, idx, gates)
            return super().forward(torch.baddbmm(b_mix.unsqueeze(1), x, w_mix), c)
        zm = sample_routed_linear(x, self.expert_weight, self.expert_bias, idx, gates)  # z * (1 + experts)
        if self.integration == "skip":
            zm = zm - x  # z * experts
        return super().forward(zm, c) + (x - zm)


class SwitchDiT(DiT):
    def __init__(
        self,
        *,
        num_experts: int = 3,
        top_k: int = 2,
        lambda_dp: float = 1.0,
        prior_alpha: float = 4.0,
        gating: str = "timestep",
        integration: str = "skip_onevec",
        balance_loss: float = 0.0,
        matching_seed: int = 0,
        **kwargs,
    ):
        self.num_experts, self.top_k = num_experts, top_k
        self.gating, self.integration, self.balance_loss = gating, integration, balance_loss
        super().__init__(**kwargs)
        for block in self.blocks:
            if block.noise is not None:
                nn.init.zeros_(block.noise[-1].weight)
                nn.init.zeros_(block.noise[-1].bias)
        self.lambda_dp, self.prior_alpha = lambda_dp, prior_alpha
        prior = prior_mask(self.depth, num_experts, top_k, alpha=prior_alpha, num_timesteps=self.num_timesteps)
        self.register_buffer("w_prior", prior, persistent=False)
        # sinusoid(t) of every timestep: the all-T gate pass runs every training step, its table never changes.
        freqs = timestep_embedding(torch.arange(self.num_timesteps), self.t_embedder.freq_dim)
        self.register_buffer("t_frequencies", freqs, persistent=False)
        self.matching_seed = matching_seed
        self._matchings = 0  # matchings solved so far; seeds their tie-breaking and is checkpointed

    def _make_block(self, index: int) -> SwitchDiTBlock:
        return SwitchDiTBlock(
            self.hidden, self.heads, self.mlp_ratio, self.num_experts, self.top_k, self.gating, self.integration
        )

    def _run_blocks(self, x: Tensor, c: Tensor, t: Tensor, e_t: Tensor, aux: dict[str, Any] | None) -> Tensor:
        if aux is not None and self.training and self.lambda_dp > 0:
            # Queue the matching before the blocks so its host round trip overlaps their compute.
            aux["matching"] = self._launch_matching()
        if t.stride(0) == 0 and len(t) > 1:  # a shared timestep (sampling): route once, broadcast
            probs = self.block_gate_probs(e_t[:1]).expand(len(t), -1, -1)
        else:
            probs = self.block_gate_probs(e_t, noisy=self.training)
        for i, block in enumerate(self.blocks):
            x = block(x, c, probs[:, i])
        if aux is not None:
            aux["gate_probs"] = probs
        return x

    def block_gate_probs(self, e_t: Tensor, noisy: bool = False) -> Tensor:
        """p_i(e_t) of every block i, [B, N, M]. Every gate reads the same SiLU(e_t), so the N heads run
        as one [D, N*M] matmul of their stacked weights (the blocks keep their own parameters)."""
        heads = [block.gate[1] for block in self.blocks]
        a = F.silu(e_t)
        logits = F.linear(a, torch.cat([h.weight for h in heads]), torch.cat([h.bias for h in heads]))
        if noisy and self.gating == "noisy":
            noise = [block.noise[1] for block in self.blocks]
            logits = noisy_logits(
                logits, F.linear(a, torch.cat([h.weight for h in noise]), torch.cat([h.bias for h in noise]))
            )
        return gate_probs(logits.view(len(e_t), len(heads), -1))

    @torch.no_grad()
    def all_gate_probs(self) -> Tensor:
        """Every block's full gate softmax at every timestep t = 0..T-1, [T, N, M]."""
        return self.block_gate_probs(self.t_embedder.mlp(self.t_frequencies.to(self.t_embedder.mlp[0].weight.dtype)))

    def gate_matrix(self) -> Tensor:
        """w_gate [T, N*M]: the top-k selection of every block at every timestep (Sec. 4.2)."""
        return gate_selection_mask(self.all_gate_probs(), self.top_k)

    def _launch_matching(self) -> PendingMatch:
        rng = np.random.default_rng([self.matching_seed, self._matchings])
        self._matchings += 1
        return PendingMatch(matching_cost(self.gate_matrix(), self.w_prior), rng)

    def aux_losses(self, aux: dict[str, Any], t: Tensor) -> dict[str, tuple[float, Tensor]]:
        losses = {}
        if "matching" in aux:
            col = aux["matching"].wait()
            matched = self.w_prior[t][:, col]
            losses["prior"] = (self.lambda_dp, diffusion_prior_loss(aux["gate_probs"], matched, self.top_k))
        if self.balance_loss > 0:
            probs = aux["gate_probs"]
            selected = gate_selection_mask(probs, self.top_k).view_as(probs)
            losses["balance"] = (self.balance_loss, importance_balance_loss(probs * selected))
        return losses

    @torch.no_grad()
    def routing_matrices(self) -> dict[str, Tensor]:
        """On the CPU: w_gate [T, U], the prior matched to it [T, U], the matching (gate unit i -> prior
        unit col[i]), each expert's usage [N, M] (the fraction of timesteps that select it) and
        prior_jsd, the diffusion prior loss over all T timesteps against that matched prior."""
        probs = self.all_gate_probs()
        w_gate = gate_selection_mask(probs, self.top_k)
        cost = matching_cost(w_gate, self.w_prior)
        # A fixed rng: logging must not move the training run's tie-breaking sequence.
        col = torch.from_numpy(hungarian_match(cost.cpu().numpy(), np.random.default_rng(self.matching_seed)))
        matched = self.w_prior[:, col.to(self.w_prior.device)]
        return {
            "w_gate": w_gate.cpu(),
            "w_prior_matched": matched.cpu(),
            "permutation": col,
            "cost": cost.cpu(),
            "usage": w_gate.view_as(probs).mean(0).cpu(),
            "prior_jsd": diffusion_prior_loss(probs, matched, self.top_k).cpu(),
        }

    def get_extra_state(self) -> dict[str, int]:
        return {"matchings": self._matchings}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self._matchings = int(state["matchings"])
