"""MoE layer implementations side by side, one run, the same inputs.

    python -m benchmarks.moe_kernels [--dtype bf16 tf32] [--csv runs/bench/moe_kernels.csv] [--quick]

Timestep-routed linear experts (Switch-DiT, op 1), forward / backward / forward+backward:
  official  gather + split + one mm per expert + in-place index_add (needs the expert sizes on the host)
  dense     every expert on every token in one GEMM, then the gate-weighted sum, differentiated by autograd
  stacked   the same maths as one GEMM of gate-scaled stacked tokens, with its own backward (our torch
            path for few tokens, kernels.stacked_experts)
  reference our torch path for more tokens: mix the selected weights per sample, one batched GEMM
  model     (CPU) what the model runs: stacked or reference by tokens x experts (kernels.ALL_EXPERTS_MAX)
  grouped   torch._grouped_mm over samples sorted by expert (where this torch and GPU have it)
  triton    our fused kernel (CUDA only)
  mm        one torch.mm with the same useful FLOPs: the ceiling
Token-routed experts (DiT-MoE, op 2; M=8, k=2, per-token routing), forward / backward / both:
  loop      sort + one mm per expert + index_add;  reference  our torch path;  triton  grouped GEMM
  mm        same-FLOP torch.mm
Useful FLOPs, counted at the minimum: op 1 forward 2*B*L*D^2 (one GEMM once the experts are mixed),
backward twice that (dz and dW); op 2 forward 2*k*T*D*F per projection, backward twice that.
Each op-1 shape is timed with balanced routing and once skewed (most samples on one expert).
Dtypes: bf16, fp16, tf32 (fp32 data, TF32 matmuls: train.precision=tf32) and fp32 (exact).
On a GPU times are triton.testing.do_bench's (CUDA events, L2 flushed between runs); the backward is
timed alone on a kept graph. Prints median times, TFLOP/s, % of the same-FLOP mm and the speed-ups,
and writes them as CSV. Without a GPU it times the torch variants on small shapes only (the Triton
interpreter is not timed).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.args import positive_int
from switchsweep.kernels import sample_routed_linear, token_routed_linear
from switchsweep.kernels.reference import sample_routed_linear_reference, token_routed_linear_reference
from switchsweep.kernels.stacked_experts import stacked_experts_linear
from tests.support.compile_report import print_report

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32, "fp32": torch.float32}


def dense_autograd(z, weight, bias, expert_idx, gates):
    """Every expert on every token as one [B*L, D] x [D, M*D] GEMM, then each sample's gate-weighted sum
    of its experts' outputs, all differentiated by autograd: what `stacked` computes by hand."""
    m, d, _ = weight.shape
    b, l, _ = z.shape
    dense_gates = gates.new_zeros(b, m).scatter_add(1, expert_idx, gates).to(z.dtype)
    every = torch.addmm(bias.reshape(1, -1), z.reshape(b * l, d), weight.permute(1, 0, 2).reshape(d, -1))
    delta = (every.view(b, l, m, d) * dense_gates.view(b, 1, m, 1)).sum(2)
    return z * (1 + delta)


def official_loop(z, weight, bias, expert_idx, gates):
    """The official implementation's shape: samples grouped per expert on the host, k GEMMs + copies."""
    b, l, d = z.shape
    flat = expert_idx.reshape(-1)
    sample = torch.arange(b, device=z.device).repeat_interleave(expert_idx.shape[1])
    order = torch.argsort(flat)
    sizes = torch.bincount(flat, minlength=weight.shape[0]).tolist()  # host sync
    acc = torch.zeros_like(z)
    for e, chunk in enumerate(order.split(sizes)):
        if len(chunk):
            s = sample[chunk]
            out = (z[s].reshape(-1, d) @ weight[e] + bias[e]).view(-1, l, d)
            acc.index_add_(0, s, out * gates.reshape(-1)[chunk].view(-1, 1, 1))
    return z * (1 + acc)


def grouped_mm_op1(z, weight, bias, expert_idx, gates):
    """torch._grouped_mm over the (sample, expert) pairs sorted by expert: no host sync, but the
    sorted copy of z and the per-expert outputs are materialised."""
    b, l, d = z.shape
    k = expert_idx.shape[1]
    flat = expert_idx.reshape(-1)
    order = torch.argsort(flat)
    sample = torch.arange(b, device=z.device).repeat_interleave(k)[order]
    offs = torch.cumsum(torch.bincount(flat, minlength=weight.shape[0]) * l, 0).to(torch.int32)
    x = z[sample].reshape(-1, d)
    y = torch._grouped_mm(x, weight, offs=offs).view(-1, l, d) + bias[flat[order]].unsqueeze(1)
    acc = torch.zeros_like(z).index_add(0, sample, y * gates.reshape(-1)[order].view(-1, 1, 1))
    return z * (1 + acc)


