"""Routing functions: gates, top-k selection, prior and channel masks, and the balance losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _sliding_window_mask(num_timesteps: int, width: int, total: int, alpha: float) -> Tensor:
    """Rows t = 0..T-1 with ones at [s_t, s_t + width), s_t = round((t / (T-1))^alpha * (total - width))."""
    t = torch.arange(num_timesteps, dtype=torch.float64)
    start = torch.round((t / (num_timesteps - 1)) ** alpha * (total - width)).long()
    cols = torch.arange(total)
    return ((cols[None] >= start[:, None]) & (cols[None] < start[:, None] + width)).float()


def prior_mask(num_blocks: int, num_experts: int, k: int, alpha: float = 4.0, num_timesteps: int = 1000) -> Tensor:
    """The diffusion prior w_prior (Switch-DiT Sec. 4.2, Eq. 7), float 0/1 of shape [T, N*M].

    Over the U = N*M units of all blocks, N*k consecutive units are on at timestep t, starting at
    s_t = round((t / (T-1))^alpha * (U - N*k)). Nearby timesteps share most units, distant ones
    few; max(N*(2k - M), 0) units are on at every t (the shared experts).
    """
    if not 1 <= k <= num_experts:
        raise ValueError(f"k={k} must be in [1, num_experts={num_experts}]")
    units = num_blocks * num_experts
    return _sliding_window_mask(num_timesteps, num_blocks * k, units, alpha)


def dtr_mask(channels: int, beta: float = 0.8, alpha: float = 4.0, num_timesteps: int = 1000) -> Tensor:
    """DTR channel mask m_t (Denoising Task Routing, Park et al., ICLR 2024), float 0/1 of shape [T, channels].

    floor(beta*C) consecutive channels are on, starting at s_t = round((t/(T-1))^alpha * (C - floor(beta*C))).
    """
    if not 0 < beta <= 1:
        raise ValueError(f"beta={beta} must be in (0, 1]")
    return _sliding_window_mask(num_timesteps, int(beta * channels), channels, alpha)


def gate_probs(logits: Tensor) -> Tensor:
    """p_i(e_t) = softmax(h_i(e_t)) over the M experts of one block (Switch-DiT Sec. 4.1)."""
    return torch.softmax(logits.float(), dim=-1)


def topk_gates(probs: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """g_i = TopK(p_i, k) (Switch-DiT Sec. 4.1): the k largest probabilities, not renormalised, and their indices."""
    return probs.topk(k, dim=-1)


def gate_selection_mask(probs: Tensor, k: int) -> Tensor:
    """w_gate rows (Sec. 4.2): probs [..., N, M] -> 0/1 [..., N*M] marking each block's top-k experts."""
    _, idx = probs.topk(k, dim=-1)
    mask = torch.zeros_like(probs).scatter_(-1, idx, 1.0)
    return mask.flatten(-2)


def noisy_logits(clean: Tensor, noise_logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Noisy top-k gating (Shazeer et al. 2017, Eq. 4): H = clean + N(0, 1) * softplus(W_noise x);
    used while training only, so evaluation is deterministic."""
    eps = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    return clean + eps * F.softplus(noise_logits)


def importance_balance_loss(gates: Tensor) -> Tensor:
    """Load-balancing loss (Shazeer et al. 2017, Eq. 6): CV(Importance)^2 with Importance_e the sum of
    expert e's gate values over the batch; gates [B, ..., M] (0 off the top-k). Zero exactly when
    every expert carries the same total gate, and averaged over any middle dimensions (blocks)."""
    importance = gates.sum(0)
    return (importance.var(-1, unbiased=False) / importance.mean(-1).pow(2).clamp(min=1e-12)).mean()


def expert_balance_loss(probs: Tensor, expert_idx: Tensor) -> Tensor:
    """Expert-level balance loss of token routing (Switch Transformer Eq. 4; DiT-MoE):
    M * sum_e f_e P_e, f_e = share of the T*k routing choices that go to e, P_e = mean router
    probability of e. Equals 1 for uniform routing. probs [T, M], expert_idx [T, k]."""
    m = probs.shape[-1]
    f = torch.bincount(expert_idx.reshape(-1), minlength=m).to(probs.dtype) / expert_idx.numel()
    return m * (f * probs.mean(0)).sum()
