"""Which implementation the MoE ops run, and when Triton interprets its kernels instead of compiling them.

`auto` (the default): the Triton kernels on CUDA tensors, the pure-torch reference elsewhere. As a
testing aid, SWITCHSWEEP_KERNELS=triton sends CPU tensors through the Triton kernels too (in Triton's
interpreter, which must be on before the kernels are imported), and SWITCHSWEEP_KERNELS=reference
sends CUDA tensors through the reference: the two paths can then be compared on one model.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager

from torch import Tensor

ENV = "SWITCHSWEEP_KERNELS"
BACKENDS = ("auto", "triton", "reference")
INTERPRET = "TRITON_INTERPRET"


def set_interpreter(cuda_available: bool, environ: MutableMapping[str, str] = os.environ) -> None:
    """Triton's interpreter only where no CUDA device is present: TRITON_INTERPRET=1 (unless already set)
    without CUDA, nothing with it, so that a GPU runs the compiled kernels. Triton reads the variable
    when a kernel is defined, so call this before importing switchsweep.kernels' Triton modules."""
    if not cuda_available:
        environ.setdefault(INTERPRET, "1")


def backend() -> str:
    name = os.environ.get(ENV, "auto")
    if name not in BACKENDS:
        raise ValueError(f"{ENV}={name!r} is not one of {', '.join(BACKENDS)}: unset it, or pick one of those")
    return name


def uses_triton(t: Tensor) -> bool:
    """Whether an op on `t` runs the Triton kernels (see the module doc)."""
    name = backend()
    if name == "reference" or (name == "auto" and not t.is_cuda):
        return False
    if not t.is_cuda and not interpreted():
        raise RuntimeError(
            f"{ENV}=triton on CPU tensors needs Triton's interpreter: set {INTERPRET}=1 before "
            "switchsweep.kernels is imported"
        )
    return True


def interpreted() -> bool:
    """Whether the imported kernels run in Triton's interpreter (decided when they were defined)."""
    from triton.runtime.interpreter import InterpretedFunction

    from switchsweep.kernels.sample_routed import srl_forward_kernel

    return isinstance(srl_forward_kernel, InterpretedFunction)


@contextmanager
def kernels_backend(name: str) -> Iterator[None]:
    """Run the MoE ops on `name` (one of BACKENDS) inside the block."""
    if name not in BACKENDS:
        raise ValueError(f"kernels backend {name!r} is not one of {', '.join(BACKENDS)}")
    before = os.environ.get(ENV)
    os.environ[ENV] = name
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before
