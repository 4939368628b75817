"""Weightings of the noise-prediction loss over timesteps (the baselines the paper compares against).

Per-sample weights apply to the eps-MSE term; the variational-bound term (learned variance) is never
reweighted. Uncertainty weighting instead reweights the per-cluster mean of each sample's full loss.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from switchsweep.config.schema import TrainConfig


def snr(alphas_cumprod: Tensor, t: Tensor) -> Tensor:
    """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) of each sample's timestep."""
    a = alphas_cumprod.to(t.device)[t]
    return a / (1 - a)


def min_snr_weight(snr_t: Tensor, gamma: float) -> Tensor:
    """Min-SNR-gamma for eps-prediction (Hang et al. 2023, Eq. 8 with the eps-loss conversion):
    w_t = min(SNR(t), gamma) / SNR(t), per sample."""
    return snr_t.clamp(max=gamma) / snr_t


def p2_weight(snr_t: Tensor, k: float, gamma: float) -> Tensor:
    """P2 weighting (Choi et al. 2022, Eq. 8): w_t = 1 / (k + SNR(t))^gamma, computed for each sample
    from its own timestep (never broadcast across the batch)."""
    return (k + snr_t) ** -gamma


def timestep_cluster(t: Tensor, num_clusters: int, num_timesteps: int) -> Tensor:
    """ANT's uniform timestep clusters: cluster i holds t in [i T / n, (i + 1) T / n)."""
    return torch.div(t * num_clusters, num_timesteps, rounding_mode="floor")


def stratified_timesteps(
    batch: int, num_clusters: int, num_timesteps: int, generator: torch.Generator, device: torch.device
) -> Tensor:
    """t with the batch spread evenly over the clusters (the first batch % n clusters get one more),
    uniform inside each cluster, so every cluster's loss is seen every step."""
    cluster = torch.arange(batch, device=device) % num_clusters
    lo = torch.div(cluster * num_timesteps + num_clusters - 1, num_clusters, rounding_mode="floor")
    hi = torch.div((cluster + 1) * num_timesteps + num_clusters - 1, num_clusters, rounding_mode="floor")
    u = torch.rand(batch, generator=generator, device=device)
    return (lo + (u * (hi - lo)).long()).clamp(max=num_timesteps - 1)


class UncertaintyWeighting(nn.Module):
    """ANT's uncertainty weighting (Go et al. 2023, after Kendall et al. 2018), in the official
    Switch-DiT code's form: L = sum_i 0.5 * (exp(-s_i) L_i / n + s_i) over n timestep clusters, with
    learnable log-variances s_i; for a fixed L_i the optimum is s_i = log(L_i / n)."""

    def __init__(self, num_clusters: int, num_timesteps: int):
        super().__init__()
        self.num_clusters, self.num_timesteps = num_clusters, num_timesteps
        self.log_var = nn.Parameter(torch.zeros(num_clusters))

    def cluster_means(self, losses: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(mean loss of each cluster [n], whether the batch has a sample in it [n])."""
        c = timestep_cluster(t, self.num_clusters, self.num_timesteps)
        sums = torch.zeros(self.num_clusters, device=losses.device, dtype=losses.dtype).index_add(0, c, losses)
        counts = torch.bincount(c, minlength=self.num_clusters).to(losses.dtype)
        return sums / counts.clamp(min=1), counts > 0

    def forward(self, losses: Tensor, t: Tensor) -> Tensor:
        means, present = self.cluster_means(losses, t)
        s = self.log_var.to(losses.dtype)
        terms = 0.5 * (torch.exp(-s) * means / self.num_clusters + s)
        return torch.where(present, terms, torch.zeros_like(terms)).sum()


class LossWeighting(nn.Module):
    """The configured weighting: maps the diffusion loss terms of a batch to the scalar noise loss."""

    def __init__(self, cfg: TrainConfig, alphas_cumprod: Tensor, num_timesteps: int):
        super().__init__()
        self.kind = cfg.loss_weighting
        self.cfg = cfg
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self.uw = UncertaintyWeighting(cfg.uw_clusters, num_timesteps) if self.kind == "uw" else None

    def sample_timesteps(
        self, batch: int, num_timesteps: int, generator: torch.Generator, device: torch.device
    ) -> Tensor:
        if self.uw is not None:
            return stratified_timesteps(batch, self.uw.num_clusters, num_timesteps, generator, device)
        return torch.randint(0, num_timesteps, (batch,), generator=generator, device=device)

    def forward(self, terms: dict[str, Tensor], t: Tensor) -> Tensor:
        if self.kind == "constant":
            return terms["loss"].mean()
        if self.uw is not None:
            return self.uw(terms["loss"], t)
        s = snr(self.alphas_cumprod, t)
        w = (
            min_snr_weight(s, self.cfg.min_snr_gamma)
            if self.kind == "min_snr"
            else p2_weight(s, self.cfg.p2_k, self.cfg.p2_gamma)
        )
        per_sample = w * terms["mse"] + (terms["loss"] - terms["mse"])  # only the eps term is reweighted
        return per_sample.mean()
