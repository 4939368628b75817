"""Image grids as PNG files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor


def save_image_grid(images: Tensor, path: str | Path, nrow: int | None = None, scale: int = 4, pad: int = 1) -> Path:
    """Save images in [-1, 1], [N, C, H, W] (C = 1 or 3), as one PNG grid, upscaled `scale` times."""
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    arr = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y0, x0 = pad + r * (h + pad), pad + col * (w + pad)
        grid[y0 : y0 + h, x0 : x0 + w] = arr[i].transpose(1, 2, 0)
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
