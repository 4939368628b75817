"""Every model setting reaches its module through the config path trials take (Config -> build_model):
a non-default value changes the masks, the losses or the output, checked against the public maths."""

import pytest
import torch

from switchsweep.config.schema import MODEL_SIZES, Config
from switchsweep.models import build_model
from switchsweep.models.routing import dtr_mask, prior_mask
from switchsweep.sweeps.space import apply_params, config_from_dict, training_dict

T = 1000


def _build(**model):
    cfg = Config()
    for key, value in model.items():
        setattr(cfg.model, key, value)
    cfg = config_from_dict(apply_params(training_dict(cfg), {}))  # the trial's way from a plain dict
    return build_model(cfg.model, cfg.data, T, seed=0), cfg


def _inputs():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(4, 1, 8, 8, generator=gen), torch.tensor([3, 250, 600, 990]), torch.tensor([0, 1, 2, 3])


@pytest.mark.parametrize("alpha", [1.0, 8.0])
def test_prior_alpha_reaches_the_prior(alpha):
    model, cfg = _build(name="switch_dit", prior_alpha=alpha)
    depth = MODEL_SIZES[cfg.model.size][0]
    assert torch.equal(model.w_prior, prior_mask(depth, 3, 2, alpha=alpha, num_timesteps=T))
    assert not torch.equal(model.w_prior, prior_mask(depth, 3, 2, alpha=4.0, num_timesteps=T))


@pytest.mark.parametrize("alpha, beta", [(1.0, 0.8), (4.0, 0.5)])
def test_dtr_alpha_and_beta_reach_the_channel_masks(alpha, beta):
    model, cfg = _build(name="dtr", dtr_alpha=alpha, dtr_beta=beta)
    hidden = MODEL_SIZES[cfg.model.size][1]
    want = dtr_mask(hidden, beta=beta, alpha=alpha, num_timesteps=T)
    assert torch.equal(model.channel_masks, want)
    assert not torch.equal(want, dtr_mask(hidden, beta=0.8, alpha=4.0, num_timesteps=T))


@pytest.mark.parametrize("m, k", [(4, 1), (6, 3)])
def test_num_experts_and_top_k_reach_every_block_and_the_prior(m, k):
    model, cfg = _build(name="switch_dit", num_experts=m, top_k=k)
    for block in model.blocks:
        assert block.expert_weight.shape[0] == m and block.top_k == k
    depth = MODEL_SIZES[cfg.model.size][0]
    assert model.w_prior.shape == (T, depth * m) and (model.w_prior.sum(1) == depth * k).all()
    assert (model.routing_matrices()["w_gate"].sum(1) == depth * k).all()


def test_noisy_gating_adds_noise_in_training_only():
    x, t, y = _inputs()
    plain, _ = _build(name="switch_dit")
    noisy, _ = _build(name="switch_dit", gating="noisy")
    assert all(b.noise is None for b in plain.blocks) and all(b.noise is not None for b in noisy.blocks)
    e_t = noisy.t_embedder(t)
    torch.manual_seed(1)
    a = noisy.block_gate_probs(e_t, noisy=True)
    torch.manual_seed(2)
    b = noisy.block_gate_probs(e_t, noisy=True)
    assert not torch.allclose(a[:, 0], b[:, 0])  # trainable noise (softplus(0) scale at start) while training
    assert torch.equal(noisy.block_gate_probs(e_t), noisy.block_gate_probs(e_t))  # none at evaluation


def test_each_integration_changes_the_forward():
    x, t, y = _inputs()
    models = {name: _build(name="switch_dit", integration=name)[0].eval() for name in ("skip_onevec", "skip", "direct")}
    gen = torch.Generator().manual_seed(0)  # the same random weights for all three (adaLN-Zero would give all zeros)
    state = {
        k: torch.randn(v.shape, generator=gen) * 0.2 if torch.is_tensor(v) and v.is_floating_point() else v
        for k, v in models["skip"].state_dict().items()
    }
    outs = {}
    for name, model in models.items():
        model.load_state_dict(state)
        with torch.no_grad():
            outs[name] = model(x, t, y)
    assert not torch.allclose(outs["skip_onevec"], outs["skip"])
    assert not torch.allclose(outs["skip_onevec"], outs["direct"])
    assert not torch.allclose(outs["skip"], outs["direct"])


def test_loss_weights_reach_the_aux_losses():
    x, t, y = _inputs()
    model, _ = _build(name="switch_dit", lambda_dp=0.37, balance_loss=0.05)
    _, aux = model.train()(x, t, y, return_aux=True)
    losses = model.aux_losses(aux, t)
    assert losses["prior"][0] == 0.37 and losses["balance"][0] == 0.05
    off, _ = _build(name="switch_dit", lambda_dp=0.0)
    _, aux = off.train()(x, t, y, return_aux=True)
    assert "prior" not in off.aux_losses(aux, t)
    moe, _ = _build(name="dit_moe", expert_balance=0.02, num_experts=4, top_k=2, shared_experts=2)
    _, aux = moe.train()(x, t, y, return_aux=True)
    assert {name: w for name, (w, _) in moe.aux_losses(aux, t).items()} == {"balance": 0.02}
    assert all(b.mlp.shared is not None and b.mlp.router.out_features == 4 for b in moe.blocks)
    alone, _ = _build(name="dit_moe", shared_experts=0)
    assert all(b.mlp.shared is None for b in alone.blocks)


def test_num_intervals_reaches_the_multi_expert_model():
    model, _ = _build(name="multi_experts", num_intervals=3)
    assert len(model.experts) == 3
