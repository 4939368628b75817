"""Training data: scikit-learn's bundled digits, and batches as a pure function of the step."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import DistributedSampler

from switchsweep.platform.config import DataConfig
from switchsweep.platform.errors import ConfigError


def load_digits_tensors() -> tuple[Tensor, Tensor]:
    """The 1,797 8x8 digits as float images in [-1, 1], [N, 1, 8, 8], and their labels [N]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div(16.0).mul(2.0).sub(1.0).unsqueeze(1)
    return images, torch.from_numpy(digits.target).long()


def load_dataset(cfg: DataConfig) -> tuple[Tensor, Tensor]:
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
    """Batch `step` of this rank, from DistributedSampler's per-epoch shuffle of (seed, epoch).

    Being a function of the step alone, a resumed run sees exactly the batches the uninterrupted
    one would have seen, and ranks see disjoint shards.
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.sampler = DistributedSampler(
            range(len(images)), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.batches_per_epoch = len(self.sampler) // batch_size
        if self.batches_per_epoch == 0:
            raise ConfigError(
                f"data.batch_size={batch_size} exceeds the {len(self.sampler)} images per worker: lower data.batch_size"
            )
        self._epoch = -1
        self._order = torch.empty(0, dtype=torch.long)

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        epoch, i = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._order = torch.tensor(list(self.sampler), dtype=torch.long)
            self._epoch = epoch
        idx = self._order[i * self.batch_size : (i + 1) * self.batch_size]
        return self.images[idx], self.labels[idx]
