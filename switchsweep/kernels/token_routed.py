"""Triton grouped GEMM of token-routed experts (DiT-MoE style), ScatterMoE-like: the (token, expert)
pairs are sorted by expert, and rows are gathered in the loads and scattered in the stores, so no
padded or permuted copy of the activations is ever made. The column tile is the grid's fastest axis, so the
programs running together share one block's gathered rows.

A pair p = t*k + j routes row r(p) of X (r(p) = t for token inputs, p for per-pair inputs) through
expert e(p) = expert_idx[t, j]; the output row p is g_p * X[r(p)] @ W[e(p)] (g_p = 1 without gates).
Work is cut into blocks of BLOCK_P pairs of one expert; the block table is built on the device, so
the launch grid is a fixed upper bound and nothing is read back to the host.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from switchsweep.kernels.dot import dot


@triton.jit
def grouped_kernel(
    x_ptr,
    w_ptr,
    out_ptr,
    x2_ptr,
    dg_ptr,
    g_ptr,
    pairs_ptr,
    block_expert_ptr,
    block_start_ptr,
    expert_end_ptr,
    DIN,
    DOUT,
    M,
    P,
    stride_we,
    stride_wk,
    stride_wn,
    X_DIV: tl.constexpr,
    X2_DIV: tl.constexpr,
    HAS_GATE: tl.constexpr,
    WITH_DG: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """out[p] = g_p * X[p // X_DIV] @ W[e] for the block's pairs. WITH_DG (the backward's dx, X = dy and
    W transposed) also writes the gate gradient's part on this column tile, <dy[p] @ W[e]^T, X2[p // X2_DIV]>
    (= <dy[p], X2[r(p)] @ W[e]>), to dg[column tile, p]: the forward's GEMM is not run again."""
    blk = tl.program_id(1)
    e = tl.load(block_expert_ptr + blk)
    if e < M:
        start = tl.load(block_start_ptr + blk)
        end = tl.load(expert_end_ptr + e)
        offs = start + tl.arange(0, BLOCK_P)
        valid = offs < end
        pair = tl.load(pairs_ptr + offs, mask=valid, other=0)
        row = pair // X_DIV
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
        w_base = w_ptr + e.to(tl.int64) * stride_we
        for k0 in range(0, DIN, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            xt = tl.load(
                x_ptr + row[:, None].to(tl.int64) * DIN + ks[None, :],
                mask=valid[:, None] & (ks[None, :] < DIN),
                other=0.0,
            )
            wt = tl.load(
                w_base + ks[:, None] * stride_wk + cols[None, :] * stride_wn,
                mask=(ks[:, None] < DIN) & (cols[None, :] < DOUT),
                other=0.0,
            )
            acc = dot(xt, wt, acc, PRECISION)
        mask = valid[:, None] & (cols[None, :] < DOUT)
        if WITH_DG:
            x2 = tl.load(x2_ptr + (pair // X2_DIV)[:, None].to(tl.int64) * DOUT + cols[None, :], mask=mask, other=0.0)
            tl.store(
                dg_ptr + tl.program_id(0).to(tl.int64) * P + pair, tl.sum(acc * x2.to(tl.float32), axis=1), mask=valid
            )
        if HAS_GATE:
            acc = acc * tl.load(g_ptr + pair, mask=valid, other=0.0).to(tl.float32)[:, None]
        tl.store(
            out_ptr + pair[:, None].to(tl.int64) * DOUT + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask
        )


@triton.jit
def grouped_grad_w_kernel(
    x_ptr,
    dy_ptr,
    g_ptr,
    pairs_ptr,
    expert_start_ptr,
    expert_end_ptr,
    dw_ptr,
    DIN,
    DOUT,
    X_DIV: tl.constexpr,
    HAS_GATE: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_P: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dW[e][rows, cols] = sum over e's pairs of g_p * X[r(p)]^T dy[p]: one GEMM over e's pairs only."""
    e = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cols = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    start = tl.load(expert_start_ptr + e)
    end = tl.load(expert_end_ptr + e)
    acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    for p0 in range(start, end, BLOCK_P):
        offs = p0 + tl.arange(0, BLOCK_P)
        valid = offs < end
        pair = tl.load(pairs_ptr + offs, mask=valid, other=0)
        row = pair // X_DIV
        xt = tl.load(
            x_ptr + row[None, :].to(tl.int64) * DIN + rows[:, None],
            mask=valid[None, :] & (rows[:, None] < DIN),
            other=0.0,
        )
        dy = tl.load(
            dy_ptr + pair[:, None].to(tl.int64) * DOUT + cols[None, :],
            mask=valid[:, None] & (cols[None, :] < DOUT),
            other=0.0,
        )
        if HAS_GATE:
            dy = (dy.to(tl.float32) * tl.load(g_ptr + pair, mask=valid, other=0.0).to(tl.float32)[:, None]).to(dy.dtype)
        acc = dot(xt, dy, acc, PRECISION)
    tile = (rows[:, None] < DIN) & (cols[None, :] < DOUT)
    tl.store(
        dw_ptr + e.to(tl.int64) * DIN * DOUT + rows[:, None] * DOUT + cols[None, :],
        acc.to(dw_ptr.dtype.element_ty),
        mask=tile,
    )


def route(expert_idx: Tensor, num_experts: int, block_p: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Device-side routing tables: pairs sorted by expert, each expert's [start, end) in that order,
    and per block (an upper bound of cdiv(P, block_p) + M blocks) its expert (M: unused) and start."""
    flat = expert_idx.reshape(-1)
    ordered, pairs = torch.sort(flat, stable=True)
    pairs = pairs.to(torch.int32)
    # Expert boundaries by binary search in the sorted ids: bincount would size its output on the host (a sync).
    experts = torch.arange(num_experts, device=flat.device, dtype=flat.dtype)
    start = torch.searchsorted(ordered, experts)
    end = torch.searchsorted(ordered, experts, right=True)
    counts = end - start
    blocks = (counts + block_p - 1) // block_p
    block_end = torch.cumsum(blocks, 0)
    n_blocks = triton.cdiv(flat.numel(), block_p) + num_experts
    ids = torch.arange(n_blocks, device=flat.device)
    block_expert = torch.searchsorted(block_end, ids, right=True)  # == num_experts past the last block
    first = block_end - blocks
    e = block_expert.clamp(max=num_experts - 1)
    block_start = start[e] + (ids - first[e]) * block_p
    return pairs, start.to(torch.int32), end.to(torch.int32), block_expert.to(torch.int32), block_start.to(torch.int32)


def tiles(din: int, dout: int) -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_N, BLOCK_K), clipped for small shapes."""
    return 64, min(64, max(16, triton.next_power_of_2(dout))), min(64, max(16, triton.next_power_of_2(din)))
