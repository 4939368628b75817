"""Gaussian diffusion (DDPM, Ho et al.; improved DDPM, Nichol & Dhariwal): schedules, q(x_t | x_0),
the learned-variance posterior and the hybrid loss L_simple + L_vb."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def linear_betas(num_timesteps: int) -> Tensor:
    """Linear beta schedule from 1e-4 to 0.02, scaled to keep its shape for T != 1000 (Ho et al.)."""
    scale = 1000.0 / num_timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Cosine schedule: alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) pi/2) (Nichol & Dhariwal, Eq. 17)."""
    t = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    alpha_bar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def make_betas(schedule: str, num_timesteps: int) -> Tensor:
    if schedule == "linear":
        return linear_betas(num_timesteps)
    if schedule == "cosine":
        return cosine_betas(num_timesteps)
    raise ValueError(f"unknown schedule {schedule!r}: use linear or cosine")


def spaced_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """`steps` timesteps spread evenly over [0, T-1], both ends included."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps={steps} must be in [1, {num_timesteps}]")
    if steps == 1:
        return [num_timesteps - 1]
    stride = (num_timesteps - 1) / (steps - 1)
    return sorted({round(i * stride) for i in range(steps)})


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """log p(x) of data in [-1, 1] quantised to 256 bins under N(means, e^(2 log_scales)) (Ho et al. Eq. 13)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_probs = torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log((cdf_plus - cdf_min).clamp(min=1e-12))),
    )
    return log_probs


def mean_flat(x: Tensor) -> Tensor:
    return x.mean(dim=tuple(range(1, x.ndim)))


@dataclass
class PosteriorPrediction:
    mean: Tensor
    log_variance: Tensor
    pred_x0: Tensor
    eps: Tensor


class GaussianDiffusion:
    """A discrete diffusion over the given betas.

    `timestep_map[i]` is the original timestep that step i of this (possibly respaced) process
    stands for; the model is always called with original timesteps.
    """

    def __init__(self, betas: Tensor, timestep_map: Tensor | None = None, schedule: str = "custom"):
        betas = betas.double()
        self.schedule = schedule
        self.num_timesteps = len(betas)
        self.betas = betas
        self.timestep_map = torch.arange(len(betas)) if timestep_map is None else timestep_map.long()
        alphas = 1.0 - betas
        acp = torch.cumprod(alphas, 0)
        acp_prev = torch.cat([torch.ones(1, dtype=torch.float64), acp[:-1]])
        self.alphas_cumprod, self.alphas_cumprod_prev = acp, acp_prev
        self.sqrt_alphas_cumprod = acp.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1 - acp).sqrt()
        self.sqrt_recip_alphas_cumprod = (1 / acp).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1 / acp - 1).sqrt()
        post_var = betas * (1 - acp_prev) / (1 - acp)
        self.posterior_variance = post_var
        # The posterior variance is 0 at t = 0; clip the log to its t = 1 value.
        self.posterior_log_variance_clipped = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
        self.posterior_mean_coef1 = betas * acp_prev.sqrt() / (1 - acp)
        self.posterior_mean_coef2 = (1 - acp_prev) * alphas.sqrt() / (1 - acp)
        self.log_betas = torch.log(betas)

    @classmethod
    def from_config(cls, schedule: str, num_timesteps: int) -> GaussianDiffusion:
        return cls(make_betas(schedule, num_timesteps), schedule=schedule)

    def respaced(self, steps: int) -> GaussianDiffusion:
        """The process restricted to `steps` evenly spaced timesteps, with betas recomputed from alpha_bar."""
        use = spaced_timesteps(self.num_timesteps, steps)
        acp = self.alphas_cumprod[use]
        prev = torch.cat([torch.ones(1, dtype=torch.float64), acp[:-1]])
        return GaussianDiffusion(1 - acp / prev, self.timestep_map[use], schedule=self.schedule)

    @staticmethod
    def _at(arr: Tensor, t: Tensor, like: Tensor) -> Tensor:
        out = arr.to(t.device)[t].to(like.dtype)
        return out.view(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps."""
        return (
            self._at(self.sqrt_alphas_cumprod, t, x0) * x0 + self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def q_posterior(self, x0: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log variance of q(x_{t-1} | x_t, x_0)."""
        mean = self._at(self.posterior_mean_coef1, t, xt) * x0 + self._at(self.posterior_mean_coef2, t, xt) * xt
        return mean, self._at(self.posterior_log_variance_clipped, t, xt)

    def predict_x0(self, xt: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return (
            self._at(self.sqrt_recip_alphas_cumprod, t, xt) * xt
            - self._at(self.sqrt_recipm1_alphas_cumprod, t, xt) * eps
        )

    def predict_eps(self, xt: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        return (self._at(self.sqrt_recip_alphas_cumprod, t, xt) * xt - x0) / self._at(
            self.sqrt_recipm1_alphas_cumprod, t, xt
        )

    def p_mean_variance(self, model_output: Tensor, xt: Tensor, t: Tensor, clip: bool = True) -> PosteriorPrediction:
        """p(x_{t-1} | x_t) from the model output [eps, v]; v in [-1, 1] interpolates the log variance
        between the posterior variance and beta_t (improved DDPM Eq. 15). Without v: the posterior variance."""
        c = xt.shape[1]
        eps = model_output[:, :c]
        if model_output.shape[1] == 2 * c:
            frac = (model_output[:, c:] + 1) / 2
            min_log = self._at(self.posterior_log_variance_clipped, t, xt)
            max_log = self._at(self.log_betas, t, xt)
            log_var = frac * max_log + (1 - frac) * min_log
        else:
            log_var = self._at(self.posterior_log_variance_clipped, t, xt).expand_as(xt)
        pred_x0 = self.predict_x0(xt, t, eps)
        if clip:
            pred_x0 = pred_x0.clamp(-1, 1)
        mean, _ = self.q_posterior(pred_x0, xt, t)
        return PosteriorPrediction(mean, log_var, pred_x0, eps)

    def vb_terms_bpd(self, model_output: Tensor, x0: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        """L_vb per sample in bits/dim: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)), or -log p(x_0|x_1) at t = 0."""
        true_mean, true_log_var = self.q_posterior(x0, xt, t)
        pred = self.p_mean_variance(model_output, xt, t, clip=False)
        kl = mean_flat(normal_kl(true_mean, true_log_var, pred.mean, pred.log_variance)) / math.log(2.0)
        nll = -mean_flat(discretized_gaussian_log_likelihood(x0, pred.mean, 0.5 * pred.log_variance)) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(
        self, model_output: Tensor, x0: Tensor, xt: Tensor, t: Tensor, noise: Tensor
    ) -> dict[str, Tensor]:
        """Per-sample hybrid loss: eps-MSE + L_vb, with L_vb training only the variance (improved DDPM Sec. 3.1)."""
        c = x0.shape[1]
        mse = mean_flat((noise - model_output[:, :c]) ** 2)
        if model_output.shape[1] != 2 * c:
            return {"loss": mse, "mse": mse}
        frozen = torch.cat([model_output[:, :c].detach(), model_output[:, c:]], dim=1)
        vb = self.vb_terms_bpd(frozen, x0, xt, t)
        return {"loss": mse + vb, "mse": mse, "vb": vb}
