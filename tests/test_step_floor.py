"""The step-time floor times the expert layer's real maths: its ops give autograd's forward and gradients."""

import torch

from switchsweep.kernels.reference import expert_layer_least_ops


def test_least_ops_are_the_expert_layer_and_its_backward():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(3, 5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = (torch.randn(3, 8, 8, generator=g, dtype=torch.float64) / 3).requires_grad_()
    dy = torch.randn(3, 5, 8, generator=g, dtype=torch.float64)
    ref = z * (1 + z @ w)  # per sample b: z_b (1 + z_b W_b)
    ref.backward(dy)
    y, dz, dw = expert_layer_least_ops(z.detach(), w.detach(), w.detach().transpose(1, 2).contiguous(), dy)
    torch.testing.assert_close(y, ref.detach())
    torch.testing.assert_close(dz, z.grad)
    torch.testing.assert_close(dw, w.grad)
