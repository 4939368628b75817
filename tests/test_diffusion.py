import math

import pytest
import torch

from switchsweep.trainers.diffusion.gaussian import (
    GaussianDiffusion,
    cosine_betas,
    linear_betas,
    normal_kl,
    spaced_timesteps,
)
from switchsweep.trainers.diffusion.sampling import ddim_sample, ddpm_sample, guided, sample_images


def test_linear_schedule_values():
    b = linear_betas(1000)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    d = GaussianDiffusion(b)
    ref = 1.0
    for beta in b[:500].tolist():
        ref *= 1 - beta
    assert d.alphas_cumprod[499].item() == pytest.approx(ref, rel=1e-12)


def test_cosine_schedule_matches_alpha_bar_formula():
    T, s = 1000, 0.008
    d = GaussianDiffusion(cosine_betas(T))
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 500, 900):
        assert d.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)


def test_q_sample_has_the_closed_form_moments():
    d = GaussianDiffusion.from_config("linear", 1000)
    x0 = torch.full((20000, 1, 1, 1), 0.7)
    t = torch.full((20000,), 300)
    xt = d.q_sample(x0, t, torch.randn_like(x0))
    a = d.alphas_cumprod[300].item()
    assert xt.mean().item() == pytest.approx(0.7 * math.sqrt(a), abs=0.02)
    assert xt.var().item() == pytest.approx(1 - a, rel=0.05)


def test_respacing_keeps_alpha_bar_at_the_kept_steps():
    d = GaussianDiffusion.from_config("cosine", 1000)
    r = d.respaced(250)
    assert r.num_timesteps == 250 and r.timestep_map[0] == 0 and r.timestep_map[-1] == 999
    assert torch.allclose(r.alphas_cumprod, d.alphas_cumprod[r.timestep_map], rtol=1e-10)
    full = d.respaced(1000)
    assert torch.allclose(full.betas, d.betas, rtol=1e-10)
    assert spaced_timesteps(1000, 1) == [999]


def _oracle(d: GaussianDiffusion, x0: torch.Tensor):
    """The exact eps for a point-mass data distribution at x0 (called with original timesteps, like a
    model), and the smallest variance (v = -1)."""

    def fn(x, t, y):
        a = d.alphas_cumprod.to(x.dtype)[t].view(-1, 1, 1, 1)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return torch.cat([eps, -torch.ones_like(eps)], 1)

    return fn


def test_vb_is_zero_for_the_true_posterior_and_matches_normal_kl():
    d = GaussianDiffusion.from_config("linear", 1000)
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    t = torch.tensor([5, 100, 500, 999])
    noise = torch.randn_like(x0)
    xt = d.q_sample(x0, t, noise)
    out = torch.cat([noise, -torch.ones_like(noise)], 1)  # true eps, posterior variance
    assert torch.allclose(d.vb_terms_bpd(out, x0, xt, t), torch.zeros(4), atol=1e-4)
    # a wrong variance (v = +1: beta_t) gives the closed-form Gaussian KL
    out_big = torch.cat([noise, torch.ones_like(noise)], 1)
    mean, logvar = d.q_posterior(x0, xt, t)
    ref = normal_kl(mean, logvar, mean, d._at(d.log_betas, t, x0)).mean((1, 2, 3)) / math.log(2)
    got = d.vb_terms_bpd(out_big, x0, xt, t)
    assert torch.allclose(got, ref, rtol=1e-3, atol=1e-6) and (got > 0).all()


def test_hybrid_loss_is_mse_plus_vb_and_vb_does_not_train_the_mean():
    d = GaussianDiffusion.from_config("linear", 100)
    x0, noise = torch.randn(3, 1, 4, 4).clamp(-1, 1), torch.randn(3, 1, 4, 4)
    t = torch.tensor([0, 40, 99])
    xt = d.q_sample(x0, t, noise)
    out = torch.randn(3, 2, 4, 4, requires_grad=True)
    terms = d.training_losses(out, x0, xt, t, noise)
    assert torch.allclose(terms["mse"], ((noise - out[:, :1]) ** 2).mean((1, 2, 3)))
    assert torch.allclose(terms["loss"], terms["mse"] + terms["vb"])
    terms["vb"].sum().backward()
    assert out.grad[:, :1].abs().sum() == 0 and out.grad[:, 1:].abs().sum() > 0


