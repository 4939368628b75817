"""The interface every feature network of the metrics implements (the digits classifier, InceptionV3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FeatureNet(nn.Module):
    """Maps images in [-1, 1] to (features [N, d], class probabilities [N, classes])."""

    name: str = "feature-net"  # part of the reference-statistics cache key
    classifies: str | None = None  # the dataset (`data.name`) whose classes its probabilities are over, if any

    @torch.no_grad()
    def embed(self, images: Tensor, batch_size: int = 256) -> tuple[Tensor, Tensor]:
        """Batched, no-grad features and probabilities, returned on the CPU."""
        device = next(self.parameters()).device
        feats, probs = [], []
        for start in range(0, len(images), batch_size):
            f, p = self(images[start : start + batch_size].to(device))
            feats.append(f.float().cpu())
            probs.append(p.float().cpu())
        return torch.cat(feats), torch.cat(probs)