def token_loop(x, weight, expert_idx, gates):
    t, k = expert_idx.shape
    flat = expert_idx.reshape(-1)
    token = torch.arange(t, device=x.device).repeat_interleave(k)
    order = torch.argsort(flat)
    sizes = torch.bincount(flat, minlength=weight.shape[0]).tolist()
    out = x.new_zeros(t, weight.shape[2])
    for e, chunk in enumerate(order.split(sizes)):
        if len(chunk):
            tok = token[chunk]
            out.index_add_(0, tok, (x[tok] @ weight[e]) * gates.reshape(-1)[chunk, None])
    return out


def _time(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """Median seconds of fn: CUDA events with the L2 flushed between runs on a GPU, wall clock on a CPU."""
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, rep=max(reps * 5, 25), return_mode="median") / 1e3
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _mode(fn, inputs, grads_of, mode: str):
    """The callable that times `mode`: forward, backward (on one forward graph, built here and kept)
    or forward+backward."""
    if mode == "forward":

        def run():
            with torch.no_grad():
                return fn(*inputs)
    elif mode == "backward":
        out = fn(*inputs)
        seed = torch.ones_like(out)

        def run():
            torch.autograd.grad(out, grads_of, seed, retain_graph=True)
    else:

        def run():
            y = fn(*inputs)
            torch.autograd.grad(y, grads_of, torch.ones_like(y))

    return run


def bench_case(rows, op, shape, variants, inputs, grads_of, flops, mm_shape, device, reps, dtype_name, modes):
    dtype = DTYPES[dtype_name]
    a = torch.randn(mm_shape[0], mm_shape[1], device=device, dtype=dtype)
    w = torch.randn(mm_shape[1], mm_shape[2], device=device, dtype=dtype)
    mm_flops = 2 * mm_shape[0] * mm_shape[1] * mm_shape[2]
    for mode in modes:
        useful = flops[mode]
        repeat = max(1, round(useful / mm_flops))
        ceiling = _time(lambda: [torch.mm(a, w) for _ in range(repeat)], device, reps)  # noqa: B023 - called here
        results = {}
        for name, fn in variants.items():
            try:
                t = _time(_mode(fn, inputs, grads_of, mode), device, reps)
            except (RuntimeError, NotImplementedError) as e:
                if name != "grouped":  # only torch._grouped_mm may be missing for this GPU or dtype
                    raise
                print(f"  {op} {name} {mode}: n/a ({str(e).splitlines()[0][:80]})")
                continue
            results[name] = t
        base = results.get("official", results.get("loop"))
        for name, t in results.items():
            rows.append(
                {
                    "dtype": dtype_name,
                    "op": op,
                    "shape": shape,
                    "mode": mode,
                    "variant": name,
                    "median_ms": t * 1e3,
                    "tflops": useful / t / 1e12,
                    "pct_of_mm": 100 * ceiling / t,
                    "speedup_vs_loop": base / t if base else float("nan"),
                    "speedup_vs_dense": results["dense"] / t if "dense" in results else float("nan"),
                }
            )
        rows.append(
            {
                "dtype": dtype_name,
                "op": op,
                "shape": shape,
                "mode": mode,
                "variant": "mm",
                "median_ms": ceiling * 1e3,
                "tflops": useful / ceiling / 1e12,
                "pct_of_mm": 100.0,
                "speedup_vs_loop": base / ceiling if base else float("nan"),
                "speedup_vs_dense": float("nan"),
            }
        )


