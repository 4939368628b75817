"""Triton kernels of the timestep-routed linear experts (Switch-DiT's SMoE layer), forward and backward.

y = z * (1 + h), h[b] = z[b] @ Wmix[b] + bmix[b], Wmix[b] = sum_j g[b, j] W[e[b, j]] (Sec. 4.1).

Experts are linear, so the forward mixes the k weight tiles with their gates as it loads them and runs
one GEMM (K = D) per output tile; z*m is written in the epilogue and no per-expert output exists.
The backward needs, per sample, dh = dy*z, then
  dz     = dy * (1 + h) + dh @ Wmix[b]^T                      (the forward kernel's shape, transposed mix)
  dW[e]  = sum_{b routed to e} c[b, e] z[b]^T dh[b]            (one GEMM over L per sample, added to k experts)
  dg[bj] = <z[b]^T dh[b], W[e_bj]> + <sum_l dh[b], b[e_bj]>   (the first term fused into the dW kernel)
with c[b, e] = sum_j g[b, j] [e[b, j] = e]. Nothing here reads a value back to the host.

Grids put the column tile fastest, so the programs running together share one z (or dy) row tile and
it is read from HBM once. Reductions over samples are split across programs into partial sums that
the host adds in a fixed order: dW, the gate gradient and dbias are deterministic (no atomics).
"""

from __future__ import annotations

import triton
import triton.language as tl

from switchsweep.kernels.dot import dot


@triton.jit
def _mix_tile(
    w_ptr, idx_ptr, g_ptr, b, rows, cols, D, K: tl.constexpr, R: tl.constexpr, C: tl.constexpr, TRANS: tl.constexpr
):
    """sum_j g[b, j] * W[e[b, j]][rows, cols] in fp32, [R, C] (W read transposed when TRANS)."""
    mask = (rows[:, None] < D) & (cols[None, :] < D)
    acc = tl.zeros((R, C), dtype=tl.float32)
    for j in tl.static_range(K):
        e = tl.load(idx_ptr + b * K + j).to(tl.int64)
        g = tl.load(g_ptr + b * K + j).to(tl.float32)
        if TRANS:
            ptrs = w_ptr + e * D * D + cols[None, :] * D + rows[:, None]
        else:
            ptrs = w_ptr + e * D * D + rows[:, None] * D + cols[None, :]
        acc += g * tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    return acc


