"""Multi-experts baseline (paper Table A): separate DiT models, each owning one exclusive interval of
timesteps, trained only on it and used only there at sampling time."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from switchsweep.models.dit import DiT


class MultiExpertDiT(nn.Module):
    def __init__(self, *, num_intervals: int, num_timesteps: int = 1000, **kwargs):
        super().__init__()
        self.num_intervals, self.num_timesteps = num_intervals, num_timesteps
        self.experts = nn.ModuleList(DiT(num_timesteps=num_timesteps, **kwargs) for _ in range(num_intervals))
        first = self.experts[0]  # shape attributes the samplers read
        self.channels, self.image_size, self.out_channels = first.channels, first.image_size, first.out_channels

    @property
    def null_class(self) -> int:
        return self.experts[0].null_class

    def interval(self, t: Tensor) -> Tensor:
        """The model each timestep belongs to: interval i holds t in [i T / n, (i + 1) T / n)."""
        return torch.div(t * self.num_intervals, self.num_timesteps, rounding_mode="floor")

    def forward(self, x: Tensor, t: Tensor, y: Tensor, return_aux: bool = False):
        owner = self.interval(t)
        out = x.new_empty(x.shape[0], self.out_channels, *x.shape[2:])
        for i, expert in enumerate(self.experts):
            # Every model runs, on its own (possibly empty) share of the batch, so DDP always sees
            # all parameters used; the share's size is read on the host (this baseline's routing sync).
            sel = (owner == i).nonzero().squeeze(1)
            out = out.index_copy(0, sel, expert(x[sel], t[sel], y[sel]))
        return (out, {}) if return_aux else out

    def aux_losses(self, aux: dict[str, Any], t: Tensor) -> dict[str, tuple[float, Tensor]]:
        return {}
