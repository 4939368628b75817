"""The training loop: one function of (config, hooks). It runs standalone and, unchanged, inside a
Ray Train worker, where the hooks report metrics and checkpoints to the sweep."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from switchsweep.config.schema import Config
from switchsweep.models import build_model
from switchsweep.models.flops import forward_gflops, parameter_count
from switchsweep.models.layers import AdaLNBranches
from switchsweep.platform.checkpoint import load_checkpoint, save_checkpoint
from switchsweep.platform.errors import CheckpointError, ConfigError, TrainingError
from switchsweep.trainers.data.batches import BatchStream, load_dataset
from switchsweep.trainers.data.images import save_image_grid
from switchsweep.trainers.data.latents import latent_decoder
from switchsweep.trainers.diffusion.gaussian import GaussianDiffusion
from switchsweep.trainers.diffusion.sampling import sample_images
from switchsweep.trainers.diffusion.weighting import LossWeighting
from switchsweep.trainers.loop.ema import EMA

GRID_CLASSES = 16  # sample grids show at most this many classes (ImageNet has 1,000)


class TrainHooks:
    """Subclass to report elsewhere (MLflow, Ray Train). `on_start` (model size and compute), `on_log`
    and `on_checkpoint` run on rank 0 only; `on_report` runs on every rank every `report_every` steps
    and at the last step (0: never), so it may hold collectives such as `ray.train.report`."""

    report_every: int = 0
    own_checkpoints: bool = True  # False: the hooks keep checkpoints (on_report), the loop writes none to out_dir

    def on_start(self, stats: dict[str, float]) -> None:
        pass

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def on_checkpoint(self, step: int, path: Path) -> None:
        pass

    def on_report(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        pass


@dataclass
class TrainResult:
    step: int
    losses: list[float] = field(default_factory=list)  # total loss of every step run in this call
    checkpoint: Path | None = None
    samples: Path | None = None
    last_metrics: dict[str, float] = field(default_factory=dict)
    model_stats: dict[str, float] = field(default_factory=dict)  # params, GFLOPs per image forward


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device=cuda but no CUDA device is visible: use train.device=auto or cpu")
    return torch.device(name)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Trainer:
    """State of one run: model, EMA, optimizer, step and RNG, with checkpoint save/restore."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.device = resolve_device(cfg.train.device)
        if cfg.train.compile and self.device.type == "cpu":
            _check_cpp_compiler()
        # Process-wide: cuBLAS and the MoE kernels (kernels.ops.precision) both read it.
        torch.set_float32_matmul_precision("highest" if cfg.train.precision == "fp32" else "high")
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16")
        self.rank, self.world_size = _world()
        # Data first: its checks are cheap and must fail before any model is built.
        if cfg.data.batch_size % self.world_size:
            raise TrainingError(
                f"data.batch_size={cfg.data.batch_size} is not divisible by {self.world_size} workers: make it a "
                "multiple"
            )
        images, labels = load_dataset(cfg.data)
        self.stream = BatchStream(images, labels, cfg.data.batch_size, cfg.train.seed, self.rank, self.world_size)
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        self.diffusion = GaussianDiffusion.from_config(cfg.diffusion.schedule, cfg.diffusion.num_timesteps)
        self.model = build_model(cfg.model, cfg.data, cfg.diffusion.num_timesteps, seed=cfg.train.seed).to(self.device)
        self.ema = EMA(self.model, cfg.train.ema_decay)  # before compiling: samples and evaluations run eagerly
        if cfg.train.compile:
            compile_blocks(self.model)
        self.weighting = LossWeighting(cfg.train, self.diffusion.alphas_cumprod, cfg.diffusion.num_timesteps).to(
            self.device
        )
        groups = [{"params": list(self.model.parameters())}]
        if self.weighting.uw is not None:  # the UW log-variances learn at their own rate
            groups.append({"params": list(self.weighting.parameters()), "lr": cfg.train.uw_lr, "weight_decay": 0.0})
        # Fused: one kernel for all parameters (on a CPU the default loops over them, one kernel each).
        self.optimizer = torch.optim.AdamW(
            groups, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=self.device.type in ("cpu", "cuda")
        )
        self.net: torch.nn.Module = self.model
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        # The same stream on every rank: each draws the global batch's noise and keeps its own slice.
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.train.seed * 1000)
        self.step = 0

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "weighting": self.weighting.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": {"generator": self.generator.get_state(), "torch": torch.get_rng_state()},
            "config": dataclasses.asdict(self.cfg),
        }

    def restore(self, path: str | Path) -> None:
        payload = load_checkpoint(path)
        try:
            self.model.load_state_dict(payload["model"])
            self.ema.load_state_dict(payload["ema"])
            self.weighting.load_state_dict(payload.get("weighting", {}))
            self.optimizer.load_state_dict(payload["optimizer"])
            self.generator.set_state(payload["rng"]["generator"])
            torch.set_rng_state(payload["rng"]["torch"])
        except (RuntimeError, KeyError, ValueError) as e:
            first = str(e).strip().splitlines()[0][:160]
            raise CheckpointError(
                f"train.resume={path}: checkpoint does not fit this model ({first}): resume with the config it was "
                "written with"
            ) from e
        self.step = int(payload["step"])

    def save(self, path: Path) -> Path:
        return save_checkpoint(self.state(), path)

    # -- one step ----------------------------------------------------------------------------
    def train_step(self) -> dict[str, torch.Tensor]:
        cfg, dev = self.cfg, self.device
        x0, y = (v.to(dev, non_blocking=True) for v in self.stream.batch(self.step))
        b, mine = cfg.data.batch_size, slice(self.stream.offset, self.stream.offset + x0.shape[0])
        t = self.weighting.sample_timesteps(b, self.diffusion.num_timesteps, self.generator, dev)[mine]
        noise = torch.randn((b, *x0.shape[1:]), generator=self.generator, device=dev)[mine]
        drop = (torch.rand(b, generator=self.generator, device=dev) < cfg.train.class_dropout)[mine]
        y = torch.where(drop, torch.full_like(y, self.model.null_class), y)
        xt = self.diffusion.q_sample(x0, t, noise)
        with self.autocast:
            out, aux = self.net(xt, t, y, return_aux=True)
        terms = self.diffusion.training_losses(out.float(), x0, xt, t, noise)
        loss_noise = self.weighting(terms, t)
        logs = {"loss_noise": loss_noise.detach(), "loss_mse": terms["mse"].mean().detach()}
        if "vb" in terms:
            logs["loss_vb"] = terms["vb"].mean().detach()
        loss = loss_noise
        for name, (weight, value) in self.model.aux_losses(aux, t).items():
            loss = loss + weight * value
            logs[f"loss_{name}"] = value.detach()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.weighting.uw is not None and self.world_size > 1:  # outside DDP: average its grads by hand
            for p in self.weighting.parameters():
                dist.all_reduce(p.grad)  # gloo has no AVG
                p.grad /= self.world_size
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
        self.optimizer.step()
        self.ema.update(self.model)
        self.step += 1
        logs["loss"] = loss.detach()
        return logs

    # -- samples -----------------------------------------------------------------------------
    def sample_grid(self, path: Path, per_class: int | None = None) -> Path:
        """EMA samples, one column per class (up to GRID_CLASSES of them, spread over all) and `per_class`
        rows (default: `sample.per_class`); latents are decoded to images first."""
        s, n_cls = self.cfg.sample, self.cfg.data.num_classes
        classes = torch.linspace(0, n_cls - 1, min(n_cls, GRID_CLASSES)).round().long().to(self.device)
        labels = classes.repeat(s.per_class if per_class is None else per_class)
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.train.seed)
        images = sample_images(
            self.ema.model,
            self.diffusion,
            labels,
            sampler=s.sampler,
            steps=s.steps,
            cfg_scale=s.cfg_scale,
            eta=s.ddim_eta,
            generator=gen,
        )
        if self.cfg.data.name == "latents":
            images = latent_decoder(self.cfg.data, self.device)(images)
        return save_image_grid(images, path, nrow=len(classes), scale=max(1, 32 // images.shape[-1]))


def _check_cpp_compiler() -> None:
    """torch.compile on a CPU builds C++ (Inductor's compiler: $CXX, else g++): say so before any work,
    not in a traceback at the first step."""
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise ConfigError(
            f"train.compile=true on a CPU needs a C++ compiler and {cxx} is not on PATH: "
            "install g++ (or set CXX) or set train.compile=false"
        )


def compile_blocks(model: torch.nn.Module) -> int:
    """torch.compile each compilable transformer block in place (state-dict keys unchanged) and return
    how many. The blocks share their code, so one graph serves them all; the rest of the step
    (embeddings, routing, the prior's matching, the losses) stays eager, where host work would break a
    graph. A block fed batches of changing size (multi-experts' timestep intervals) recompiles once
    with dynamic shapes."""
    blocks = [m for m in model.modules() if isinstance(m, AdaLNBranches) and m.compilable]
    for block in blocks:
        block.compile()
    return len(blocks)


def _check_finite(losses: list[torch.Tensor], first_step: int, out_dir: Path) -> list[float]:
    values = torch.stack(losses).tolist()
    for i, v in enumerate(values):
        if not math.isfinite(v):
            last = out_dir / "ckpt.pt"
            kept = f"last good checkpoint kept at {last}" if last.exists() else "no checkpoint was written yet"
            raise TrainingError(
                f"non-finite loss ({v}) at step {first_step + i + 1}; {kept}: lower train.lr or set train.grad_clip"
            )
    return values


def train(cfg: Config, hooks: TrainHooks | None = None) -> TrainResult:
    """Train `cfg.train.steps` steps in total (resuming from `cfg.train.resume` if set)."""
    hooks = hooks or TrainHooks()
    trainer = Trainer(cfg)
    if cfg.train.resume:
        trainer.restore(cfg.train.resume)
    out_dir = Path(cfg.train.out_dir)
    ckpt_path = out_dir / "ckpt.pt"
    result = TrainResult(step=trainer.step)
    main = trainer.rank == 0
    if trainer.step >= cfg.train.steps:
        raise TrainingError(
            f"train.steps={cfg.train.steps} is not beyond the checkpoint's step {trainer.step}: raise train.steps to "
            "continue"
        )
    if main:  # model size and compute, counted once, by the rank that reports them
        result.model_stats = {
            "params": float(parameter_count(trainer.model)),
            "gflops": forward_gflops(
                trainer.model, cfg.data.channels, cfg.data.image_size, cfg.diffusion.num_timesteps
            ),
        }
        hooks.on_start(result.model_stats)
    trainer.model.train()
    pending: list[torch.Tensor] = []
    sums: dict[str, torch.Tensor] = {}
    window_start, window_step = time.perf_counter(), trainer.step
    bar = tqdm(total=cfg.train.steps, initial=trainer.step, desc="train", disable=not (main and cfg.train.progress))
    while trainer.step < cfg.train.steps:
        logs = trainer.train_step()
        pending.append(logs["loss"])
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + v
        bar.update(1)
        step = trainer.step
        at_log = step % cfg.train.log_every == 0 or step == cfg.train.steps
        at_ckpt = (cfg.train.ckpt_every and step % cfg.train.ckpt_every == 0) or step == cfg.train.steps
        at_report = hooks.report_every > 0 and (step % hooks.report_every == 0 or step == cfg.train.steps)
        if at_log or at_ckpt or at_report:  # the only host syncs: once per log window
            result.losses += _check_finite(pending, step - len(pending), out_dir)
            n = len(pending)
            metrics = {k: float(v) / n for k, v in sums.items()}
            elapsed = time.perf_counter() - window_start
            metrics["steps_per_sec"] = (step - window_step) / elapsed
            metrics["images_per_sec"] = metrics["steps_per_sec"] * cfg.data.batch_size
            pending, sums = [], {}
            window_start, window_step = time.perf_counter(), step
            result.last_metrics = metrics
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            if main:
                hooks.on_log(step, metrics)
        if at_ckpt and main and hooks.own_checkpoints:
            result.checkpoint = trainer.save(ckpt_path)
            hooks.on_checkpoint(step, ckpt_path)
        if at_report:
            hooks.on_report(trainer, step, result.last_metrics)
            window_start = time.perf_counter()  # steps/s counts training, not the evaluation
    bar.close()
    result.step = trainer.step
    if main and cfg.sample.per_class > 0:
        trainer.ema.model.eval()
        result.samples = trainer.sample_grid(out_dir / "samples.png")
    return result
