"""Training-step time of Switch-DiT vs DiT (and DTR) of the same size, measured side by side in one run.

    python -m benchmarks.step_time [--size tiny] [--patch-size 4] [--batch 64] [--steps 10] [--rounds 5]
    python -m benchmarks.step_time --size S --patch-size 2 --image-size 32 --channels 4 --num-classes 1000 --batch 8
    python -m benchmarks.step_time --floor  # and the least Switch-DiT step this machine allows

Rounds interleave the models so that machine noise hits them alike; the figure to read is the
ratio of medians against DiT. A shape other than the digits' trains on random latents written as a
prepared folder (what `switchsweep prepare` makes), so the step is the real latent-data step.

`--floor` bounds Switch-DiT's step from below, in the same rounds: its step with every expert layer
as the identity (routing, prior loss, integration, optimizer and EMA all still run), plus the least
work the expert layers' maths needs, timed alone with hot caches: per block and sample, h = z W
(the sample's mixed weight, built for free), y = z + z h, and the backward's dz and dW products and
elementwise terms. No faster expert layer can take the step below it on this machine's GEMMs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from benchmarks.args import positive_int
from switchsweep.config.schema import MODEL_SIZES, PATCH_SIZES, Config, validate_model
from switchsweep.kernels.reference import expert_layer_least_ops
from switchsweep.models import switch_dit
from switchsweep.platform.errors import ConfigError, TrainingError
from switchsweep.trainers.data.latents import FORMAT, write_manifest, write_shard
from switchsweep.trainers.loop.trainer import Trainer, resolve_device

MODELS = ("dit", "dtr", "switch_dit")
EXPERTS_OFF, LEAST = "experts off", "experts' least work"


def _identity_experts(z, weight, bias, expert_idx, gates):
    return z


def timed(name: str, trainer: Trainer, steps: int) -> float:
    """time_steps; the `EXPERTS_OFF` trainer's Switch-DiT runs every expert layer as the identity."""
    if name != EXPERTS_OFF:
        return time_steps(trainer, steps)
    with mock.patch.object(switch_dit, "sample_routed_linear", _identity_experts):
        return time_steps(trainer, steps)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(trainer: Trainer, steps: int) -> float:
    _sync(trainer.device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    _sync(trainer.device)
    return (time.perf_counter() - start) / steps


def least_expert_work(batch: int, tokens: int, dim: int, depth: int, reps: int) -> float:
    """Seconds per step of the expert layers' irreducible work (see the module doc), on the CPU's
    hot caches: three [L, D] x [D, D] products per sample (forward, dz, dW) and three elementwise
    passes per block, over `depth` blocks."""
    g = torch.Generator().manual_seed(0)
    z, dy = (torch.randn(batch, tokens, dim, generator=g) for _ in range(2))
    w = torch.randn(batch, dim, dim, generator=g) / dim**0.5
    w_t = w.transpose(1, 2).contiguous()  # the faster layout for dz, also for free
    for _ in range(3):
        expert_layer_least_ops(z, w, w_t, dy)
    start = time.perf_counter()
    for _ in range(reps * depth):
        expert_layer_least_ops(z, w, w_t, dy)
    return (time.perf_counter() - start) / reps


def random_latents(out: Path, channels: int, size: int, num_classes: int, count: int = 512) -> Path:
    """A prepared-latents folder of `count` random latents with random labels (training speed only)."""
    rng = np.random.default_rng(0)
    entry = write_shard(
        out,
        0,
        rng.standard_normal((count, channels, size, size)).astype(np.float16),
        rng.integers(0, num_classes, count),
        num_classes,
    )
    plan = {
        "format": FORMAT,
        "root": "random",
        "classes": [str(c) for c in range(num_classes)],
        "resolution": size * 8,
        "flip": False,
        "seed": 0,
        "latent_shape": [channels, size, size],
        "scale_factor": 1.0,
        "dtype": "float16",
        "vae": {"path": "", "config_sha256": ""},
    }
    write_manifest(out, plan, [entry])
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny", choices=tuple(MODEL_SIZES))
    ap.add_argument(
        "--patch-size",
        type=positive_int,
        choices=PATCH_SIZES,
        default=Config().model.patch_size,
        help="default: the digits'",
    )
    ap.add_argument("--batch", type=positive_int, default=64)
    ap.add_argument("--steps", type=positive_int, default=10, help="steps per timed round")
    ap.add_argument("--rounds", type=positive_int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--image-size", type=positive_int, help="default: the digits (8); 32 for 256 px SD-VAE latents")
    ap.add_argument("--channels", type=positive_int, help="default: the digits (1); 4 for latents")
    ap.add_argument("--num-classes", type=positive_int, help="default: the digits (10); 1000 for ImageNet")
    ap.add_argument("--floor", action="store_true", help="also time the least Switch-DiT step (module doc)")
    args = ap.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except TrainingError as e:
        ap.error(str(e).replace("train.device", "--device"))
    if args.floor and device.type != "cpu":  # so that `make bench` runs as it is on a GPU machine
        print(f"--floor skipped: it bounds the step on the CPU, this run is on {device} (add --device cpu)")
        args.floor = False

    digits = Config().data
    shape = {
        key: getattr(digits, key) if getattr(args, key) is None else getattr(args, key)
        for key in ("channels", "image_size", "num_classes")
    }
    model = Config().model
    model.size, model.patch_size = args.size, args.patch_size
    try:  # the patch must divide the image, before any data is written
        validate_model(model, shape["image_size"])
    except ConfigError as e:
        ap.error(str(e))
    folder = None
    if any(shape[key] != getattr(digits, key) for key in shape):
        folder = random_latents(
            Path(tempfile.mkdtemp(prefix="step-time-")), shape["channels"], shape["image_size"], shape["num_classes"]
        )
    try:
        _run(args, device, shape, folder)
    finally:
        if folder is not None:
            shutil.rmtree(folder)


def build_trainers(
    names: list[str],
    size: str,
    batch: int,
    device: str,
    shape: dict[str, int],
    folder: Path | None,
    patch_size: int,
) -> dict[str, Trainer]:
    """One warmed-up Trainer per name (a model name, or EXPERTS_OFF), on `folder`'s latents if given."""
    trainers = {}
    for name in names:
        cfg = Config()
        cfg.model.name, cfg.model.size = ("switch_dit" if name == EXPERTS_OFF else name), size
        cfg.model.patch_size = patch_size
        cfg.data.batch_size, cfg.train.device = batch, device
        if folder is not None:
            cfg.data.name, cfg.data.path = "latents", str(folder)
            for key, value in shape.items():
                setattr(cfg.data, key, value)
        trainers[name] = Trainer(cfg)
        trainers[name].model.train()
        timed(name, trainers[name], 3)  # warm-up
    return trainers


def interleaved(trainers: dict[str, Trainer], steps: int, rounds: int, floor: bool = False) -> dict[str, list[float]]:
    """Seconds per step of every trainer, `rounds` times in turn (with floor, LEAST's too)."""
    samples: dict[str, list[float]] = {n: [] for n in [*trainers, *([LEAST] if floor else [])]}
    for _ in range(rounds):
        for name, tr in trainers.items():
            samples[name].append(timed(name, tr, steps))
        if floor:
            cfg = trainers["switch_dit"].cfg
            depth, hidden, _ = MODEL_SIZES[cfg.model.size]
            tokens = (cfg.data.image_size // cfg.model.patch_size) ** 2
            samples[LEAST].append(least_expert_work(cfg.data.batch_size, tokens, hidden, depth, steps))
    return samples


def _run(args: argparse.Namespace, device: torch.device, shape: dict[str, int], folder: Path | None) -> None:
    names = [*MODELS, EXPERTS_OFF] if args.floor else list(MODELS)
    trainers = build_trainers(names, args.size, args.batch, args.device, shape, folder, args.patch_size)
    samples = interleaved(trainers, args.steps, args.rounds, args.floor)
    base = statistics.median(samples["dit"])
    d = trainers["dit"].cfg.data
    print(
        f"step time, size={args.size} patch={args.patch_size} batch={args.batch} "
        f"data={d.channels}x{d.image_size}x{d.image_size} classes={d.num_classes} device={device} "
        f"threads={torch.get_num_threads()}"
    )
    print(f"{'model':<20}{'params':>12}{'median ms/step':>16}{'vs DiT':>9}")
    for name, tr in trainers.items():
        med = statistics.median(samples[name])
        params = sum(p.numel() for p in tr.model.parameters())
        print(f"{name:<20}{params:>12,}{med * 1e3:>16.2f}{med / base:>8.2f}x")
    if args.floor:
        off, least = statistics.median(samples[EXPERTS_OFF]), statistics.median(samples[LEAST])
        print(f"{LEAST:<20}{'':>12}{least * 1e3:>16.2f}{least / base:>8.2f}x")
        print(f"floor: {EXPERTS_OFF} + {LEAST} = {(off + least) * 1e3:.2f} ms/step, {(off + least) / base:.3f}x DiT")


if __name__ == "__main__":
    main()
