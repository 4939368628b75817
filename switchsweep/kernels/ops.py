"""The Triton MoE kernels as PyTorch custom ops (traceable by torch.compile, capturable by CUDA graphs:
shapes and launches depend only on tensor metadata, never on tensor values)."""

from __future__ import annotations

import torch
import triton
from torch import Tensor

from switchsweep.kernels.sample_routed import (
    block_sizes,
    grad_w_block_sizes,
    sample_splits,
    srl_forward_kernel,
    srl_grad_w_kernel,
    srl_grad_z_kernel,
)
from switchsweep.kernels.token_routed import grouped_grad_w_kernel as token_grad_w_kernel
from switchsweep.kernels.token_routed import grouped_kernel as token_grouped_kernel
from switchsweep.kernels.token_routed import route
from switchsweep.kernels.token_routed import tiles as token_tiles


def precision(t: Tensor) -> str:
    """How tl.dot treats the operands of `t`'s dtype: 16-bit ones as they are; fp32 ones follow torch's
    matmul setting, TF32 tensor cores when it allows them (train.precision=tf32 or bf16), else exact."""
    if t.dtype != torch.float32:
        return "native"
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def _check_offsets(z: Tensor) -> None:
    """Offsets inside one sample are 32-bit in the kernels (across samples they are 64-bit)."""
    if z.shape[1] * z.shape[2] >= 2**31:
        raise ValueError(
            f"sample_routed_linear: one sample holds L*D = {z.shape[1]} * {z.shape[2]} elements, past the "
            "kernels' 32-bit offsets within a sample (2**31): use fewer tokens per sample"
        )


@torch.library.custom_op("switchsweep::sample_routed_linear", mutates_args=())
def sample_routed_linear_triton(
    z: Tensor, weight: Tensor, bias: Tensor, expert_idx: Tensor, gates: Tensor, store_h: bool
) -> tuple[Tensor, Tensor]:
    """(z * m, h) with m = 1 + h; h is returned (else empty) only when the backward will need it."""
    _check_offsets(z)
    z, weight, bias, expert_idx, gates = (t.contiguous() for t in (z, weight, bias, expert_idx, gates))
    B, L, D = z.shape
    out = torch.empty_like(z)
    h = torch.empty_like(z) if store_h else z.new_empty(0)
    bl, bn, bk, warps, stages = block_sizes(L, D, z.element_size())
    grid = (triton.cdiv(D, bn), triton.cdiv(L, bl), B)
    srl_forward_kernel[grid](
        z,
        weight,
        bias,
        expert_idx,
        gates,
        out,
        h,
        L,
        D,
        K=expert_idx.shape[1],
        BLOCK_L=bl,
        BLOCK_N=bn,
        BLOCK_K=bk,
        PRECISION=precision(z),
        STORE_H=store_h,
        num_warps=warps,
        num_stages=stages,
    )
    return out, h


@sample_routed_linear_triton.register_fake
def _(z, weight, bias, expert_idx, gates, store_h):
    _check_offsets(z)
    return torch.empty_like(z), (torch.empty_like(z) if store_h else z.new_empty(0))


