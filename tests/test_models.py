import numpy as np
import pytest
import torch

from switchsweep.config.schema import MODEL_SIZES, DataConfig, ModelConfig
from switchsweep.kernels import sample_routed_linear
from switchsweep.models import DTR, DiT, SwitchDiT, build_model

COMMON = dict(image_size=8, channels=1, num_classes=10, patch_size=2, hidden=64, depth=3, heads=4, num_timesteps=100)


def _randomise(model):
    """adaLN-Zero makes a fresh DiT output zeros; fill every weight so comparisons mean something."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def _inputs(b=4):
    return torch.randn(b, 1, 8, 8), torch.randint(0, 100, (b,)), torch.randint(0, 11, (b,))


def test_switch_dit_at_init_computes_exactly_what_dit_computes():
    dit = _randomise(DiT(**COMMON)).eval()
    switch = SwitchDiT(num_experts=3, top_k=2, **COMMON).eval()
    missing, unexpected = switch.load_state_dict(dit.state_dict(), strict=False)
    assert not unexpected and all(("gate" in k or "expert" in k or k == "_extra_state") for k in missing)
    x, t, y = _inputs()
    assert torch.equal(switch(x, t, y), dit(x, t, y))


def test_switch_dit_with_trained_experts_differs_from_dit():
    dit = _randomise(DiT(**COMMON)).eval()
    switch = SwitchDiT(num_experts=3, top_k=2, **COMMON).eval()
    switch.load_state_dict(dit.state_dict(), strict=False)
    with torch.no_grad():
        switch.blocks[1].expert_weight.normal_(0, 0.1)
    x, t, y = _inputs()
    assert not torch.allclose(switch(x, t, y), dit(x, t, y))


def test_switch_block_follows_the_formula():
    """x_out = x + branches(x*m), m = 1 + sum_{top-k} p_j (x W_j + b_j), computed by hand."""
    switch = _randomise(SwitchDiT(num_experts=4, top_k=2, **COMMON)).eval()
    block = switch.blocks[0]
    x, c, e = torch.randn(2, 16, 64), torch.randn(2, 64), torch.randn(2, 64)
    p = torch.softmax(block.gate(e), -1)
    m = torch.ones_like(x)
    for b in range(2):
        for j in p[b].topk(2).indices.tolist():
            m[b] += p[b, j] * (x[b] @ block.expert_weight[j] + block.expert_bias[j])
    ref = x + (super(type(block), block).forward(x * m, c) - x * m)
    assert torch.allclose(block(x, c, switch.block_gate_probs(e)[:, 0]), ref, rtol=1e-4, atol=1e-4)


def test_stacked_gate_heads_equal_each_blocks_own_gate():
    switch = _randomise(SwitchDiT(num_experts=4, top_k=2, **COMMON)).eval()
    e = torch.randn(5, 64)
    per_block = torch.stack([torch.softmax(b.gate(e), -1) for b in switch.blocks], dim=1)
    torch.testing.assert_close(switch.block_gate_probs(e), per_block)
    with torch.no_grad():  # the all-T pass reads the cached sinusoid table: the same as embedding every t
        every_t = switch.t_embedder(torch.arange(switch.num_timesteps))
        torch.testing.assert_close(switch.all_gate_probs(), switch.block_gate_probs(every_t))


def test_dtr_with_full_mask_is_dit():
    dit = _randomise(DiT(**COMMON)).eval()
    dtr = DTR(dtr_beta=1.0, **COMMON).eval()
    dtr.load_state_dict(dit.state_dict())
    x, t, y = _inputs()
    assert torch.allclose(dtr(x, t, y), dit(x, t, y), atol=1e-6)


def test_dtr_branches_never_see_masked_channels():
    """Branches run on x*m: masked-off input channels reach the output only through the x*(1-m) skip."""
    dtr = _randomise(DTR(dtr_beta=0.5, **COMMON)).eval()
    mask = dtr.channel_masks[torch.tensor([99])].unsqueeze(1)  # last half of the channels at t = T-1
    assert mask[0, 0, :32].sum() == 0 and mask[0, 0, 32:].sum() == 32
    x, c = torch.randn(1, 16, 64), torch.randn(1, 64)
    delta = torch.randn_like(x) * (1 - mask)
    block = dtr.blocks[0]
    assert torch.allclose(block(x + delta, c, mask) - block(x, c, mask), delta, atol=1e-5)
    on_delta = torch.randn_like(x) * mask
    assert not torch.allclose(block(x + on_delta, c, mask) - block(x, c, mask), on_delta, atol=1e-3)


@pytest.mark.parametrize("name", ["dit", "dtr", "switch_dit"])
@pytest.mark.parametrize("patch", [2, 4, 8])
def test_every_model_and_patch_size_maps_images_to_eps_and_variance(name, patch):
    model = build_model(ModelConfig(name=name, patch_size=patch), DataConfig(), num_timesteps=1000)
    out, aux = model(*_inputs(3), return_aux=True)
    assert out.shape == (3, 2, 8, 8)
    assert ("gate_probs" in aux) == (name == "switch_dit")


def test_sizes_follow_the_dit_table():
    assert MODEL_SIZES["S"] == (12, 384, 6) and MODEL_SIZES["B"] == (12, 768, 12)
    assert MODEL_SIZES["L"] == (24, 1024, 16) and MODEL_SIZES["XL"] == (28, 1152, 16)
    s = build_model(ModelConfig(name="dit", size="S"), DataConfig(), num_timesteps=1000)
    assert len(s.blocks) == 12 and s.hidden == 384 and s.blocks[0].attn.heads == 6


def test_sample_routed_linear_matches_per_expert_loop():
    B, L, D, M, k = 3, 5, 8, 4, 2
    z, w, b = torch.randn(B, L, D), torch.randn(M, D, D), torch.randn(M, D)
    idx = torch.tensor([[0, 3], [2, 1], [3, 0]])
    g = torch.rand(B, k)
    ref = torch.empty_like(z)
    for i in range(B):
        m = torch.ones(L, D)
        for j in range(k):
            m += g[i, j] * (z[i] @ w[idx[i, j]] + b[idx[i, j]])
        ref[i] = z[i] * m
    assert torch.allclose(sample_routed_linear(z, w, b, idx, g), ref, atol=1e-5)


def test_sample_routed_linear_gradients_match_per_expert_loop():
    B, L, D, M, k = 2, 3, 4, 3, 2
    args = [torch.randn(B, L, D), torch.randn(M, D, D), torch.randn(M, D)]
    idx, g = torch.tensor([[2, 0], [1, 2]]), torch.rand(B, k)
    leaves = [a.clone().requires_grad_() for a in (*args, g)]
    sample_routed_linear(leaves[0], leaves[1], leaves[2], idx, leaves[3]).square().sum().backward()
    loop = [a.clone().requires_grad_() for a in (*args, g)]
    z, w, b, gg = loop
    outs = []
    for i in range(B):
        m = 1 + sum(gg[i, j] * (z[i] @ w[idx[i, j]] + b[idx[i, j]]) for j in range(k))
        outs.append(z[i] * m)
    torch.stack(outs).square().sum().backward()
    for a, r in zip(leaves, loop):
        assert torch.allclose(a.grad, r.grad, atol=1e-4)


def test_position_embedding_has_dit_s_layout():
    from switchsweep.models.layers import sincos_pos_embed_2d

    dim, grid = 16, 4

    def one_axis(d, pos):  # MAE/DiT: [sin | cos] of pos * 1 / 10000^(i / (d/2))
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    w, h = np.meshgrid(
        np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64)
    )  # "xy": w varies along a row
    ref = np.concatenate([one_axis(dim // 2, w), one_axis(dim // 2, h)], axis=1)
    got = sincos_pos_embed_2d(dim, grid).numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    # Token 1 is (row 0, column 1): the first half encodes the column.
    assert got[1, 0] == pytest.approx(np.sin(1.0)) and got[1, dim // 2] == pytest.approx(0.0)
