"""Exponential moving average of the model weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """EMA copy of a model. The decay warms up as min(decay, (1 + n) / (10 + n)) so that short runs
    (a few hundred steps on the CPU) get a usable average instead of one stuck at initialisation."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        self.num_updates += 1
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1.0 - d)
        for ema_buf, buf in zip(self.model.buffers(), model.buffers()):
            ema_buf.copy_(buf)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.num_updates = int(state["num_updates"])
