"""Sample with a model in batches and score the samples against the real data's reference features."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from switchsweep.config.schema import Config, DataConfig, EvalConfig
from switchsweep.models import build_model
from switchsweep.platform.checkpoint import load_checkpoint
from switchsweep.trainers.data.latents import latent_decoder
from switchsweep.trainers.diffusion.gaussian import GaussianDiffusion
from switchsweep.trainers.diffusion.sampling import sample_images
from switchsweep.trainers.evaluation.features import (
    FeatureNet,
    build_feature_net,
    reference_features,
    reference_statistics,
)
from switchsweep.trainers.evaluation.metrics import all_metrics
from switchsweep.trainers.loop.trainer import resolve_device


def generate_and_embed(
    model: nn.Module,
    diffusion: GaussianDiffusion,
    net: FeatureNet,
    cfg: EvalConfig,
    num_classes: int,
    device: torch.device,
    progress: bool = False,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`cfg.num_samples` samples with uniformly random labels (ADM protocol), embedded batch by batch
    (latents decoded to images by `decode` first): (features, class probabilities, the labels drawn for)."""
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    labels = torch.randint(0, num_classes, (cfg.num_samples,), generator=gen, device=device)
    feats, probs = [], []
    for batch in tqdm(labels.split(cfg.batch_size), desc="evaluate", disable=not progress):
        images = sample_images(
            model,
            diffusion,
            batch,
            sampler=cfg.sampler,
            steps=cfg.steps,
            cfg_scale=cfg.cfg_scale,
            eta=cfg.ddim_eta,
            generator=gen,
        )
        f, p = net.embed(decode(images) if decode else images)
        feats.append(f)
        probs.append(p)
    return torch.cat(feats), torch.cat(probs), labels.cpu()


def evaluate_model(
    model: nn.Module,
    diffusion: GaussianDiffusion,
    data: DataConfig,
    cfg: EvalConfig,
    device: torch.device,
    progress: bool = False,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """All metrics of `model`'s samples, and the values their evaluation noise is read from
    (`metrics.all_metrics`); the model is put in eval mode. Class accuracy is among them where the
    feature network classifies the dataset's own classes."""
    model.eval()
    net = build_feature_net(cfg, device)
    real = reference_features(data, net, cfg.cache_dir)
    decode = latent_decoder(data, device) if data.name == "latents" else None
    start = time.perf_counter()
    fake, probs, labels = generate_and_embed(model, diffusion, net, cfg, data.num_classes, device, progress, decode)
    elapsed = time.perf_counter() - start
    metrics, noise = all_metrics(
        real,
        fake,
        probs,
        kid_subset_size=cfg.kid_subset_size,
        kid_subsets=cfg.kid_subsets,
        pr_k=cfg.pr_k,
        seed=cfg.seed,
        real_statistics=reference_statistics(data),
        fake_labels=labels if net.classifies == data.name else None,
    )
    metrics["eval_images_per_sec"] = cfg.num_samples / elapsed
    return metrics, noise


def evaluate_checkpoint(cfg: Config, progress: bool = True) -> dict[str, Any]:
    """Score the EMA weights of `cfg.checkpoint`; writes the result as JSON to `cfg.eval.out`
    (default: eval.json beside the checkpoint) and returns it."""
    device = resolve_device(cfg.eval.device)
    payload = load_checkpoint(cfg.checkpoint, setting="checkpoint")
    diffusion = GaussianDiffusion.from_config(cfg.diffusion.schedule, cfg.diffusion.num_timesteps)
    model = build_model(cfg.model, cfg.data, cfg.diffusion.num_timesteps).to(device)
    model.load_state_dict(payload["ema"]["model"])
    metrics, _ = evaluate_model(model, diffusion, cfg.data, cfg.eval, device, progress)
    e = cfg.eval
    result = {
        "checkpoint": str(cfg.checkpoint),
        "step": int(payload["step"]),
        "model": cfg.model.name,
        "num_samples": e.num_samples,
        "sampler": e.sampler,
        "steps": e.steps,
        "cfg_scale": e.cfg_scale,
        "feature_net": e.feature_net,
        "metrics": metrics,
    }
    out = Path(e.out) if e.out else Path(cfg.checkpoint).parent / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    result["out"] = str(out)
    return result
