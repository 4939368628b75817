"""Routing functions of Switch-DiT and DTR: gates, top-k selection, prior and channel masks."""

from __future__ import annotations

import torch
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
