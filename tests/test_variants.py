"""The ablation zoo: every design and loss weighting trains from the CLI, and each new piece matches
its definition (closed forms and plain-torch references)."""

import numpy as np
import pytest
import torch

from switchsweep.cli import main
from switchsweep.config.naming import variant_label
from switchsweep.config.schema import Config, TrainConfig
from switchsweep.models import build_model
from switchsweep.models.dit_moe import MoEMlp
from switchsweep.models.flops import forward_gflops, parameter_count
from switchsweep.models.routing import expert_balance_loss, importance_balance_loss
from switchsweep.platform.checkpoint import load_checkpoint
from switchsweep.trainers.diffusion.gaussian import GaussianDiffusion
from switchsweep.trainers.diffusion.sampling import sample_images
from switchsweep.trainers.diffusion.weighting import (
    LossWeighting,
    UncertaintyWeighting,
    min_snr_weight,
    p2_weight,
    stratified_timesteps,
    timestep_cluster,
)


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=dit_moe"],
        ["model=multi_experts"],
        ["model=time_moe"],
        ["model.gating=noisy"],
        ["model.balance_loss=0.01"],
        ["model.lambda_dp=0"],
        ["model.integration=direct"],
        ["model.integration=skip"],
        ["model.num_experts=3", "model.top_k=3"],
        ["model=dit", "train.loss_weighting=uw"],
        ["model=dit", "train.loss_weighting=min_snr"],
        ["model=dit", "train.loss_weighting=p2"],
    ],
)
def test_every_variant_trains_from_the_cli(overrides, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            *overrides,
            "train.steps=3",
            "train.log_every=3",
            "data.batch_size=16",
            "sample.per_class=0",
            "train.progress=false",
            "train.device=cpu",
            f"train.out_dir={out}",
        ]
    )
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "M parameters" in printed and "GFLOPs per image forward" in printed
    ckpt = load_checkpoint(out / "ckpt.pt")
    assert ckpt["step"] == 3
    if "train.loss_weighting=uw" in overrides:
        assert ckpt["weighting"]["uw.log_var"].shape == (8,) and ckpt["weighting"]["uw.log_var"].abs().sum() > 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.gating=gumbel"], "model.gating='gumbel'"),
        (["model.integration=add"], "model.integration='add'"),
        (["model=dit_moe", "model.top_k=9"], "model.top_k=9 must be <= model.num_experts=8"),
        (["model=multi_experts", "model.num_intervals=0"], "model.num_intervals=0"),
        (["train.loss_weighting=snr"], "train.loss_weighting='snr'"),
        (["train.loss_weighting=uw", "train.uw_clusters=0"], "train.uw_clusters=0"),
        (["model.balance_loss=-1"], "model.balance_loss=-1"),
    ],
)
def test_bad_variant_settings_are_one_line(overrides, message, capsys):
    assert main(["train", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def _model(**model):
    cfg = Config()
    for k, v in model.items():
        setattr(cfg.model, k, v)
    return build_model(cfg.model, cfg.data, cfg.diffusion.num_timesteps), cfg


def test_noisy_gating_is_random_in_training_and_deterministic_in_eval():
    model, _ = _model(gating="noisy")
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([1, 300, 600, 999]), torch.tensor([0, 1, 2, 3])
    e_t = model.t_embedder(t)
    torch.manual_seed(0)
    assert not torch.equal(model.block_gate_probs(e_t, noisy=True), model.block_gate_probs(e_t, noisy=True))
    assert torch.equal(model.block_gate_probs(e_t, noisy=False), model.block_gate_probs(e_t, noisy=False))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x, t, y), model(x, t, y))


def test_load_balancing_loss_is_zero_exactly_for_uniform_importance():
    uniform = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5]])  # every expert totals 1.0
    assert importance_balance_loss(uniform).item() == pytest.approx(0.0, abs=1e-12)
    skewed = torch.tensor([[0.6, 0.4, 0.0], [0.6, 0.4, 0.0], [0.6, 0.0, 0.4]])
    imp = skewed.sum(0)
    want = imp.var(unbiased=False) / imp.mean() ** 2
    assert importance_balance_loss(skewed).item() == pytest.approx(want.item()) and want > 0
    torch.manual_seed(0)
    g = torch.rand(16, 6, 4)  # [batch, blocks, experts]: CV^2 per block, averaged over blocks
    imp = g.sum(0).double().numpy()
    want = np.mean(imp.var(-1) / imp.mean(-1) ** 2)
    assert importance_balance_loss(g).item() == pytest.approx(want, rel=1e-5)


