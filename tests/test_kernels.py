"""The Triton MoE kernels (timestep-routed experts, token-routed grouped GEMM) against the pure-torch
reference in Triton's interpreter on CPU (the same tests run compiled on a GPU), their ahead-of-time
compilation for an H100, and the ops' dispatch."""

import pytest
import torch

from switchsweep.kernels import routing_is_shared, sample_routed_linear
from switchsweep.kernels.ops import (
    moe_grouped_linear_backward_triton,
    moe_grouped_linear_triton,
    precision,
    sample_routed_linear_backward_triton,
    sample_routed_linear_triton,
)
from switchsweep.kernels.reference import (
    moe_grouped_linear_reference,
    sample_routed_linear_reference,
    shared_routing_linear,
    token_routed_linear_reference,
)
from switchsweep.kernels.stacked_experts import stacked_experts_linear
from switchsweep.kernels.token_routed import route

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(b, l, d, m, k, dtype, seed=0, idx=None):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, l, d, generator=g)
    w = torch.randn(m, d, d, generator=g) / d**0.5
    bias = torch.randn(m, d, generator=g) * 0.1
    if idx is None:
        idx = torch.stack([torch.randperm(m, generator=g)[:k] for _ in range(b)])
    gates = torch.softmax(torch.randn(b, m, generator=g), -1).gather(1, idx)
    return [t.to(DEVICE) for t in (z.to(dtype), w.to(dtype), bias.to(dtype), idx, gates.to(dtype))]


def _check(b, l, d, m, k, dtype, rtol, atol, idx=None, param_dtype=None):
    z, w, bias, idx, gates = _inputs(b, l, d, m, k, dtype, idx=idx)
    if param_dtype is not None:  # activations in `dtype`, experts and gates kept in `param_dtype`
        w, bias, gates = (t.to(param_dtype) for t in (w, bias, gates))
    ref_in = [t.detach().double().requires_grad_(t.is_floating_point()) for t in (z, w, bias, idx, gates)]
    ref_in[3] = idx
    ref = sample_routed_linear_reference(*ref_in)
    dy = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(DEVICE)
    ref.backward(dy)
    tri_in = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in (z, w, bias, idx, gates)]
    out, _ = sample_routed_linear_triton(*tri_in, True)
    out.backward(dy.to(dtype))
    torch.testing.assert_close(out.double(), ref.detach(), rtol=rtol, atol=atol)
    for name, a, r in zip(("z", "weight", "bias", None, "gates"), tri_in, ref_in):
        if name:
            torch.testing.assert_close(
                a.grad.double(),
                r.grad,
                rtol=rtol,
                atol=atol * max(1.0, r.grad.abs().max().item()),
                msg=lambda s, n=name: f"grad {n}: {s}",
            )


@pytest.mark.parametrize(
    "b, l, d, m, k",
    [
        (2, 5, 16, 3, 2),  # L not a multiple of the block
        (3, 16, 32, 4, 1),  # k = 1
        (2, 7, 16, 3, 3),  # k = M
        (2, 3, 24, 8, 2),  # M = 8, D not a power of two
    ],
)
def test_triton_forward_and_gradients_match_reference_fp32(b, l, d, m, k):
    _check(b, l, d, m, k, torch.float32, rtol=1e-5, atol=1e-5)


def test_triton_matches_reference_fp16():
    _check(2, 5, 16, 3, 2, torch.float16, rtol=2e-2, atol=2e-2)


def test_triton_matches_reference_over_several_tiles_of_every_kind():
    # L=140 and D=144 exceed the 128-wide tiles and are not multiples of them: 2 row and 2 column
    # tiles, K steps of 32 with a ragged last one; dW has 3x2 output tiles and several L steps.
    _check(2, 140, 144, 3, 2, torch.float32, rtol=1e-5, atol=1e-5)


def test_dw_reduction_split_into_sample_ranges_matches_reference(monkeypatch):
    import switchsweep.kernels.ops as ops

    monkeypatch.setattr(ops, "sample_splits", lambda b, tiles: 2)  # 5 samples: ranges of 3 and 2
    _check(5, 6, 16, 3, 2, torch.float32, rtol=1e-5, atol=1e-5)


