"""Training data (scikit-learn's bundled digits, or prepared VAE latents), and batches as a pure function of
the step."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from switchsweep.config.schema import DataConfig
from switchsweep.platform.errors import ConfigError


def load_digits_tensors() -> tuple[Tensor, Tensor]:
    """The 1,797 8x8 digits as float images in [-1, 1], [N, 1, 8, 8], and their labels [N].

    Read from the CSV file scikit-learn ships (pixels 0-16, then the label, per row) without importing
    scikit-learn, which costs a second in every fresh process (each sweep trial's workers)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise ConfigError("data.name=digits needs scikit-learn, which ships the digits: pip install scikit-learn")
    with gzip.open(Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz", "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    images = torch.from_numpy(table[:, :-1]).div(16.0).mul(2.0).sub(1.0).view(-1, 1, 8, 8)
    return images, torch.from_numpy(table[:, -1]).long()


def load_dataset(cfg: DataConfig) -> tuple[Tensor, Tensor]:
    """(images [N, C, H, W], labels [N]); prepared latents come memory-mapped, read as batches ask."""
    if cfg.name == "latents":
        from switchsweep.trainers.data.latents import load_latents

        return load_latents(cfg)  # checked against its manifest there
    if cfg.name == "digits":
        images, labels = load_digits_tensors()
    else:
        raise ConfigError(f"data.name={cfg.name!r} is not a known dataset: use digits")
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    if tuple(images.shape[1:]) != shape or int(labels.max()) >= cfg.num_classes:
        raise ConfigError(
            f"data: {cfg.name} holds {tuple(images.shape[1:])} images with {int(labels.max()) + 1} classes, "
            f"the config says {shape} and {cfg.num_classes}: fix data.channels/image_size/num_classes"
        )
    return images, labels


class BatchStream:
    """Rank `rank`'s contiguous slice of global batch `step`, from a per-epoch shuffle of (seed, epoch).

    Being a function of the step alone, a resumed run sees exactly the batches the uninterrupted one
    would have seen; and the global batch does not depend on the number of workers, so W workers
    of batch B/W train on exactly the batches one worker of batch B would.
    """

    def __init__(
        self, images: Tensor, labels: Tensor, global_batch: int, seed: int, rank: int = 0, world_size: int = 1
    ):
        self.images, self.labels, self.seed = images, labels, seed
        self.global_batch, self.local = global_batch, global_batch // world_size
        self.offset = rank * self.local
        self.batches_per_epoch = len(images) // global_batch
        if self.batches_per_epoch == 0:
            raise ConfigError(f"data.batch_size={global_batch} exceeds the {len(images)} images: lower data.batch_size")
        self._epoch = -1
        self._order = torch.empty(0, dtype=torch.long)

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        epoch, i = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            self._order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(self.seed + epoch))
            self._epoch = epoch
        start = i * self.global_batch + self.offset
        idx = self._order[start : start + self.local]
        return self.images[idx], self.labels[idx]