@torch.library.custom_op("switchsweep::sample_routed_linear_backward", mutates_args=())
def sample_routed_linear_backward_triton(
    dy: Tensor, z: Tensor, h: Tensor, weight: Tensor, bias: Tensor, expert_idx: Tensor, gates: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dz, dweight, dbias, dgates) of sample_routed_linear."""
    dy, z, h, weight, expert_idx, gates = (t.contiguous() for t in (dy, z, h, weight, expert_idx, gates))
    B, L, D = z.shape
    M, K = weight.shape[0], expert_idx.shape[1]
    bl, bn, bk, warps, stages = block_sizes(L, D, z.element_size())
    prec = precision(z)
    dz = torch.empty_like(z)
    r = torch.empty(B, triton.cdiv(L, bl), D, device=z.device, dtype=torch.float32)  # row-tile sums of dh
    srl_grad_z_kernel[(triton.cdiv(D, bn), triton.cdiv(L, bl), B)](
        dy,
        z,
        h,
        weight,
        expert_idx,
        gates,
        dz,
        r,
        L,
        D,
        K=K,
        BLOCK_L=bl,
        BLOCK_N=bn,
        BLOCK_K=bk,
        PRECISION=prec,
        num_warps=warps,
        num_stages=stages,
    )
    r = r.sum(1)  # sum_l dh[b], [B, D]
    # dW's reduction over samples in `splits` ranges, and the gate term per tile; both summed here in a fixed order.
    bd, bn, bl, warps, stages = grad_w_block_sizes(L, D, z.element_size())
    tiles = triton.cdiv(D, bd) * triton.cdiv(D, bn)
    splits = sample_splits(B, tiles)
    dw = torch.zeros(splits, M, D, D, device=z.device, dtype=torch.float32)
    dgw = torch.empty(tiles, B, K, device=z.device, dtype=torch.float32)
    srl_grad_w_kernel[(splits, triton.cdiv(D, bd), triton.cdiv(D, bn))](
        dy,
        z,
        weight,
        expert_idx,
        gates,
        dw,
        dgw,
        B,
        L,
        D,
        M,
        triton.cdiv(B, splits),
        K=K,
        BLOCK_D=bd,
        BLOCK_N=bn,
        BLOCK_L=bl,
        PRECISION=prec,
        num_warps=warps,
        num_stages=stages,
    )
    c = torch.zeros(B, M, device=z.device, dtype=torch.float32).scatter_add(1, expert_idx, gates.float())
    dbias = (c.T @ r).to(bias.dtype)
    dg = dgw.sum(0) + (r.unsqueeze(1) * bias.float()[expert_idx]).sum(-1)
    return dz, dw.sum(0).to(weight.dtype), dbias, dg.to(gates.dtype)


@sample_routed_linear_backward_triton.register_fake
def _(dy, z, h, weight, bias, expert_idx, gates):
    return torch.empty_like(z), torch.empty_like(weight), torch.empty_like(bias), torch.empty_like(gates)


def _setup(ctx, inputs, output) -> None:
    z, weight, bias, expert_idx, gates, _ = inputs
    ctx.save_for_backward(z, output[1], weight, bias, expert_idx, gates)


def _backward(ctx, grad_out: Tensor, _grad_h: Tensor):
    z, h, weight, bias, expert_idx, gates = ctx.saved_tensors
    if h.numel() != z.numel():
        raise RuntimeError(
            "sample_routed_linear_triton ran with store_h=False, so it cannot be differentiated: "
            "call it with store_h=True when a gradient is needed (sample_routed_linear does)"
        )
    dz, dw, db, dg = sample_routed_linear_backward_triton(grad_out, z, h, weight, bias, expert_idx, gates)
    return dz, dw, db, None, dg, None


torch.library.register_autograd("switchsweep::sample_routed_linear", _backward, setup_context=_setup)
# Under autocast (train.precision=bf16) the op runs on bf16 tensor cores like the matmuls around it.
torch.library.register_autocast("switchsweep::sample_routed_linear", "cuda", torch.bfloat16)


def _grouped(
    x: Tensor,
    weight: Tensor,
    w_strides: tuple[int, int, int],
    din: int,
    dout: int,
    tables,
    x_div: int,
    gates: Tensor | None,
    out: Tensor,
    dg: Tensor | None = None,
    x2: Tensor | None = None,
    x2_div: int = 1,
) -> Tensor:
    pairs, _, end, block_expert, block_start = tables
    bp, bn, bk = token_tiles(din, dout)
    grid = (triton.cdiv(dout, bn), block_expert.numel())
    token_grouped_kernel[grid](
        x,
        weight,
        out,
        x2 if x2 is not None else x,
        dg if dg is not None else out,
        gates if gates is not None else x,
        pairs,
        block_expert,
        block_start,
        end,
        din,
        dout,
        weight.shape[0],
        pairs.numel(),
        *w_strides,
        X_DIV=x_div,
        X2_DIV=x2_div,
        HAS_GATE=gates is not None,
        WITH_DG=dg is not None,
        BLOCK_P=bp,
        BLOCK_N=bn,
        BLOCK_K=bk,
        PRECISION=precision(x),
    )
    return out


@torch.library.custom_op("switchsweep::moe_grouped_linear", mutates_args=())
def moe_grouped_linear_triton(
    x: Tensor, weight: Tensor, expert_idx: Tensor, gates: Tensor | None, x_is_pairs: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-pair outputs [T*k, Dout]: row t*k+j is gates[t, j] * x[row] @ weight[expert_idx[t, j]], with
    row = t*k+j when x holds one row per pair, else t; then the routing tables (`route`), which the
    backward reuses."""
    x, weight, expert_idx = x.contiguous(), weight.contiguous(), expert_idx.contiguous()
    gates = gates.contiguous() if gates is not None else None
    m, din, dout = weight.shape
    k = expert_idx.shape[1]
    tables = route(expert_idx, m, token_tiles(din, dout)[0])
    out = x.new_empty(expert_idx.numel(), dout)
    return _grouped(x, weight, (din * dout, dout, 1), din, dout, tables, 1 if x_is_pairs else k, gates, out), *tables


