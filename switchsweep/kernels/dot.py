"""The one tensor-core product every MoE kernel uses."""

import triton
import triton.language as tl


@triton.jit
def dot(a, b, acc, PRECISION: tl.constexpr):
    """acc + a @ b: 16-bit operands in a's dtype; fp32 ones as TF32 ("tf32") or exactly ("ieee")."""
    if PRECISION == "native":
        out = tl.dot(a, b.to(a.dtype), acc)
    else:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=PRECISION)
    return out