def test_switch_dit_balance_loss_enters_the_aux_losses():
    model, _ = _model(balance_loss=0.01, lambda_dp=0.0)
    out, aux = model(
        torch.randn(4, 1, 8, 8), torch.tensor([1, 300, 600, 999]), torch.tensor([0, 1, 2, 3]), return_aux=True
    )
    losses = model.aux_losses(aux, torch.tensor([1, 300, 600, 999]))
    assert set(losses) == {"balance"} and losses["balance"][0] == 0.01
    # Reference: top-k of every block's softmax (0 elsewhere), importance per block, CV^2, mean over blocks.
    probs = aux["gate_probs"].detach().double().numpy()  # [B, N, M]
    kept = np.where(probs >= np.sort(probs, -1)[..., -2:-1], probs, 0.0)  # k = 2 largest
    imp = kept.sum(0)
    assert losses["balance"][1].item() == pytest.approx(np.mean(imp.var(-1) / imp.mean(-1) ** 2), rel=1e-5)


def test_expert_balance_loss_equals_its_weight_for_uniform_token_routing():
    t, m = 64, 8
    probs = torch.full((t, m), 1.0 / m)
    idx = torch.arange(t * 2).view(t, 2) % m  # every expert chosen equally often
    assert expert_balance_loss(probs, idx).item() == pytest.approx(1.0)
    model, _ = _model(name="dit_moe", num_experts=8, top_k=2)
    for block in model.blocks:
        torch.nn.init.zeros_(block.mlp.router.weight)  # uniform router probabilities
    _, aux = model(torch.randn(2, 1, 8, 8), torch.tensor([3, 700]), torch.tensor([1, 2]), return_aux=True)
    weight, value = model.aux_losses(aux, torch.tensor([3, 700]))["balance"]
    assert weight * value.item() == pytest.approx(0.01)
    collapsed = torch.zeros(t, m)
    collapsed[:, 0] = 1.0
    assert expert_balance_loss(collapsed, torch.zeros(t, 1, dtype=torch.long)).item() == pytest.approx(m)


def test_dit_moe_mlp_matches_a_per_token_reference():
    torch.manual_seed(0)
    mlp = MoEMlp(dim=16, hidden=24, num_experts=4, top_k=2, shared=1)
    x = torch.randn(2, 5, 16)
    out, probs, idx = mlp(x)
    tokens = x.reshape(10, 16)
    want = []
    for i, tok in enumerate(tokens):
        y = mlp.shared(tok)
        for j in range(2):
            e = idx[i, j]
            a, b = (tok @ mlp.w13[e]).chunk(2)
            y = y + probs[i, e] * (torch.nn.functional.silu(a) * b) @ mlp.w2[e]
        want.append(y)
    torch.testing.assert_close(out.reshape(10, 16), torch.stack(want), rtol=1e-5, atol=1e-5)


def test_uncertainty_weighting_matches_the_official_form():
    # Official Switch-DiT: 0.5 * (exp(-s_i) L_i / n + s_i), summed over the n clusters; optimum s_i = log(L_i / n).
    uw = UncertaintyWeighting(num_clusters=4, num_timesteps=1000)
    t = torch.tensor([10, 100, 300, 400, 600, 700, 900, 999])
    losses = torch.tensor([0.5, 1.5, 2.0, 2.0, 0.1, 0.3, 4.0, 2.0])
    means, present = uw.cluster_means(losses, t)
    torch.testing.assert_close(means, torch.tensor([1.0, 2.0, 0.2, 3.0]))
    with torch.no_grad():
        uw.log_var.copy_(torch.log(means / 4))
    objective = uw(losses, t)
    objective.backward()
    torch.testing.assert_close(uw.log_var.grad, torch.zeros(4), atol=1e-6, rtol=0)
    assert objective.item() == pytest.approx(float((0.5 * (1 + torch.log(means / 4))).sum()))
    with torch.no_grad():
        uw.log_var.zero_()
    uw.log_var.grad = None
    uw(losses, t).backward()
    torch.testing.assert_close(uw.log_var.grad, 0.5 * (1 - means / 4))  # d/ds of 0.5 (e^-s L / n + s) at s = 0