@moe_grouped_linear_triton.register_fake
def _(x, weight, expert_idx, gates, x_is_pairs):
    m, din, dout = weight.shape
    pairs = expert_idx.numel()
    blocks = triton.cdiv(pairs, token_tiles(din, dout)[0]) + m
    i32 = dict(device=x.device, dtype=torch.int32)
    return (
        x.new_empty(pairs, dout),
        torch.empty(pairs, **i32),
        torch.empty(m, **i32),
        torch.empty(m, **i32),
        torch.empty(blocks, **i32),
        torch.empty(blocks, **i32),
    )


@torch.library.custom_op("switchsweep::moe_grouped_linear_backward", mutates_args=())
def moe_grouped_linear_backward_triton(
    dy: Tensor,
    x: Tensor,
    weight: Tensor,
    expert_idx: Tensor,
    gates: Tensor | None,
    x_is_pairs: bool,
    tables: list[Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dgates); dgates is empty without gates. `tables` are the forward's routing tables."""
    dy, x, weight = dy.contiguous(), x.contiguous(), weight.contiguous()
    gates = gates.contiguous() if gates is not None else None
    m, din, dout = weight.shape
    t, k = expert_idx.shape
    x_div = 1 if x_is_pairs else k
    # dx per pair: g_p * dy[p] @ W[e]^T (W read transposed through its strides), summed over k for token
    # inputs; with gates, the same tiles give each pair's gate gradient, per column tile of dx.
    dg = (
        None
        if gates is None
        else torch.empty(triton.cdiv(din, token_tiles(dout, din)[1]), t * k, device=x.device, dtype=torch.float32)
    )
    dxp = _grouped(
        dy,
        weight,
        (din * dout, 1, dout),
        dout,
        din,
        tables,
        1,
        gates,
        dy.new_empty(t * k, din),
        dg=dg,
        x2=x,
        x2_div=x_div,
    )
    dx = dxp if x_is_pairs else dxp.view(t, k, din).sum(1)
    dw = torch.empty_like(weight)
    bd = token_tiles(dout, din)[1]
    bp, bn, _ = token_tiles(din, dout)
    pairs, start, end, _, _ = tables
    token_grad_w_kernel[(m, triton.cdiv(din, bd), triton.cdiv(dout, bn))](
        x,
        dy,
        gates if gates is not None else x,
        pairs,
        start,
        end,
        dw,
        din,
        dout,
        X_DIV=x_div,
        HAS_GATE=gates is not None,
        BLOCK_D=bd,
        BLOCK_N=bn,
        BLOCK_P=bp,
        PRECISION=precision(x),
    )
    if gates is None:
        return dx, dw, x.new_empty(0)
    return dx, dw, dg.sum(0).view(t, k).to(gates.dtype)


@moe_grouped_linear_backward_triton.register_fake
def _(dy, x, weight, expert_idx, gates, x_is_pairs, tables):
    dx = x.new_empty(x.shape)
    return dx, torch.empty_like(weight), (torch.empty_like(gates) if gates is not None else x.new_empty(0))


def _setup_grouped(ctx, inputs, output) -> None:
    x, weight, expert_idx, gates, x_is_pairs = inputs
    ctx.x_is_pairs, ctx.has_gates = x_is_pairs, gates is not None
    ctx.save_for_backward(x, weight, expert_idx, gates, *output[1:])


def _backward_grouped(ctx, grad: Tensor, *_tables):
    x, weight, expert_idx, gates, *tables = ctx.saved_tensors
    dx, dw, dg = moe_grouped_linear_backward_triton(grad, x, weight, expert_idx, gates, ctx.x_is_pairs, tables)
    return dx, dw, None, (dg if ctx.has_gates else None), None


torch.library.register_autograd("switchsweep::moe_grouped_linear", _backward_grouped, setup_context=_setup_grouped)
torch.library.register_autocast("switchsweep::moe_grouped_linear", "cuda", torch.bfloat16)
