"""Feature networks for the metrics, behind one interface, and the cached real-data reference features.

- `digits`: a small CNN trained on scikit-learn's digits, deterministically, once; cached on disk.
- `inception`: FID InceptionV3 with weights from a local file (see `inception.py`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from switchsweep.config.schema import DataConfig, EvalConfig
from switchsweep.platform.checkpoint import load_from_storage, save_to_storage
from switchsweep.platform.errors import ConfigError
from switchsweep.platform.storage import is_uri, read_bytes, storage_join
from switchsweep.trainers.data.batches import load_dataset, load_digits_tensors
from switchsweep.trainers.evaluation.feature_net import FeatureNet

log = logging.getLogger(__name__)

DIGITS_CLASSIFIER_VERSION = 2
DIGITS_HELD_OUT = 0.2


class DigitsClassifier(FeatureNet):
    """Two 3x3 convolutions, a 2x2 pool and a 128-d feature layer; features are that layer divided by
    `feature_scale`, the real digits' root-mean-square feature value, so that KID's cubic kernel sees
    x.y/d of order 1 as with Inception's pool features (unscaled, the kernel's values ran to 10^4 and
    KID's differences drowned in them)."""

    name = f"digits-cnn-v{DIGITS_CLASSIFIER_VERSION}"
    classifies = "digits"

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.register_buffer("feature_scale", torch.ones(()))
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 4 * 4, 128)
        self.head = nn.Linear(128, num_classes)

    def logits_and_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        feats = F.relu(self.fc(h.flatten(1)))
        return self.head(feats), feats

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        logits, feats = self.logits_and_features(images)
        return feats / self.feature_scale, logits.softmax(-1)


