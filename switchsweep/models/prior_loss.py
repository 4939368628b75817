"""The diffusion prior loss of Switch-DiT (Sec. 4.2): L1 matching cost, Hungarian matching, JSD."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def matching_cost(w_gate: Tensor, w_prior: Tensor) -> Tensor:
    """C[i, j] = sum_t |w_gate[t, i] - w_prior[t, j]| over all T timesteps (Sec. 4.2), [U, U].

    For 0/1 matrices |a - b| = a + b - 2ab, so the cost is one matmul and stays on the device.
    """
    w_gate, w_prior = w_gate.float(), w_prior.float()
    return w_gate.sum(0)[:, None] + w_prior.sum(0)[None, :] - 2.0 * (w_gate.T @ w_prior)


def hungarian_match(cost: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Minimum-cost one-to-one matching of gate units to prior units (Sec. 4.2).

    Returns col with gate unit i matched to prior unit col[i]. Rows and columns are shuffled before
    solving so that ties between equal-cost matchings are broken at random.
    """
    n = cost.shape[0]
    rp, cp = rng.permutation(n), rng.permutation(n)
    r, c = linear_sum_assignment(cost[rp][:, cp])
    col = np.empty(n, dtype=np.int64)
    col[rp[r]] = cp[c]
    return col


def _kl_terms(p: Tensor, m: Tensor) -> Tensor:
    """p log(p / m) elementwise, 0 where p = 0. Masked with `where` on safe operands rather than
    `xlogy`, whose derivative at p = 0 is 0/0: a gate probability that underflows to exactly 0
    would otherwise turn every logit gradient of its row into NaN."""
    pos = p > 0
    ratio = torch.where(pos, p, torch.ones_like(p)) / torch.where(pos, m, torch.ones_like(m))
    return torch.where(pos, p * torch.log(ratio), torch.zeros_like(p))


def jensen_shannon(p: Tensor, q: Tensor) -> Tensor:
    """JSD(p || q) = KL(p || m)/2 + KL(q || m)/2 with m = (p + q)/2, per row over the last dim (nats)
    (the divergence of the diffusion prior loss, Sec. 4.2). Exact, with finite gradients at p = 0."""
    m = 0.5 * (p + q)
    return 0.5 * (_kl_terms(p, m) + _kl_terms(q, m)).sum(-1)


def diffusion_prior_loss(gate_probs: Tensor, matched_prior: Tensor, k: int) -> Tensor:
    """L_dp = JSD(p_tot(e_t) / N || w_prior[t] (matched) / (k N)), averaged over the batch (Sec. 4.2).

    gate_probs: [B, N, M] full softmax of every block at the batch's timesteps; matched_prior: [B, N*M]
    0/1 rows of the prior, columns permuted by the matching.
    """
    num_blocks = gate_probs.shape[1]
    p = gate_probs.flatten(1) / num_blocks
    q = matched_prior.to(p.dtype) / (k * num_blocks)
    return jensen_shannon(p, q).mean()


class PendingMatch:
    """A matching whose cost matrix is on its way to the host.

    The cost is copied into pinned memory without blocking; `wait()` is called after the model's
    forward has been queued, so the GPU keeps working while the host waits for the copy and runs
    the Hungarian solver. The permutation goes back the same way.
    """

    def __init__(self, cost: Tensor, rng: np.random.Generator):
        self._rng = rng
        self._device = cost.device
        self._event = None
        if cost.is_cuda:
            self._host = torch.empty(cost.shape, dtype=cost.dtype, pin_memory=True)
            self._host.copy_(cost, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = cost

    def wait(self) -> Tensor:
        if self._event is not None:
            self._event.synchronize()
        col = torch.from_numpy(hungarian_match(self._host.numpy(), self._rng))
        if self._device.type == "cuda":
            return col.pin_memory().to(self._device, non_blocking=True)
        return col.to(self._device)