def test_fp16_activations_with_fp32_experts_and_gates_match_reference():
    _check(2, 5, 16, 3, 2, torch.float16, rtol=2e-2, atol=2e-2, param_dtype=torch.float32)


def test_non_contiguous_inputs_give_the_contiguous_result():
    z, w, bias, idx, gates = _inputs(3, 6, 16, 3, 2, torch.float32)
    z_t = z.transpose(0, 1).contiguous().transpose(0, 1)  # same values, batch stride 16, not L*D
    w_t = w.transpose(1, 2).contiguous().transpose(1, 2)
    assert not z_t.is_contiguous() and not w_t.is_contiguous()
    torch.testing.assert_close(
        sample_routed_linear_triton(z_t, w_t, bias, idx, gates, False)[0],
        sample_routed_linear_triton(z, w, bias, idx, gates, False)[0],
        rtol=0,
        atol=0,
    )
    x, w2, idx2, g2 = _token_inputs(9, 16, 24, 4, 2, torch.float32, False)
    x_t = x.t().contiguous().t()
    assert not x_t.is_contiguous()
    torch.testing.assert_close(
        moe_grouped_linear_triton(x_t, w2, idx2, g2, False)[0],
        moe_grouped_linear_triton(x, w2, idx2, g2, False)[0],
        rtol=0,
        atol=0,
    )