@triton.jit
def srl_forward_kernel(
    z_ptr,
    w_ptr,
    bias_ptr,
    idx_ptr,
    g_ptr,
    out_ptr,
    h_ptr,
    L,
    D,
    K: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    STORE_H: tl.constexpr,
):
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    b = tl.program_id(2)
    base = b.to(tl.int64) * L * D
    acc = tl.zeros((BLOCK_L, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        zt = tl.load(
            z_ptr + base + rows[:, None] * D + ks[None, :], mask=(rows[:, None] < L) & (ks[None, :] < D), other=0.0
        )
        w = _mix_tile(w_ptr, idx_ptr, g_ptr, b, ks, cols, D, K, BLOCK_K, BLOCK_N, False)
        acc = dot(zt, w, acc, PRECISION)
    bmix = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for j in tl.static_range(K):
        e = tl.load(idx_ptr + b * K + j).to(tl.int64)
        g = tl.load(g_ptr + b * K + j).to(tl.float32)
        bmix += g * tl.load(bias_ptr + e * D + cols, mask=cols < D, other=0.0).to(tl.float32)
    h = acc + bmix[None, :]
    mask = (rows[:, None] < L) & (cols[None, :] < D)
    offs = base + rows[:, None] * D + cols[None, :]
    if STORE_H:  # before z's tile is loaded: fewer registers live at once
        tl.store(h_ptr + offs, h.to(h_ptr.dtype.element_ty), mask=mask)
    zn = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (zn * (1.0 + h)).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def srl_grad_z_kernel(
    dy_ptr,
    z_ptr,
    h_ptr,
    w_ptr,
    idx_ptr,
    g_ptr,
    dz_ptr,
    r_ptr,
    L,
    D,
    K: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dz = dy * (1 + h) + (dy * z) @ Wmix^T for one [BLOCK_L, BLOCK_N] tile of dz. The first column
    tile's programs also write their rows' sum of dh, r[b, row tile, :], for dbias and the gates."""
    pid_n = tl.program_id(0)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    b = tl.program_id(2)
    r_base = (b.to(tl.int64) * tl.num_programs(1) + tl.program_id(1)) * D
    base = b.to(tl.int64) * L * D
    acc = tl.zeros((BLOCK_L, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        m = (rows[:, None] < L) & (ks[None, :] < D)
        offs = base + rows[:, None] * D + ks[None, :]
        dy = tl.load(dy_ptr + offs, mask=m, other=0.0)
        dh = dy.to(tl.float32) * tl.load(z_ptr + offs, mask=m, other=0.0).to(tl.float32)
        if pid_n == 0:
            tl.store(r_ptr + r_base + ks, tl.sum(dh, 0), mask=ks < D)
        w_t = _mix_tile(w_ptr, idx_ptr, g_ptr, b, ks, cols, D, K, BLOCK_K, BLOCK_N, True)  # Wmix^T[ks, cols]
        acc = dot(dh.to(dy.dtype), w_t, acc, PRECISION)
    mask = (rows[:, None] < L) & (cols[None, :] < D)
    offs = base + rows[:, None] * D + cols[None, :]
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    h = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(dz_ptr + offs, (dy * (1.0 + h) + acc).to(dz_ptr.dtype.element_ty), mask=mask)


@triton.jit
def srl_grad_w_kernel(
    dy_ptr,
    z_ptr,
    w_ptr,
    idx_ptr,
    g_ptr,
    dw_ptr,
    dgw_ptr,
    B,
    L,
    D,
    M,
    PER_SPLIT,
    K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_L: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """For the samples of split s and one [BLOCK_D, BLOCK_N] tile: each sample's z[b]^T dh[b], computed
    once, is added with its gate g[b, j] to the partial dW[s, e[b, j]] of each of its k experts, and its
    term of the gate gradient <z[b]^T dh[b], W[e[b, j]]> on this tile is written to dgw[tile, b, j].
    Only this program touches those dW tiles, so the read-add-write needs no atomics and keeps one order."""
    split = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cols = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    tile = (rows[:, None] < D) & (cols[None, :] < D)
    offs_tile = rows[:, None] * D + cols[None, :]
    dgw_base = (tl.program_id(1) * tl.num_programs(2) + tl.program_id(2)).to(tl.int64) * B * K
    for b in range(split * PER_SPLIT, tl.minimum(split * PER_SPLIT + PER_SPLIT, B)):
        base = tl.cast(b, tl.int64) * L * D  # 64-bit: B*L*D passes 2**31 at B=256, L=4096, D=2048
        s = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        for l0 in range(0, L, BLOCK_L):
            ls = l0 + tl.arange(0, BLOCK_L)
            zt = tl.load(
                z_ptr + base + ls[None, :] * D + rows[:, None], mask=(ls[None, :] < L) & (rows[:, None] < D), other=0.0
            )
            m = (ls[:, None] < L) & (cols[None, :] < D)
            offs = base + ls[:, None] * D + cols[None, :]
            dy = tl.load(dy_ptr + offs, mask=m, other=0.0)
            dh = dy.to(tl.float32) * tl.load(z_ptr + offs, mask=m, other=0.0).to(tl.float32)
            s = dot(zt, dh, s, PRECISION)
        for j in tl.static_range(K):
            e = tl.load(idx_ptr + b * K + j).to(tl.int64)
            g = tl.load(g_ptr + b * K + j).to(tl.float32)
            w_e = tl.load(w_ptr + e * D * D + offs_tile, mask=tile, other=0.0).to(tl.float32)
            tl.store(dgw_ptr + dgw_base + b * K + j, tl.sum(s * w_e))
            part = dw_ptr + (split.to(tl.int64) * M + e) * D * D + offs_tile
            tl.store(part, tl.load(part, mask=tile, other=0.0) + g * s, mask=tile)
            tl.debug_barrier()  # every thread's add lands before any thread reads that tile again


def block_sizes(L: int, D: int, itemsize: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_L, BLOCK_N, BLOCK_K, num_warps, num_stages) of the forward and dz kernels: 128x128 tensor-core
    tiles with 8 warps on large shapes, a K step of 128 bytes per row so that a 3-stage pipeline fits an
    H100's shared memory at any dtype, clipped for small shapes (tests)."""
    bl = min(128, max(16, triton.next_power_of_2(L)))
    bn = min(128, max(16, triton.next_power_of_2(D)))
    bk = min(128 // itemsize, bn)
    return bl, bn, bk, 8 if bl * bn >= 128 * 128 else 4, 3


def grad_w_block_sizes(L: int, D: int, itemsize: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_D, BLOCK_N, BLOCK_L, num_warps, num_stages) of the dW kernel: 64x128 output tiles, as the
    sample's product meets an expert's weight and partial-dW tiles in registers, and a reduction step
    of 128 bytes."""
    bd = min(64, max(16, triton.next_power_of_2(D)))
    bn = min(128, max(16, triton.next_power_of_2(D)))
    bl = min(128 // itemsize, max(16, triton.next_power_of_2(L)))
    return bd, bn, bl, 8 if bd * bn >= 64 * 128 else 4, 3


def sample_splits(B: int, tiles: int, programs: int = 264) -> int:
    """How many sample ranges dW's reduction over B is cut into: enough programs to fill two waves of
    an H100's 132 SMs, never more ranges than samples."""
    return max(1, min(B, triton.cdiv(programs, tiles)))
