"""DiT backbone (Peebles & Xie): patchify, N adaLN-Zero blocks, final layer, learned sigma."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from switchsweep.models.layers import AdaLNBranches, FinalLayer, LabelEmbedder, TimestepEmbedder, sincos_pos_embed_2d


class DiT(nn.Module):
    """Class-conditional DiT; `forward(x, t, y)` predicts [eps, variance] (2C channels with learned sigma).

    Subclasses change the blocks through `_make_block` and `_run_blocks` and add training terms
    through `aux_losses`.
    """

    def __init__(
        self,
        *,
        image_size: int,
        channels: int,
        num_classes: int,
        patch_size: int,
        hidden: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        learn_sigma: bool = True,
        num_timesteps: int = 1000,
    ):
        super().__init__()
        self.image_size, self.channels, self.patch_size = image_size, channels, patch_size
        self.hidden, self.depth, self.heads, self.mlp_ratio = hidden, depth, heads, mlp_ratio
        self.num_classes, self.num_timesteps = num_classes, num_timesteps
        self.out_channels = 2 * channels if learn_sigma else channels
        self.grid = image_size // patch_size
        self.x_embedder = nn.Conv2d(channels, hidden, kernel_size=patch_size, stride=patch_size)
        self.t_embedder = TimestepEmbedder(hidden)
        self.y_embedder = LabelEmbedder(num_classes, hidden)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(hidden, self.grid)[None], persistent=False)
        self.blocks = nn.ModuleList(self._make_block(i) for i in range(depth))
        self.final_layer = FinalLayer(hidden, patch_size, self.out_channels)
        self._initialize_weights()

    @property
    def null_class(self) -> int:
        return self.y_embedder.null_class

    def _make_block(self, index: int) -> nn.Module:
        return AdaLNBranches(self.hidden, self.heads, self.mlp_ratio)

    def _initialize_weights(self) -> None:
        def basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        self.apply(basic)
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        nn.init.normal_(self.y_embedder.table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # adaLN-Zero: every block and the final layer start as the identity / zero output.
        for layer in [
            *(b.adaLN_modulation[-1] for b in self.blocks),
            self.final_layer.adaLN_modulation[-1],
            self.final_layer.linear,
        ]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, x: Tensor) -> Tensor:
        b, p, g, c = x.shape[0], self.patch_size, self.grid, self.out_channels
        x = x.view(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, g * p, g * p)

    def _run_blocks(self, x: Tensor, c: Tensor, t: Tensor, e_t: Tensor, aux: dict[str, Any] | None) -> Tensor:
        for block in self.blocks:
            x = block(x, c)
        return x

    def forward(self, x: Tensor, t: Tensor, y: Tensor, return_aux: bool = False):
        """x [B, C, H, W], t [B] integer timesteps, y [B] labels (null_class for unconditional)."""
        h = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed
        e_t = self.t_embedder(t)
        c = e_t + self.y_embedder(y)
        aux: dict[str, Any] | None = {} if return_aux else None
        h = self._run_blocks(h, c, t, e_t, aux)
        out = self.unpatchify(self.final_layer(h, c))
        return (out, aux) if return_aux else out

    def aux_losses(self, aux: dict[str, Any], t: Tensor) -> dict[str, tuple[float, Tensor]]:
        """Extra training terms as name -> (weight, unweighted value); none for plain DiT."""
        return {}
