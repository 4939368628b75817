"""Small real inputs for the latents path, made here: an ImageFolder of drawn PNGs, a randomly
initialised diffusers AutoencoderKL saved as a local folder, and FID Inception weights."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLASSES = ("cat", "dog", "fox")


def image_folder(root: Path, per_class: int = 10, seed: int = 0) -> Path:
    """Per class, `per_class` PNGs of random sizes: a coloured disc on noise (each class its own colour)."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            h, w = (int(v) for v in rng.integers(18, 48, 2))
            yy, xx = np.mgrid[:h, :w]
            image = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
            image[(yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2, c] = 255
            Image.fromarray(image).save(root / name / f"{j:03d}.png")
    return root


def tiny_vae(folder: Path, seed: int = 0) -> Path:
    """A 2-level AutoencoderKL (downsampling 2, 4 latent channels) with random weights."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    ).save_pretrained(folder)
    return folder


def inception_weights(path: Path) -> Path:
    from switchsweep.trainers.evaluation.inception import FIDInceptionV3

    torch.manual_seed(0)
    torch.save(FIDInceptionV3().state_dict(), path)
    return path