def test_ddim_eta0_is_deterministic_and_recovers_a_point_mass():
    base = GaussianDiffusion.from_config("linear", 1000)
    d = base.respaced(50)
    x0 = torch.rand(1, 1, 8, 8) * 2 - 1
    noise = torch.randn(2, 1, 8, 8)
    y = torch.zeros(2, dtype=torch.long)
    a = ddim_sample(_oracle(base, x0), d, noise, y, eta=0.0, generator=torch.Generator().manual_seed(1))
    b = ddim_sample(_oracle(base, x0), d, noise, y, eta=0.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert torch.allclose(a, x0.expand_as(a), atol=1e-4)


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_ddim_eta_adds_noise_of_the_closed_form_scale(eta):
    # A model that predicts eps = 0, two DDIM steps from x_T = 0: step t=999 -> t=0 is pred_x0 * sqrt(a_prev)
    # (= 0) plus sigma z, and the last step returns x / sqrt(alpha_bar at t=0). So the samples are
    # N(0, (sigma / sqrt(a0))^2) with sigma = eta sqrt((1 - a0) / (1 - a1)) sqrt(1 - a1 / a0) (DDIM Eq. 16).
    base = GaussianDiffusion.from_config("linear", 1000)
    d = base.respaced(2)
    assert d.timestep_map.tolist() == [0, 999]
    a0, a1 = float(base.alphas_cumprod[0]), float(base.alphas_cumprod[999])
    sigma = eta * math.sqrt((1 - a0) / (1 - a1)) * math.sqrt(1 - a1 / a0)
    zero_eps = lambda x, t, y: torch.zeros_like(x)  # noqa: E731
    n = 20000
    out = ddim_sample(
        zero_eps,
        d,
        torch.zeros(n, 1, 1, 1, dtype=torch.float64),
        torch.zeros(n, dtype=torch.long),
        eta=eta,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.mean().item() == pytest.approx(0.0, abs=4 * sigma / math.sqrt(a0) / math.sqrt(n))
    assert out.std().item() == pytest.approx(sigma / math.sqrt(a0), rel=0.03)
    quiet = ddim_sample(
        zero_eps, d, torch.zeros(4, 1, 1, 1, dtype=torch.float64), torch.zeros(4, dtype=torch.long), eta=0.0
    )
    assert (quiet == 0).all()


def test_respaced_ddpm_recovers_a_point_mass():
    base = GaussianDiffusion.from_config("cosine", 1000)
    d = base.respaced(250)
    x0 = torch.rand(1, 1, 4, 4) * 2 - 1
    out = ddpm_sample(
        _oracle(base, x0),
        d,
        torch.randn(3, 1, 4, 4),
        torch.zeros(3, dtype=torch.long),
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.allclose(out, x0.expand_as(out), atol=1e-4)


class _Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, y):
        self.calls.append(x.shape[0])
        eps = x * (y.float() + 1).view(-1, 1, 1, 1)
        return torch.cat([eps, torch.zeros_like(x) + y.float().view(-1, 1, 1, 1)], 1)


def test_guidance_is_one_batched_forward_with_the_null_class():
    m = _Recorder()
    x, t, y = torch.randn(3, 1, 4, 4), torch.zeros(3, dtype=torch.long), torch.tensor([0, 1, 2])
    out = guided(m, 1.5, null_class=10)(x, t, y)
    assert m.calls == [6]
    cond, uncond = m(x, t, y), m(x, t, torch.full_like(y, 10))
    assert torch.allclose(out[:, :1], uncond[:, :1] + 1.5 * (cond[:, :1] - uncond[:, :1]))
    assert torch.equal(out[:, 1:], cond[:, 1:])
    assert guided(m, 1.0, null_class=10) is m


def test_sample_images_shapes_and_range():
    from switchsweep.models import DiT

    model = DiT(
        image_size=8, channels=1, num_classes=10, patch_size=4, hidden=32, depth=1, heads=2, num_timesteps=100
    ).eval()
    d = GaussianDiffusion.from_config("linear", 100)
    for sampler in ("ddim", "ddpm"):

        def draw(seed, sampler=sampler):
            return sample_images(
                model,
                d,
                torch.arange(4),
                sampler=sampler,
                steps=5,
                cfg_scale=2.0,
                generator=torch.Generator().manual_seed(seed),
            )

        imgs = draw(0)
        assert imgs.shape == (4, 1, 8, 8)
        assert torch.equal(imgs, draw(0)) and not torch.allclose(imgs, draw(1))  # a function of the generator
