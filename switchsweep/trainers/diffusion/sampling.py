"""Samplers: respaced ancestral DDPM, DDIM, and classifier-free guidance in one batched forward."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from switchsweep.trainers.diffusion.gaussian import GaussianDiffusion

ModelFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def _shared_t(diffusion: GaussianDiffusion, i: int, x: Tensor) -> Tensor:
    """Step i's timestep for the whole batch as a broadcast view (stride 0): models can see, without a
    host sync, that every sample shares it (Switch-DiT then folds its experts into one GEMM)."""
    return diffusion.timestep_map.to(x.device)[i].expand(x.shape[0])


def guided(model: nn.Module, cfg_scale: float, null_class: int) -> ModelFn:
    """Classifier-free guidance: eps = eps_u + s (eps_c - eps_u), conditional and null labels in one
    forward of 2B; the variance channels are the conditional ones. Scale 1 is the plain model."""
    if cfg_scale == 1.0:
        return model

    def fn(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        tt = t[:1].expand(2 * len(t)) if t.stride(0) == 0 else torch.cat([t, t])  # keep a shared t shared
        out = model(torch.cat([x, x]), tt, torch.cat([y, torch.full_like(y, null_class)]))
        cond, uncond = out.chunk(2)
        c = x.shape[1]
        eps = uncond[:, :c] + cfg_scale * (cond[:, :c] - uncond[:, :c])
        return torch.cat([eps, cond[:, c:]], dim=1)

    return fn


@torch.no_grad()
def ddpm_sample(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    noise: Tensor,
    y: Tensor,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """Ancestral sampling x_T -> x_0 through p(x_{t-1} | x_t) of `diffusion` (respace it for 250 steps)."""
    x = noise
    for i in tqdm(range(diffusion.num_timesteps - 1, -1, -1), desc="ddpm", disable=not progress, leave=False):
        idx = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        out = model_fn(x, _shared_t(diffusion, i, x), y)
        pred = diffusion.p_mean_variance(out, x, idx)
        if i > 0:
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = pred.mean + torch.exp(0.5 * pred.log_variance) * z
        else:
            x = pred.mean
    return x


@torch.no_grad()
def ddim_sample(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    noise: Tensor,
    y: Tensor,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """DDIM (Song et al., Eq. 12) over the steps of `diffusion`; eta = 0 is deterministic given x_T."""
    x = noise
    acp, acp_prev = diffusion.alphas_cumprod, diffusion.alphas_cumprod_prev
    for i in tqdm(range(diffusion.num_timesteps - 1, -1, -1), desc="ddim", disable=not progress, leave=False):
        idx = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        out = model_fn(x, _shared_t(diffusion, i, x), y)
        pred = diffusion.p_mean_variance(out, x, idx)
        eps = diffusion.predict_eps(x, idx, pred.pred_x0)
        a, a_prev = float(acp[i]), float(acp_prev[i])
        sigma = eta * ((1 - a_prev) / (1 - a)) ** 0.5 * (1 - a / a_prev) ** 0.5
        x = pred.pred_x0 * a_prev**0.5 + (1 - a_prev - sigma**2) ** 0.5 * eps
        if i > 0 and sigma > 0:
            x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x


def sample_images(
    model: nn.Module,
    diffusion: GaussianDiffusion,
    labels: Tensor,
    *,
    sampler: str,
    steps: int,
    cfg_scale: float,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """Images in [-1, 1] for `labels`, sampled with the model's null class for guidance."""
    image = (model.channels, model.image_size, model.image_size)
    noise = torch.randn((len(labels), *image), generator=generator, device=labels.device)
    fn = guided(model, cfg_scale, model.null_class)
    spaced = diffusion.respaced(steps)
    if sampler == "ddim":
        out = ddim_sample(fn, spaced, noise, labels, eta=eta, generator=generator, progress=progress)
    elif sampler == "ddpm":
        out = ddpm_sample(fn, spaced, noise, labels, generator=generator, progress=progress)
    else:
        raise ValueError(f"unknown sampler {sampler!r}: use ddpm or ddim")
    return out.clamp(-1, 1)
