"""Switch-DiT: a timestep-gated sparse MoE of linear experts in every DiT block, plus the diffusion prior loss."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from switchsweep.kernels import sample_routed_linear
from switchsweep.models.dit import DiT
from switchsweep.models.layers import AdaLNBranches
from switchsweep.models.prior_loss import PendingMatch, diffusion_prior_loss, hungarian_match, matching_cost
from switchsweep.models.routing import gate_probs, gate_selection_mask, prior_mask, topk_gates


class SwitchDiTBlock(AdaLNBranches):
    """DiT block whose branches see z*m(z), m(z) = 1 + sum_{j in top-k} p_j (z W_j + b_j) (Sec. 4.1).

    Experts start at zero ("one-vector init": m = 1), so the block starts as the plain DiT block;
    z*(1 - m) is added back at the end, leaving the residual stream itself unchanged.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, num_experts: int, top_k: int):
        super().__init__(dim, heads, mlp_ratio)
        self.top_k = top_k
        self.gate = nn.Sequential(nn.SiLU(), nn.Linear(dim, num_experts))
        self.expert_weight = nn.Parameter(torch.zeros(num_experts, dim, dim))
        self.expert_bias = nn.Parameter(torch.zeros(num_experts, dim))

    def gate_probs(self, e_t: Tensor) -> Tensor:
        return gate_probs(self.gate(e_t))

    def forward(self, x: Tensor, c: Tensor, probs: Tensor) -> Tensor:
        if probs.stride(0) == 0:  # one timestep for the whole batch: keep the routing a broadcast view
            gates, idx = (v.expand(x.shape[0], -1) for v in topk_gates(probs[:1], self.top_k))
        else:
            gates, idx = topk_gates(probs, self.top_k)
        zm = sample_routed_linear(x, self.expert_weight, self.expert_bias, idx, gates.to(x.dtype))
        return super().forward(zm, c) + (x - zm)


class SwitchDiT(DiT):
    def __init__(
        self,
        *,
        num_experts: int = 3,
        top_k: int = 2,
        lambda_dp: float = 1.0,
        prior_alpha: float = 4.0,
        matching_seed: int = 0,
        **kwargs,
    ):
        self.num_experts, self.top_k = num_experts, top_k
        super().__init__(**kwargs)
        self.lambda_dp, self.prior_alpha = lambda_dp, prior_alpha
        prior = prior_mask(self.depth, num_experts, top_k, alpha=prior_alpha, num_timesteps=self.num_timesteps)
        self.register_buffer("w_prior", prior, persistent=False)
        self.matching_seed = matching_seed
        self._matchings = 0  # matchings solved so far; seeds their tie-breaking and is checkpointed

    def _make_block(self, index: int) -> SwitchDiTBlock:
        return SwitchDiTBlock(self.hidden, self.heads, self.mlp_ratio, self.num_experts, self.top_k)

    def _run_blocks(self, x: Tensor, c: Tensor, t: Tensor, e_t: Tensor, aux: dict[str, Any] | None) -> Tensor:
        if aux is not None and self.training and self.lambda_dp > 0:
            # Queue the matching before the blocks so its host round trip overlaps their compute.
            aux["matching"] = self._launch_matching()
        if t.stride(0) == 0 and len(t) > 1:  # a shared timestep (sampling): route once, broadcast
            probs = [block.gate_probs(e_t[:1]).expand(len(t), -1) for block in self.blocks]
        else:
            probs = [block.gate_probs(e_t) for block in self.blocks]
        for block, p in zip(self.blocks, probs):
            x = block(x, c, p)
        if aux is not None:
            aux["gate_probs"] = torch.stack(probs, dim=1)
        return x

    @torch.no_grad()
    def all_gate_probs(self) -> Tensor:
        """Every block's full gate softmax at every timestep t = 0..T-1, [T, N, M]."""
        e = self.t_embedder(torch.arange(self.num_timesteps, device=self.w_prior.device))
        return torch.stack([block.gate_probs(e) for block in self.blocks], dim=1)

    def gate_matrix(self) -> Tensor:
        """w_gate [T, N*M]: the top-k selection of every block at every timestep (Sec. 4.2)."""
        return gate_selection_mask(self.all_gate_probs(), self.top_k)

    def _launch_matching(self) -> PendingMatch:
        rng = np.random.default_rng([self.matching_seed, self._matchings])
        self._matchings += 1
        return PendingMatch(matching_cost(self.gate_matrix(), self.w_prior), rng)

    def aux_losses(self, aux: dict[str, Any], t: Tensor) -> dict[str, tuple[float, Tensor]]:
        if "matching" not in aux:
            return {}
        col = aux["matching"].wait()
        matched = self.w_prior[t][:, col]
        return {"prior": (self.lambda_dp, diffusion_prior_loss(aux["gate_probs"], matched, self.top_k))}

    @torch.no_grad()
    def routing_matrices(self) -> dict[str, Tensor]:
        """w_gate [T, U], the prior matched to it [T, U] and the matching (gate unit i -> prior unit col[i]), on the CPU."""
        w_gate = self.gate_matrix()
        cost = matching_cost(w_gate, self.w_prior)
        # A fixed rng: logging must not move the training run's tie-breaking sequence.
        col = torch.from_numpy(hungarian_match(cost.cpu().numpy(), np.random.default_rng(self.matching_seed)))
        w_prior = self.w_prior.cpu()
        return {"w_gate": w_gate.cpu(), "w_prior_matched": w_prior[:, col], "permutation": col, "cost": cost.cpu()}

    def get_extra_state(self) -> dict[str, int]:
        return {"matchings": self._matchings}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self._matchings = int(state["matchings"])
