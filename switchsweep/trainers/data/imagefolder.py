"""An ImageFolder (one sub-folder of images per class), read the way ADM and DiT read ImageNet."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from switchsweep.platform.errors import ConfigError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def scan(root: str | os.PathLike, setting: str = "data.root") -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, [(image path, class index)]), both sorted, so a folder always gives the same list.
    Images directly under `root` make one unnamed class (unconditional data such as FFHQ)."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise ConfigError(f"{setting}={root}: no such folder: give an ImageFolder (one folder of images per class)")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    folders = [(base / c, i) for i, c in enumerate(classes)] if classes else [(base, 0)]
    items = [
        (str(f), i)
        for folder, i in folders
        for f in sorted(folder.rglob("*"))
        if f.suffix.lower() in EXTENSIONS and f.is_file()
    ]
    if not items:
        raise ConfigError(
            f"{setting}={root}: no images ({', '.join(EXTENSIONS)}) in it or its class folders: "
            "give an ImageFolder (one folder of images per class)"
        )
    return classes or [""], items


def centre_crop(image: Image.Image, size: int) -> np.ndarray:
    """ADM's centre crop: halve with box filtering while the short side is at least 2x `size`, resize
    the short side to `size` (bicubic), then take the centre `size` x `size` pixels. [size, size, 3] uint8."""
    image = image.convert("RGB")
    while min(image.size) >= 2 * size:
        image = image.resize((image.width // 2, image.height // 2), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), resample=Image.BICUBIC)
    array = np.asarray(image)
    top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
    return array[top : top + size, left : left + size]


def read_image(path: str, size: int) -> np.ndarray:
    """One image, centre-cropped to `size`; an unreadable file is one line naming it."""
    try:
        with Image.open(path) as image:
            return centre_crop(image, size)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ConfigError(
            f"data.root: {path} is not a readable image ({type(e).__name__}): remove or replace it"
        ) from None


def to_unit_range(images: np.ndarray) -> np.ndarray:
    """[n, H, W, 3] uint8 -> [n, 3, H, W] float32 in [-1, 1]."""
    return images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