def digits_split(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A fixed train / held-out split of the digits: (train images, train labels, test images, test labels)."""
    images, labels = load_digits_tensors()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(images) * DIGITS_HELD_OUT)
    test, train = order[:n_test], order[n_test:]
    return images[train], labels[train], images[test], labels[test]


def train_digits_classifier(seed: int = 0, epochs: int = 30) -> tuple[DigitsClassifier, float]:
    """Train on the fixed split with a fixed seed; returns the model and its held-out accuracy."""
    x, y, x_test, y_test = digits_split(seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DigitsClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            # one-pixel random shifts: cheap augmentation that keeps 8x8 digits readable
            dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
            batch = torch.roll(x[idx], shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model.logits_and_features(batch)[0], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model.logits_and_features(x_test)[0].argmax(1) == y_test).float().mean().item()
        model.feature_scale.copy_(model.logits_and_features(x)[1].square().mean().sqrt())
    return model, accuracy


def load_or_train_digits_classifier(cache_dir: str | os.PathLike) -> tuple[DigitsClassifier, float]:
    """The cached classifier, or a freshly trained one written to the cache (also when the file is corrupt).
    `cache_dir`: a local folder or a storage URI (a cluster's nodes share one in the bucket)."""
    path = storage_join(str(cache_dir), f"{DigitsClassifier.name}.pt")
    try:
        payload = load_from_storage(path)
        if payload is not None:
            model = DigitsClassifier()
            model.load_state_dict(payload["state_dict"])
            return model.eval(), float(payload["held_out_accuracy"])
    except Exception as e:  # any unreadable cache is rebuilt, never fatal
        log.warning("cached digits classifier %s is unreadable (%s); retraining it", path, type(e).__name__)
    model, accuracy = train_digits_classifier()
    save_to_storage({"state_dict": model.state_dict(), "held_out_accuracy": accuracy}, path)
    return model, accuracy


def build_feature_net(cfg: EvalConfig, device: torch.device) -> FeatureNet:
    if cfg.feature_net == "digits":
        net, _ = load_or_train_digits_classifier(cfg.cache_dir)
    elif cfg.feature_net == "inception":
        from switchsweep.trainers.evaluation.inception import load_fid_inception

        net = load_fid_inception(cfg.inception_weights)
    else:
        raise ConfigError(f"eval.feature_net={cfg.feature_net!r} is not one of digits, inception")
    return net.to(device).eval()


def reference_features(data: DataConfig, net: FeatureNet, cache_dir: str | os.PathLike) -> Tensor | None:
    """Features of the real images, computed once per (dataset, feature network) and cached: every
    training image for digits; for latents the images of data.ref_batch (its arr_0; None when it has
    only mu and sigma), else of the ImageFolder the latents were made from (data.root overrides it)."""
    if data.name == "latents":
        from switchsweep.trainers.data.latents import read_manifest

        manifest = read_manifest(data.path)
        source = reference_source(data, manifest)
        source = source if is_uri(source) else str(Path(source).expanduser().resolve())
        key = hashlib.sha256(f"{source}|{manifest['resolution']}".encode()).hexdigest()[:16]
        name = f"ref-latents-{key}-{net.name}.pt"
    else:
        name = f"ref-{data.name}-{data.image_size}-{net.name}.pt"
    path = storage_join(str(cache_dir), name)
    try:
        cached = load_from_storage(path)
        if cached is not None:
            return cached["features"]
    except Exception as e:
        log.warning("cached reference features %s are unreadable (%s); recomputing", path, type(e).__name__)
    if data.name == "latents":
        feats = _real_image_features(data, manifest, net)
        if feats is None:
            return None
    else:
        images, _ = load_dataset(data)
        feats, _ = net.embed(images)
    save_to_storage({"features": feats}, path)
    return feats


def reference_source(data: DataConfig, manifest: dict) -> str:
    """Where the real images of a latents dataset are read from: data.ref_batch, else data.root, else the
    ImageFolder its manifest names."""
    return data.ref_batch or data.root or manifest["root"]


def _real_image_features(data: DataConfig, manifest: dict, net: FeatureNet, chunk: int = 256) -> Tensor | None:
    """Features of the reference batch's images, or of the ImageFolder's, read and embedded a chunk at a time."""
    from switchsweep.trainers.data.imagefolder import read_image, scan, to_unit_range

    if data.ref_batch:
        batch = reference_batch(data.ref_batch)
        if "arr_0" not in batch:
            return None
        images = batch["arr_0"]
        chunks = (images[i : i + chunk] for i in range(0, len(images), chunk))
    else:
        _, items = scan(
            data.root or manifest["root"], "data.root" if data.root else "the manifest's root (set data.root)"
        )
        paths = [p for p, _ in items]
        chunks = (
            np.stack([read_image(p, manifest["resolution"]) for p in paths[i : i + chunk]])
            for i in range(0, len(paths), chunk)
        )
    return torch.cat([net.embed(torch.from_numpy(to_unit_range(c)))[0] for c in chunks])


def reference_batch(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """An ADM-style reference batch .npz (a local file or a URI such as s3://bucket/ref.npz): `mu` and
    `sigma` of its Inception pool features (for FID), and `arr_0`, its images [N, H, W, 3] uint8, where present."""
    try:
        raw = read_bytes(str(path))
        if raw is None:
            raise FileNotFoundError(path)
        with np.load(io.BytesIO(raw)) as npz:
            batch = {k: npz[k] for k in ("mu", "sigma", "arr_0") if k in npz.files}
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"data.ref_batch={path}: not a readable .npz ({type(e).__name__}): give an ADM reference batch"
        ) from None
    if "arr_0" not in batch and not {"mu", "sigma"} <= batch.keys():
        raise ConfigError(
            f"data.ref_batch={path}: holds neither arr_0 images nor mu and sigma: give an ADM reference batch"
        )
    if "arr_0" in batch and (
        batch["arr_0"].ndim != 4 or batch["arr_0"].shape[-1] != 3 or batch["arr_0"].dtype != np.uint8
    ):
        raise ConfigError(
            f"data.ref_batch={path}: arr_0 is {batch['arr_0'].dtype} {batch['arr_0'].shape}, "
            "not [N, H, W, 3] uint8 images: give an ADM reference batch"
        )
    return batch


def reference_statistics(data: DataConfig) -> tuple[np.ndarray, np.ndarray] | None:
    """The reference batch's own FID statistics (mu, sigma), when it has them."""
    if data.name != "latents" or not data.ref_batch:
        return None
    batch = reference_batch(data.ref_batch)
    return (batch["mu"], batch["sigma"]) if "mu" in batch and "sigma" in batch else None
