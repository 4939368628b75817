"""DTR: every block runs on the channels selected by a fixed timestep mask m_t (Denoising Task Routing)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from switchsweep.models.dit import DiT
from switchsweep.models.layers import AdaLNBranches
from switchsweep.models.routing import dtr_mask


class DTRBlock(AdaLNBranches):
    def forward(self, x: Tensor, c: Tensor, mask: Tensor) -> Tensor:
        """r = x*m; r = r + attn(r); r = r + mlp(r); x = r + x*(1-m)."""
        return super().forward(x * mask, c) + x * (1 - mask)


class DTR(DiT):
    def __init__(self, *, dtr_alpha: float = 4.0, dtr_beta: float = 0.8, **kwargs):
        super().__init__(**kwargs)
        self.dtr_alpha, self.dtr_beta = dtr_alpha, dtr_beta
        masks = dtr_mask(self.hidden, beta=dtr_beta, alpha=dtr_alpha, num_timesteps=self.num_timesteps)
        self.register_buffer("channel_masks", masks, persistent=False)

    def _make_block(self, index: int) -> DTRBlock:
        return DTRBlock(self.hidden, self.heads, self.mlp_ratio)

    def _run_blocks(self, x: Tensor, c: Tensor, t: Tensor, e_t: Tensor, aux: dict[str, Any] | None) -> Tensor:
        mask = self.channel_masks[t].unsqueeze(1).to(x.dtype)
        for block in self.blocks:
            x = block(x, c, mask)
        return x
