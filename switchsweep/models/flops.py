"""Model size and compute: parameters and forward FLOPs per image (torch.utils.flop_counter)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def forward_gflops(model: nn.Module, channels: int, image_size: int, num_timesteps: int) -> float:
    """GFLOPs of one forward pass for one image at a middle timestep (eval mode: no gate noise).
    Counts matmuls, convolutions and attention, as the flop counter does; multiply-adds count as 2."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.zeros(1, channels, image_size, image_size, device=device)
    t = torch.full((1,), num_timesteps // 2, device=device, dtype=torch.long)
    y = torch.zeros(1, device=device, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x, t, y)
    model.train(was_training)
    return counter.get_total_flops() / 1e9
