"""How the MoE kernels would run on an H100, read from an ahead-of-time compile for sm_90a (no GPU needed:
Triton's real compiler and ptxas run here): registers per thread, spills, shared memory, and whether
the PTX uses Hopper's `wgmma` tensor-core instructions (or the older `mma.sync`, or neither: FMA).
Spills are ptxas's spill stores / loads, in bytes per thread.

    python -m switchsweep.kernels.compile_report [--dtype bf16 tf32 fp32]

Pointers and sizes are marked divisible by 16, as a real launch with aligned tensors and D, L
multiples of 16 specialises them; the tiles and warps are those the ops pick for L=256, D=1152.
`tf32` is fp32 data under torch's TF32 matmul setting (train.precision=tf32), `fp32` the exact path.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# Run in a fresh interpreter: the kernels must be imported without TRITON_INTERPRET (tests set it).
_COMPILE = r"""
import json, re, subprocess, sys, tempfile
import triton
from triton.backends.nvidia.compiler import get_ptxas
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from switchsweep.kernels import sample_routed as sr, token_routed as tr

dtype = sys.argv[1]
prec = {"tf32": "tf32", "fp32": "ieee"}.get(dtype, "native")
data = "fp32" if dtype == "tf32" else dtype
size = 2 if data in ("bf16", "fp16") else 4
bl, bn, bk, warps, stages = sr.block_sizes(256, 1152, size)
wd, wn, wl, wwarps, wstages = sr.grad_w_block_sizes(256, 1152, size)
tp, tn, tk = tr.tiles(1152, 1152)
FIXED = {"w_ptr": "*fp32", "bias_ptr": "*fp32", "idx_ptr": "*i64", "dw_ptr": "*fp32", "dgw_ptr": "*fp32",
         "pairs_ptr": "*i32", "block_expert_ptr": "*i32", "block_start_ptr": "*i32", "expert_start_ptr": "*i32",
         "expert_end_ptr": "*i32"}
CASES = [
    ("srl_forward", sr.srl_forward_kernel,
     {"K": 2, "BLOCK_L": bl, "BLOCK_N": bn, "BLOCK_K": bk, "PRECISION": prec, "STORE_H": True}, {}, warps, stages),
    ("srl_grad_z", sr.srl_grad_z_kernel,
     {"K": 2, "BLOCK_L": bl, "BLOCK_N": bn, "BLOCK_K": bk, "PRECISION": prec}, {"r_ptr": "*fp32"}, warps, stages),
    ("srl_grad_w", sr.srl_grad_w_kernel,
     {"K": 2, "BLOCK_D": wd, "BLOCK_N": wn, "BLOCK_L": wl, "PRECISION": prec}, {}, wwarps, wstages),
    ("grouped", tr.grouped_kernel,
     {"X_DIV": 2, "X2_DIV": 1, "HAS_GATE": True, "WITH_DG": False, "BLOCK_P": tp, "BLOCK_N": tn, "BLOCK_K": tk,
      "PRECISION": prec}, {}, 4, 3),
    ("grouped_dx_dgate", tr.grouped_kernel,
     {"X_DIV": 1, "X2_DIV": 2, "HAS_GATE": True, "WITH_DG": True, "BLOCK_P": tp, "BLOCK_N": tn, "BLOCK_K": tk,
      "PRECISION": prec}, {"dg_ptr": "*fp32"}, 4, 3),
    ("grouped_grad_w", tr.grouped_grad_w_kernel,
     {"X_DIV": 2, "HAS_GATE": True, "BLOCK_D": tn, "BLOCK_N": tn, "BLOCK_P": tp, "PRECISION": prec}, {}, 4, 3),
]
rows = []
for label, fn, consts, extra, num_warps, num_stages in CASES:
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
            continue
        sig[name] = extra.get(name, FIXED.get(name, f"*{data}" if name.endswith("_ptr") else "i32"))
        if name.endswith("_ptr") or name in ("L", "D", "DIN", "DOUT"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                       target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": num_stages})
    ptx = k.asm["ptx"]
    # Registers and spills as ptxas reports them (the loaded kernel's n_regs needs a GPU).
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as fh:
        fh.write(ptx)
        fh.flush()
        said = subprocess.run([get_ptxas(90).path, "-v", "--gpu-name", "sm_90a", fh.name, "-o", "/dev/null"],
                              capture_output=True, text=True).stderr
    regs = int(re.search(r"Used (\d+) registers", said).group(1))
    stores, loads = (int(re.search(rf"(\d+) bytes spill {what}", said).group(1)) for what in ("stores", "loads"))
    tc = "wgmma" if "wgmma" in ptx else ("mma.sync" if "mma.sync" in ptx else "none (FMA)")
    rows.append({"kernel": label, "regs": regs, "spill_stores": stores, "spill_loads": loads,
                 "shared_kb": k.metadata.shared / 1024, "warps": k.metadata.num_warps, "tensor_cores": tc})
print(json.dumps(rows))
"""


def compile_report(dtype: str) -> list[dict]:
    """One row per kernel specialisation, compiled for sm_90 with `dtype` activations."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _COMPILE, dtype], capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"the sm_90 compile failed: {done.stderr.strip().splitlines()[-1][:300]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_report(dtypes: list[str]) -> None:
    print("compile report, sm_90a (ahead of time; L=256, D=1152 tiles)")
    print(f"{'dtype':<6}{'kernel':<16}{'warps':>6}{'regs':>6}{'spill st/ld B':>15}{'smem KB':>9}  tensor cores")
    for dtype in dtypes:
        for r in compile_report(dtype):
            spills = f"{r['spill_stores']}/{r['spill_loads']}"
            print(
                f"{dtype:<6}{r['kernel']:<16}{r['warps']:>6}{r['regs']:>6}{spills:>15}{r['shared_kb']:>9.1f}  "
                f"{r['tensor_cores']}"
            )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", nargs="+", default=["bf16", "tf32", "fp32"], choices=["bf16", "fp16", "tf32", "fp32"])
    print_report(ap.parse_args(argv).dtype)


if __name__ == "__main__":
    main()