def test_backward_is_bitwise_deterministic():
    # Sample ranges and tiles are summed in a fixed order on the host: no atomics in dW, dbias or dgates.
    z, w, bias, idx, gates = _inputs(4, 9, 32, 3, 2, torch.float32)
    dy = torch.randn(z.shape, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    h = sample_routed_linear_triton(z, w, bias, idx, gates, True)[1]
    first, second = (sample_routed_linear_backward_triton(dy, z, h, w, bias, idx, gates) for _ in range(2))
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    x, w2, idx2, g2 = _token_inputs(150, 80, 144, 3, 2, torch.float32, False)
    tables = moe_grouped_linear_triton(x, w2, idx2, g2, False)[1:]
    dy2 = torch.randn(300, 144, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    first, second = (moe_grouped_linear_backward_triton(dy2, x, w2, idx2, g2, False, list(tables)) for _ in range(2))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("setting, want", [("highest", "ieee"), ("high", "tf32"), ("medium", "tf32")])
def test_fp32_operands_follow_torchs_matmul_precision(setting, want):
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(setting)
    try:
        assert precision(torch.ones(1)) == want and precision(torch.ones(1, dtype=torch.bfloat16)) == "native"
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_ops_never_synchronise_with_the_host_gpu():
    z, w, bias, idx, gates = _inputs(4, 77, 128, 3, 2, torch.float32)
    w.requires_grad_(True)
    x, w2, idx2, g2 = _token_inputs(50, 64, 64, 4, 2, torch.float32, False)
    w2.requires_grad_(True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sample_routed_linear_triton(z, w, bias, idx, gates, True)[0].sum().backward()
        moe_grouped_linear_triton(x, w2, idx2, g2, False)[0].sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_ops_run_in_bf16_under_autocast_gpu():
    z, w, bias, idx, gates = _inputs(4, 77, 128, 3, 2, torch.float32)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = sample_routed_linear_triton(z, w, bias, idx, gates, False)[0]
    assert out.dtype == torch.bfloat16
    ref = sample_routed_linear_reference(z.double(), w.double(), bias.double(), idx, gates.double())
    torch.testing.assert_close(out.double(), ref, rtol=5e-2, atol=5e-2)


def test_an_expert_no_sample_routes_to_gets_zero_gradient():
    idx = torch.tensor([[0, 2], [2, 0], [0, 2]])  # expert 1 unused
    _check(3, 4, 16, 3, 2, torch.float32, rtol=1e-5, atol=1e-5, idx=idx)
    z, w, bias, idx, gates = _inputs(3, 4, 16, 3, 2, torch.float32, idx=idx)
    w.requires_grad_(True)
    bias.requires_grad_(True)
    out, _ = sample_routed_linear_triton(z, w, bias, idx.to(DEVICE), gates, True)
    out.sum().backward()
    assert torch.count_nonzero(w.grad[1]) == 0 and torch.count_nonzero(bias.grad[1]) == 0
    assert torch.count_nonzero(w.grad[0]) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 tl.dot needs a GPU")
def test_triton_matches_reference_bf16_gpu():
    _check(4, 77, 128, 3, 2, torch.bfloat16, rtol=5e-2, atol=5e-2)


def test_shared_routing_folds_into_one_dense_gemm():
    z, w, bias, idx, gates = _inputs(4, 6, 16, 3, 2, torch.float64)
    shared_idx, shared_g = idx[:1].expand(4, -1), gates[:1].expand(4, -1)
    assert routing_is_shared(shared_idx, shared_g) and not routing_is_shared(idx, gates)
    ref = sample_routed_linear_reference(z, w, bias, shared_idx.contiguous(), shared_g.contiguous())
    torch.testing.assert_close(sample_routed_linear(z, w, bias, shared_idx, shared_g), ref)
    torch.testing.assert_close(shared_routing_linear(z, w, bias, idx[0], gates[0]), ref)


@pytest.mark.parametrize("l, m, k", [(4, 3, 2), (1, 6, 3), (16, 2, 2)])
def test_stacked_experts_match_the_reference_with_their_gradients(l, m, k):
    """Every expert on every token as one stacked GEMM, with its hand-written backward: the same values and
    gradients as mixing a weight per sample (float64), and what `sample_routed_linear` runs on a CPU for few
    tokens x experts."""
    z, w, bias, idx, gates = _inputs(5, l, 8, m, k, torch.float64, seed=3)
    ref_in = [t.clone().requires_grad_() for t in (z, w, bias, gates)]
    new_in = [t.clone().requires_grad_() for t in (z, w, bias, gates)]
    ref = sample_routed_linear_reference(*ref_in[:3], idx, ref_in[3])
    new = stacked_experts_linear(*new_in[:3], idx, new_in[3])
    torch.testing.assert_close(new, ref)
    dy = torch.randn(ref.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ref.backward(dy)
    new.backward(dy)
    for name, a, r in zip(("z", "weight", "bias", "gates"), new_in, ref_in):
        torch.testing.assert_close(a.grad, r.grad, msg=lambda s, n=name: f"grad {n}: {s}")
    if DEVICE == "cpu":
        torch.testing.assert_close(sample_routed_linear(z, w, bias, idx, gates), ref.detach())


def test_stacked_experts_under_bf16_autocast_give_grads_in_the_parameters_dtype():
    """train.precision=bf16 on a CPU runs the forward under autocast: the GEMM in bf16, the float32
    parameters' gradients still float32 and close to the float32 reference's."""
    z, w, bias, idx, gates = (t.cpu() for t in _inputs(4, 4, 16, 3, 2, torch.float32, seed=5))
    ref_in = [t.clone().requires_grad_() for t in (z, w, bias, gates)]
    new_in = [t.clone().requires_grad_() for t in (z, w, bias, gates)]
    ref = sample_routed_linear_reference(*ref_in[:3], idx, ref_in[3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        new = stacked_experts_linear(*new_in[:3], idx, new_in[3])
    torch.testing.assert_close(new.float(), ref, rtol=5e-2, atol=5e-2)
    ref.sum().backward()
    new.float().sum().backward()
    for a, r in zip(new_in, ref_in):
        assert a.grad.dtype == torch.float32
        torch.testing.assert_close(a.grad, r.grad, rtol=5e-2, atol=1e-1)


def test_reference_equals_the_per_expert_definition():
    z, w, bias, idx, gates = _inputs(3, 5, 8, 4, 2, torch.float64)
    want = torch.empty_like(z)
    for b in range(3):
        m = 1 + sum(gates[b, j] * (z[b] @ w[idx[b, j]] + bias[idx[b, j]]) for j in range(2))
        want[b] = z[b] * m
    torch.testing.assert_close(sample_routed_linear_reference(z, w, bias, idx, gates), want)


def test_switch_dit_with_a_broadcast_timestep_matches_per_sample_timesteps():
    from switchsweep.config.schema import Config
    from switchsweep.models import build_model

    cfg = Config()
    model = build_model(cfg.model, cfg.data, cfg.diffusion.num_timesteps).eval()
    with torch.no_grad():
        for block in model.blocks:  # experts start at zero; make them matter
            block.expert_weight.normal_(0, 0.05)
            block.expert_bias.normal_(0, 0.05)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 3, 5, 9])
    with torch.no_grad():
        per_sample = model(x, torch.full((4,), 417), y)
        shared = model(x, torch.tensor(417).expand(4), y)
    torch.testing.assert_close(shared, per_sample, rtol=1e-5, atol=1e-5)


# -- token-routed experts (DiT-MoE) --------------------------------------------------------------


def _token_inputs(t, din, dout, m, k, dtype, x_is_pairs, idx=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t * k if x_is_pairs else t, din, generator=g)
    w = torch.randn(m, din, dout, generator=g) / din**0.5
    if idx is None:
        idx = torch.stack([torch.randperm(m, generator=g)[:k] for _ in range(t)])
    gates = torch.softmax(torch.randn(t, m, generator=g), -1).gather(1, idx)
    return x.to(dtype).to(DEVICE), w.to(dtype).to(DEVICE), idx.to(DEVICE), gates.to(dtype).to(DEVICE)


@pytest.mark.parametrize(
    "t, din, dout, m, k, x_is_pairs, gated",
    [
        (37, 16, 24, 4, 2, False, True),  # T*k not a multiple of the block, Din != Dout
        (20, 32, 16, 8, 1, False, True),  # k = 1, M = 8
        (9, 16, 16, 3, 3, True, True),  # k = M, per-pair inputs (a SwiGLU expert's down projection)
        (15, 24, 40, 4, 2, False, False),  # no gates (the up projection)
        (150, 80, 144, 3, 2, False, True),  # several blocks per expert, column and K tiles (ragged), dg over 2 dx tiles
    ],
)
def test_grouped_triton_forward_and_gradients_match_reference_fp32(t, din, dout, m, k, x_is_pairs, gated):
    x, w, idx, gates = _token_inputs(t, din, dout, m, k, torch.float32, x_is_pairs)
    ref_in = [x.double().requires_grad_(), w.double().requires_grad_(), gates.double().requires_grad_()]
    tri_in = [x.clone().requires_grad_(), w.clone().requires_grad_(), gates.clone().requires_grad_()]
    ref = moe_grouped_linear_reference(ref_in[0], ref_in[1], idx, ref_in[2] if gated else None, x_is_pairs)
    out = moe_grouped_linear_triton(tri_in[0], tri_in[1], idx, tri_in[2] if gated else None, x_is_pairs)[0]
    dy = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(DEVICE)
    ref.backward(dy)
    out.backward(dy.float())
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    for name, a, r in zip(("x", "weight", "gates"), tri_in, ref_in):
        if name == "gates" and not gated:
            assert a.grad is None
            continue
        torch.testing.assert_close(
            a.grad.double(), r.grad, rtol=1e-5, atol=1e-5, msg=lambda s, n=name: f"grad {n}: {s}"
        )


def test_grouped_triton_fp16_and_an_expert_without_tokens():
    idx = torch.tensor([[0, 2], [2, 0], [3, 0], [0, 3]] * 5)  # expert 1 gets no token
    x, w, idx, gates = _token_inputs(20, 16, 16, 4, 2, torch.float16, False, idx=idx)
    w.requires_grad_(True)
    out = moe_grouped_linear_triton(x, w, idx, gates, False)[0]
    ref = moe_grouped_linear_reference(x.double(), w.detach().double(), idx, gates.double(), False)
    torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=2e-2)
    out.float().sum().backward()
    assert torch.count_nonzero(w.grad[1]) == 0 and torch.count_nonzero(w.grad[0]) > 0


def test_token_routed_linear_is_the_gate_weighted_sum_of_expert_outputs():
    x, w, idx, gates = _token_inputs(6, 8, 5, 4, 2, torch.float64, False)
    want = torch.stack([sum(gates[t, j] * x[t] @ w[idx[t, j]] for j in range(2)) for t in range(6)])
    torch.testing.assert_close(token_routed_linear_reference(x, w, idx, gates), want)


def test_routing_tables_cover_every_pair_once_in_expert_blocks():
    idx = torch.tensor([[1, 3], [3, 0], [1, 0], [3, 1], [3, 0]])
    pairs, start, end, block_expert, block_start = route(idx, num_experts=5, block_p=2)
    flat = idx.reshape(-1)
    assert sorted(pairs.tolist()) == list(range(10))
    for e in range(5):
        assert (flat[pairs[start[e] : end[e]].long()] == e).all() and end[e] - start[e] == (flat == e).sum()
    covered = []
    for b, e in enumerate(block_expert.tolist()):
        if e < 5:
            covered += list(range(block_start[b], min(block_start[b] + 2, end[e])))
    assert sorted(covered) == list(range(10))  # every sorted position in exactly one block
    assert len(block_expert) == 5 + 5  # the fixed upper bound cdiv(P, block) + M


def test_custom_ops_pass_torch_opcheck():
    # Schema, fake (meta) kernels for torch.compile, and the autograd registration.
    z, w, bias, idx, gates = _inputs(2, 5, 16, 3, 2, torch.float32)
    torch.library.opcheck(sample_routed_linear_triton, (z, w.requires_grad_(), bias, idx, gates, True))
    x, w2, idx2, g2 = _token_inputs(7, 16, 16, 4, 2, torch.float32, False)
    torch.library.opcheck(moe_grouped_linear_triton, (x, w2.requires_grad_(), idx2, g2, False))


def test_ops_trace_into_one_graph_without_breaks():
    z, w, bias, idx, gates = _inputs(2, 5, 16, 3, 2, torch.float32)
    w.requires_grad_(True)

    def layer(z, w, bias, idx, gates):
        return sample_routed_linear_triton(z, w, bias, idx, gates, True)[0].sum()

    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    loss = compiled(z, w, bias, idx, gates)
    loss.backward()
    torch.testing.assert_close(loss, layer(z, w, bias, idx, gates))
    assert w.grad is not None and torch.isfinite(w.grad).all()


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bf16", "tf32", "fp32"])
def test_every_kernel_compiles_for_an_h100(dtype):
    # Ahead-of-time compilation for sm_90a needs no GPU: it runs Triton's real compiler and ptxas on
    # every kernel and specialisation (the interpreter used by the other tests skips both).
    from tests.support.compile_report import compile_report

    rows = compile_report(dtype)
    assert len(rows) == 6 and all(r["regs"] > 0 for r in rows)
    assert all(r["shared_kb"] <= 227 for r in rows), rows  # an H100's shared memory per block
    if dtype != "fp32":  # Hopper tensor cores and no spills; exact fp32 (train.precision=fp32) takes FMA
        assert all(r["tensor_cores"] == "wgmma" and r["spill_stores"] == 0 for r in rows), rows


def test_a_sample_past_32_bit_offsets_is_refused_before_any_launch():
    # Meta tensors: the shapes are checked without allocating 8 GB (the op's fake kernel runs the same check).
    z = torch.empty(2, 2**21, 1024, device="meta")
    w, bias = torch.empty(3, 1024, 1024, device="meta"), torch.empty(3, 1024, device="meta")
    idx, gates = torch.zeros(2, 2, dtype=torch.long, device="meta"), torch.empty(2, 2, device="meta")
    with pytest.raises(ValueError, match=r"L\*D = 2097152 \* 1024 elements, past the kernels' 32-bit offsets"):
        sample_routed_linear_triton(z, w, bias, idx, gates, False)
    sample_routed_linear_triton(z[:, : 2**20], w, bias, idx, gates, False)  # 2**30 elements: fine


def test_the_forward_without_h_refuses_a_backward_in_one_line():
    z, w, bias, idx, gates = _inputs(2, 5, 16, 3, 2, torch.float32)
    out, h = sample_routed_linear_triton(z, w.requires_grad_(), bias, idx, gates, False)
    assert h.numel() == 0
    with pytest.raises(RuntimeError, match="store_h=False, so it cannot be differentiated"):
        out.sum().backward()


def test_routing_tables_match_a_count_of_each_expert_with_empty_experts():
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 6, (40, 2), generator=g) * (
        torch.arange(40)[:, None] % 3 > 0
    )  # 0 often; 1..5 rarely or never
    pairs, start, end, _, _ = route(idx, num_experts=9, block_p=4)  # experts 6..8: no pair
    counts = torch.bincount(idx.reshape(-1), minlength=9)
    assert torch.equal((end - start).long(), counts) and torch.equal(start.long(), torch.cumsum(counts, 0) - counts)
    assert torch.equal(idx.reshape(-1)[pairs.long()], torch.sort(idx.reshape(-1), stable=True).values)