def test_stratified_timesteps_fill_every_cluster_equally():
    gen = torch.Generator().manual_seed(0)
    t = stratified_timesteps(64, 8, 1000, gen, torch.device("cpu"))
    clusters = timestep_cluster(t, 8, 1000)
    assert torch.bincount(clusters, minlength=8).tolist() == [8] * 8
    assert t.min() >= 0 and t.max() <= 999
    odd = stratified_timesteps(10, 3, 10, gen, torch.device("cpu"))  # clusters [0,4), [4,7), [7,10)
    assert timestep_cluster(odd, 3, 10).tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]


def test_min_snr_and_p2_weights_are_per_sample_formulas():
    d = GaussianDiffusion.from_config("linear", 1000)
    t = torch.tensor([0, 10, 250, 500, 999])
    acp = d.alphas_cumprod.float()[t]
    snr_t = acp / (1 - acp)
    torch.testing.assert_close(min_snr_weight(snr_t, 5.0), torch.minimum(snr_t, torch.tensor(5.0)) / snr_t)
    torch.testing.assert_close(p2_weight(snr_t, 1.0, 1.0), 1.0 / (1.0 + snr_t))
    mse, vb = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
    terms = {"mse": mse, "vb": vb, "loss": mse + vb}
    for kind, w in (("min_snr", min_snr_weight(snr_t, 5.0)), ("p2", p2_weight(snr_t, 1.0, 1.0))):
        weighting = LossWeighting(TrainConfig(loss_weighting=kind), d.alphas_cumprod, 1000)
        assert weighting(terms, t).item() == pytest.approx(float((w * mse + vb).mean()), rel=1e-6)
    # Per sample: each sample's weight depends on its own t (a broadcast would give one weight).
    assert len(set(p2_weight(snr_t, 1.0, 1.0).tolist())) == 5


def test_multi_experts_route_each_timestep_to_exactly_one_model():
    model, _ = _model(name="multi_experts", num_intervals=4)
    seen = {i: [] for i in range(4)}
    for i, expert in enumerate(model.experts):
        expert.register_forward_hook(lambda mod, args, out, i=i: seen[i].extend(args[1].tolist()))
    t = torch.tensor([0, 249, 250, 499, 500, 749, 750, 999, 3, 998])
    x, y = torch.randn(10, 1, 8, 8), torch.arange(10) % 10
    with torch.no_grad():
        for expert in model.experts:  # distinct models, so a wrong owner would show
            expert.final_layer.linear.weight.normal_()
        out = model(x, t, y)
    assert seen == {0: [0, 249, 3], 1: [250, 499], 2: [500, 749], 3: [750, 999, 998]}
    with torch.no_grad():
        for j, tj in enumerate(t.tolist()):  # each output row is its owner's own prediction
            own = model.experts[tj * 4 // 1000](x[j : j + 1], t[j : j + 1], y[j : j + 1])
            torch.testing.assert_close(out[j : j + 1], own)
    for i in range(4):
        seen[i].clear()
    diffusion = GaussianDiffusion.from_config("linear", 1000)
    images = sample_images(model.eval(), diffusion, torch.tensor([1, 7]), sampler="ddim", steps=4, cfg_scale=1.5)
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()
    # DDIM-4 visits t = 999, 666, 333, 0: each step goes to its interval's model alone, for the whole (2B) batch.
    assert {i: sorted(set(v)) for i, v in seen.items()} == {0: [0], 1: [333], 2: [666], 3: [999]}


def test_gflops_match_the_closed_form_difference_of_switch_dit_and_dit():
    dit, cfg = _model(name="dit")
    switch, _ = _model(name="switch_dit", num_experts=3, top_k=2)
    n, d, m, k = 6, 128, 3, 2
    tokens = (cfg.data.image_size // cfg.model.patch_size) ** 2
    # Per block: the folded expert GEMM (tokens x D x D), mixing k expert matrices and biases, and the gate.
    want = n * (2 * tokens * d * d + 2 * k * d * d + 2 * k * d + 2 * d * m) / 1e9
    got = forward_gflops(switch, 1, 8, 1000) - forward_gflops(dit, 1, 8, 1000)
    assert got == pytest.approx(want, rel=1e-9)
    assert parameter_count(switch) - parameter_count(dit) == n * (m * d * d + m * d + d * m + m)


def test_variant_labels_name_the_design():
    assert (
        variant_label(
            {
                "model.name": "switch_dit",
                "model.num_experts": "4",
                "model.top_k": "1",
                "model.gating": "noisy",
                "model.integration": "direct",
                "model.lambda_dp": "0.0",
            }
        )
        == "switch_dit(M=4,k=1,no-prior,noisy,direct)"
    )
    assert variant_label({"model.name": "dit", "train.loss_weighting": "p2"}) == "dit+p2"