def _bench_dtype(rows, dtype_name, cuda, device, reps, quick, modes):
    dtype = DTYPES[dtype_name]
    torch.set_float32_matmul_precision("high" if dtype_name == "tf32" else "highest")
    gen = torch.Generator(device=device).manual_seed(0)
    if cuda:
        shapes1 = [(b, 256, d) for d in (384, 768, 1152) for b in (32, 128, 256)]
        shapes2 = [(t, d) for d in (384, 768, 1152) for t in (8192, 32768)]
    else:
        # the digits defaults (tiny, 4 tokens), patch 2 (16 tokens), and a larger token count
        shapes1, shapes2 = [(64, 4, 128), (64, 16, 128), (8, 64, 128)], [(2048, 128), (4096, 256)]
    if quick:
        shapes1, shapes2 = shapes1[:1], shapes2[:1]
    m, k = 3, 2
    cases1 = [(shape, "balanced") for shape in shapes1] + [(shapes1[-1], "skewed")]
    for (b, l, d), routing in cases1:
        z = torch.randn(b, l, d, device=device, dtype=dtype, generator=gen, requires_grad=True)
        weight = (torch.randn(m, d, d, device=device, dtype=dtype, generator=gen) / d**0.5).requires_grad_(True)
        bias = torch.zeros(m, d, device=device, dtype=dtype, requires_grad=True)
        logits = torch.randn(b, m, device=device, generator=gen)
        if routing == "skewed":  # expert 0 in almost every sample's top-k, as early in training
            logits[:, 0] += 4.0
        gates, idx = torch.softmax(logits, -1).topk(k, -1)
        gates = gates.to(dtype).requires_grad_(True)
        variants = {
            "official": official_loop,
            "dense": dense_autograd,
            "stacked": stacked_experts_linear,
            "reference": sample_routed_linear_reference,
        }
        if not cuda:  # the torch path the model takes: stacked or reference by tokens x experts
            variants["model"] = sample_routed_linear
        if cuda:
            if hasattr(torch, "_grouped_mm") and dtype == torch.bfloat16:
                variants["grouped"] = grouped_mm_op1
            variants["triton"] = sample_routed_linear
        fwd = 2 * b * l * d * d
        bench_case(
            rows,
            "sample_routed",
            f"B={b} L={l} D={d} {routing}",
            variants,
            (z, weight, bias, idx, gates),
            (z, weight, bias, gates),
            {"forward": fwd, "backward": 2 * fwd, "forward+backward": 3 * fwd},
            (b * l, d, d),
            device,
            reps,
            dtype_name,
            modes,
        )
    m, k = 8, 2
    for t, d in shapes2:
        f = d  # one projection D -> D per call (a SwiGLU expert is three of these)
        x = torch.randn(t, d, device=device, dtype=dtype, generator=gen, requires_grad=True)
        weight = (torch.randn(m, d, f, device=device, dtype=dtype, generator=gen) / d**0.5).requires_grad_(True)
        gates, idx = torch.softmax(torch.randn(t, m, device=device, generator=gen), -1).topk(k, -1)
        gates = gates.to(dtype).requires_grad_(True)
        variants = {"loop": token_loop, "reference": token_routed_linear_reference}
        if cuda:
            variants["triton"] = token_routed_linear
        fwd = 2 * k * t * d * f
        bench_case(
            rows,
            "token_routed",
            f"T={t} D={d} M={m} k={k}",
            variants,
            (x, weight, idx, gates),
            (x, weight, gates),
            {"forward": fwd, "backward": 2 * fwd, "forward+backward": 3 * fwd},
            (k * t, d, f),
            device,
            reps,
            dtype_name,
            modes,
        )


def run(
    dtypes: list[str],
    quick: bool = False,
    reps: int | None = None,
    modes: tuple[str, ...] = ("forward", "backward", "forward+backward"),
) -> list[dict]:
    """Every case of every dtype, one row per (case, mode, variant); prints nothing."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    reps = reps or (20 if cuda else 3)
    before = torch.get_float32_matmul_precision()
    rows: list[dict] = []
    try:
        for dtype_name in dtypes:
            _bench_dtype(rows, dtype_name, cuda, device, reps, quick, modes)
    finally:
        torch.set_float32_matmul_precision(before)
    return rows


def print_rows(rows: list[dict]) -> None:
    print(
        f"{'dtype':<5} {'op':<13} {'shape':<26} {'mode':<17} {'variant':<10} {'ms':>9} {'TFLOP/s':>8} {'% mm':>6} "
        f"{'x loop':>7} {'x dense':>7}"
    )
    for r in rows:
        print(
            f"{r['dtype']:<5} {r['op']:<13} {r['shape']:<26} {r['mode']:<17} {r['variant']:<10} {r['median_ms']:>9.3f} "
            f"{r['tflops']:>8.2f} {r['pct_of_mm']:>6.1f} {r['speedup_vs_loop']:>7.2f} {r['speedup_vs_dense']:>7.2f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dtype", nargs="+", choices=list(DTYPES), default=None, help="default: bf16 and tf32 on a GPU, fp32 on a CPU"
    )
    parser.add_argument("--csv", type=Path, default=Path("runs/bench/moe_kernels.csv"))
    parser.add_argument("--quick", action="store_true", help="one shape per op")
    parser.add_argument("--reps", type=positive_int, default=None)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    dtypes = args.dtype or (["bf16", "tf32"] if cuda else ["fp32"])
    if not cuda:
        print("no GPU: timing the torch variants on small shapes (Triton runs only on CUDA)")
    rows = run(dtypes, args.quick, args.reps)
    name = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"\n{name}, median of {args.reps or (20 if cuda else 3)}" + (" (do_bench)" if cuda else ""))
    print_rows(rows)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"written to {args.csv}\n")
    print_report(["bf16", "tf32", "fp32"])  # where the Triton kernels would stand on an H100, GPU or not


if __name__ == "__main__":
    main()
