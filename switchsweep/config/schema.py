"""Structured config schema (Hydra/OmegaConf dataclasses) and its validation.

Validation runs on the composed config before any data or model work, and every failure is one
`ConfigError` line naming the field and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from switchsweep.platform.errors import ConfigError

# (depth, hidden size, heads) per DiT size; `tiny` is the CPU size.
MODEL_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (6, 128, 4),
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}
MODEL_NAMES = ("dit", "dtr", "switch_dit", "dit_moe", "multi_experts")
GATINGS = ("timestep", "noisy")
INTEGRATIONS = ("skip_onevec", "skip", "direct")
LOSS_WEIGHTINGS = ("constant", "uw", "min_snr", "p2")
PATCH_SIZES = (2, 4, 8)
SCHEDULES = ("linear", "cosine")
SAMPLERS = ("ddpm", "ddim")
DATASETS = ("digits", "latents")
DEVICES = ("auto", "cpu", "cuda")
# fp32: exact fp32 matmuls; tf32: fp32 weights and activations, TF32 tensor cores for matmuls (the official
# DiT code's setting; nothing changes on a CPU); bf16: the model's forward under bf16 autocast.
PRECISIONS = ("fp32", "tf32", "bf16")
FEATURE_NETS = ("digits", "inception")


def _design(models: tuple[str, ...], default: Any, **how: Any) -> Any:
    """A model setting that tells designs apart, for labels and run names (`results`):
    label="M": always shown as M=<value>; flag=True: its value, when not the default; off="x" / on="x":
    x when the value is 0 / above 0; run="ldp": a run-name part <run><value> (decimal=True: 1 -> 1.0)."""
    return field(default=default, metadata={"models": models, **how})


SWITCH, MOE = ("switch_dit",), ("switch_dit", "dit_moe")


# The defaults train on the bundled digits on a CPU: a tiny model on 4x4-pixel patches (4 tokens an 8x8
# image) with AdamW at lr 2e-3 for 1,000 steps, the cheapest setting measured in which both DiT and
# Switch-DiT draw the digit they are asked for (99% class accuracy; benchmarks/learning.py). The real-data
# presets (conf/data) and `preset=paper` set the paper's lr 1e-4, the real-data ones its patch 2.
@dataclass
class ModelConfig:
    name: str = "switch_dit"
    size: str = "tiny"
    patch_size: int = 4
    mlp_ratio: float = 4.0
    learn_sigma: bool = True
    # Switch-DiT (num_experts / top_k also size DiT-MoE's token-routed experts)
    num_experts: int = _design(MOE, 3, label="M")
    top_k: int = _design(MOE, 2, label="k")
    lambda_dp: float = _design(
        SWITCH, 1.0, off="no-prior", run="ldp", decimal=True
    )  # diffusion prior loss weight; 0: off
    prior_alpha: float = _design(SWITCH, 4.0, run="a")
    # timestep: softmax of a gate on e_t; noisy: plus trainable noise while training
    gating: str = _design(SWITCH, "timestep", flag=True)
    balance_loss: float = _design(
        SWITCH, 0.0, on="balance"
    )  # weight of the load-balancing (importance CV^2) loss; 0: off
    # skip_onevec: z*m, z*(1-m) skip, m = 1 + experts (zero init); skip: same, m = experts only, random init;
    # direct: the SMoE output replaces the block input
    integration: str = _design(SWITCH, "skip_onevec", flag=True)
    # DiT-MoE
    shared_experts: int = _design(("dit_moe",), 1, label="shared")  # always-on SwiGLU experts beside the routed ones
    expert_balance: float = 0.01  # weight of the expert-level balance loss
    # Multi-experts: separate DiTs, one per exclusive timestep interval
    num_intervals: int = _design(("multi_experts",), 4, label="n")
    # DTR
    dtr_alpha: float = 4.0
    dtr_beta: float = 0.8


@dataclass
class DataConfig:
    name: str = "digits"  # digits (bundled, pixel space) or latents (a `switchsweep prepare` folder)
    image_size: int = 8  # the model's input: pixels for digits, the latent size for latents
    channels: int = 1
    num_classes: int = 10
    batch_size: int = 64
    path: str | None = None  # latents: the prepared folder (manifest.json and shards)
    # `prepare`, and the real images' reference features for evaluating latents
    root: str | None = None  # an ImageFolder: one folder of images per class
    vae: str | None = None  # a local diffusers AutoencoderKL folder (latents: default, the manifest's)
    resolution: int = 256  # prepare: centre crop and resize to this many pixels before encoding
    flip: bool = False  # prepare: also encode each image's horizontal mirror
    shard_size: int = 256  # prepare: images per latent shard (the unit of work and of resuming)
    ref_batch: str | None = None  # latents: an ADM-style reference batch .npz (mu, sigma, arr_0) instead of data.root


@dataclass
class DiffusionConfig:
    num_timesteps: int = 1000
    schedule: str = "linear"


@dataclass
class TrainConfig:
    steps: int = 1000
    lr: float = 2e-3
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    ema_decay: float = 0.9999
    class_dropout: float = 0.1
    seed: int = 0
    device: str = "auto"
    precision: str = "tf32"  # one of PRECISIONS
    # torch.compile every transformer block (Inductor, cached on disk): faster steps after a one-off compile per
    # model shape (benchmarks/train_throughput.py)
    compile: bool = False
    log_every: int = 10
    ckpt_every: int = 0  # 0: only at the end
    out_dir: str = "runs/train"
    resume: str | None = None
    progress: bool = True
    # Weighting of the noise-prediction loss over timesteps
    loss_weighting: str = "constant"  # constant, uw (ANT uncertainty weighting), min_snr, p2
    uw_clusters: int = 8
    uw_lr: float = 0.025  # the learning rate of the UW log-variances s_i (the official code's)
    min_snr_gamma: float = 5.0
    p2_gamma: float = 1.0
    p2_k: float = 1.0


@dataclass
class SamplerConfig:
    """How samples are drawn: the sampler, its steps, classifier-free guidance and DDIM's eta."""

    sampler: str = "ddim"
    steps: int = 50
    cfg_scale: float = 1.5
    ddim_eta: float = 0.0


@dataclass
class SampleConfig(SamplerConfig):
    """How the end-of-training sample grid is drawn."""

    per_class: int = 4


@dataclass
class EvalConfig(SamplerConfig):
    """`switchsweep evaluate`: sample with the EMA model, then FID / KID / IS / precision-recall."""

    num_samples: int = 1000
    batch_size: int = 250
    seed: int = 0
    feature_net: str = "digits"
    inception_weights: str | None = None  # FID InceptionV3 state dict: a file or a URI; nothing is downloaded
    cache_dir: str = "~/.cache/switchsweep"  # feature networks and reference features: a folder or a URI
    kid_subset_size: int = 1000
    kid_subsets: int = 100
    pr_k: int = 3
    out: str | None = None  # JSON path; default: eval.json beside the checkpoint
    device: str = "auto"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: str | None = None  # the checkpoint `switchsweep evaluate` scores


def register_configs() -> None:
    """Register the schema so the YAML tree in `switchsweep/conf` is type-checked against it."""
    ConfigStore.instance().store(name="schema", node=Config)


register_configs()


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _one_of(path: str, value: Any, allowed: tuple) -> None:
    _need(value in allowed, f"{path}={value!r} is not one of {', '.join(map(str, allowed))}: pick one of those")


def validate_model(m: ModelConfig | DictConfig, image_size: int) -> None:
    _one_of("model.name", m.name, MODEL_NAMES)
    _one_of("model.size", m.size, tuple(MODEL_SIZES))
    _one_of("model.patch_size", m.patch_size, PATCH_SIZES)
    depth, hidden, heads = MODEL_SIZES[m.size]
    _need(hidden % heads == 0, f"model.size={m.size}: hidden {hidden} is not divisible by {heads} heads")
    _need(
        image_size % m.patch_size == 0,
        f"model.patch_size={m.patch_size} does not divide data.image_size={image_size}: pick a patch size that divides "
        "it",
    )
    _need(m.mlp_ratio > 0, f"model.mlp_ratio={m.mlp_ratio} must be > 0")
    if m.name in ("switch_dit", "dit_moe"):
        _need(m.num_experts >= 1, f"model.num_experts={m.num_experts} must be >= 1")
        _need(m.top_k >= 1, f"model.top_k={m.top_k} must be >= 1")
        _need(
            m.top_k <= m.num_experts,
            f"model.top_k={m.top_k} must be <= model.num_experts={m.num_experts}: lower top_k or raise num_experts",
        )
    if m.name == "switch_dit":
        _need(m.lambda_dp >= 0, f"model.lambda_dp={m.lambda_dp} must be >= 0 (0 turns the prior loss off)")
        _need(m.prior_alpha > 0, f"model.prior_alpha={m.prior_alpha} must be > 0")
        _one_of("model.gating", m.gating, GATINGS)
        _one_of("model.integration", m.integration, INTEGRATIONS)
        _need(m.balance_loss >= 0, f"model.balance_loss={m.balance_loss} must be >= 0 (0: off)")
    if m.name == "dit_moe":
        _need(m.shared_experts >= 0, f"model.shared_experts={m.shared_experts} must be >= 0")
        _need(m.expert_balance >= 0, f"model.expert_balance={m.expert_balance} must be >= 0 (0: off)")
    if m.name == "multi_experts":
        _need(m.num_intervals >= 1, f"model.num_intervals={m.num_intervals} must be >= 1")
    if m.name == "dtr":
        _need(m.dtr_alpha > 0, f"model.dtr_alpha={m.dtr_alpha} must be > 0")
        _need(0 < m.dtr_beta <= 1, f"model.dtr_beta={m.dtr_beta} must be in (0, 1]")


def validate(cfg: Config | DictConfig) -> None:
    """Check every field that a run depends on; raise ConfigError on the first bad one."""
    d = cfg.data
    _one_of("data.name", d.name, DATASETS)
    _need(d.image_size > 0, f"data.image_size={d.image_size} must be > 0")
    _need(d.channels > 0, f"data.channels={d.channels} must be > 0")
    _need(d.num_classes > 0, f"data.num_classes={d.num_classes} must be > 0")
    _need(d.batch_size > 0, f"data.batch_size={d.batch_size} must be > 0")
    if d.name == "latents":
        _need(bool(d.path), "data=latents needs data.path=<folder written by `switchsweep prepare`>")
    validate_model(cfg.model, d.image_size)

    f = cfg.diffusion
    _need(f.num_timesteps >= 2, f"diffusion.num_timesteps={f.num_timesteps} must be >= 2")
    _one_of("diffusion.schedule", f.schedule, SCHEDULES)

    t = cfg.train
    _need(t.steps > 0, f"train.steps={t.steps} must be > 0")
    _need(t.lr > 0, f"train.lr={t.lr} must be > 0")
    _need(t.weight_decay >= 0, f"train.weight_decay={t.weight_decay} must be >= 0")
    _need(t.grad_clip >= 0, f"train.grad_clip={t.grad_clip} must be >= 0 (0 disables clipping)")
    _need(0 <= t.ema_decay < 1, f"train.ema_decay={t.ema_decay} must be in [0, 1)")
    _need(0 <= t.class_dropout < 1, f"train.class_dropout={t.class_dropout} must be in [0, 1)")
    _one_of("train.device", t.device, DEVICES)
    _one_of("train.precision", t.precision, PRECISIONS)
    _need(t.log_every > 0, f"train.log_every={t.log_every} must be > 0")
    _need(t.ckpt_every >= 0, f"train.ckpt_every={t.ckpt_every} must be >= 0 (0: only at the end)")
    _need(bool(t.out_dir), "train.out_dir is empty: give a directory for checkpoints and samples")
    _one_of("train.loss_weighting", t.loss_weighting, LOSS_WEIGHTINGS)
    if t.loss_weighting == "uw":
        _need(t.uw_clusters >= 1, f"train.uw_clusters={t.uw_clusters} must be >= 1")
        _need(
            t.uw_clusters <= f.num_timesteps,
            f"train.uw_clusters={t.uw_clusters} must be <= diffusion.num_timesteps={f.num_timesteps}",
        )
        _need(t.uw_lr > 0, f"train.uw_lr={t.uw_lr} must be > 0")
    _need(t.min_snr_gamma > 0, f"train.min_snr_gamma={t.min_snr_gamma} must be > 0")
    _need(t.p2_k > 0, f"train.p2_k={t.p2_k} must be > 0")
    _need(t.p2_gamma >= 0, f"train.p2_gamma={t.p2_gamma} must be >= 0")
    if cfg.model.name == "multi_experts":
        _need(
            cfg.model.num_intervals <= f.num_timesteps,
            f"model.num_intervals={cfg.model.num_intervals} must be <= diffusion.num_timesteps={f.num_timesteps}",
        )

    s = cfg.sample
    _validate_sampler("sample", s, f.num_timesteps)
    _need(s.per_class >= 0, f"sample.per_class={s.per_class} must be >= 0 (0 skips the sample grid)")
    validate_eval(cfg.eval, f.num_timesteps)


def _validate_sampler(section: str, s: SamplerConfig | DictConfig, num_timesteps: int) -> None:
    _one_of(f"{section}.sampler", s.sampler, SAMPLERS)
    _need(
        0 < s.steps <= num_timesteps,
        f"{section}.steps={s.steps} must be in [1, diffusion.num_timesteps={num_timesteps}]",
    )
    _need(s.cfg_scale >= 1.0, f"{section}.cfg_scale={s.cfg_scale} must be >= 1 (1 disables guidance)")
    _need(s.ddim_eta >= 0, f"{section}.ddim_eta={s.ddim_eta} must be >= 0")


def validate_eval(e: EvalConfig | DictConfig, num_timesteps: int) -> None:
    _need(e.num_samples >= 2, f"eval.num_samples={e.num_samples} must be >= 2")
    _need(e.batch_size > 0, f"eval.batch_size={e.batch_size} must be > 0")
    _validate_sampler("eval", e, num_timesteps)
    _one_of("eval.feature_net", e.feature_net, FEATURE_NETS)
    _need(e.kid_subset_size >= 2, f"eval.kid_subset_size={e.kid_subset_size} must be >= 2")
    _need(e.kid_subsets >= 1, f"eval.kid_subsets={e.kid_subsets} must be >= 1")
    _need(e.pr_k >= 1, f"eval.pr_k={e.pr_k} must be >= 1")
    _need(bool(e.cache_dir), "eval.cache_dir is empty: give a directory for cached feature networks and statistics")
    _one_of("eval.device", e.device, DEVICES)


def validate_scoring(e: EvalConfig | DictConfig, data_name: str | None = None) -> None:
    """What scoring samples needs beyond valid eval settings, asked only where an evaluation will run
    (`evaluate`, sweeps; a training run scores nothing): latents are scored on decoded images by
    InceptionV3, whose weights are a local file."""
    if data_name == "latents":
        _need(
            e.feature_net == "inception",
            f"eval.feature_net={e.feature_net}: data=latents is scored on decoded images: set "
            "eval.feature_net=inception",
        )
    if e.feature_net == "inception":
        _need(
            bool(e.inception_weights),
            "eval.feature_net=inception needs eval.inception_weights=<.pt file of FID InceptionV3 weights>",
        )


def to_config(cfg: DictConfig) -> Config:
    """Validated typed config from a composed DictConfig."""
    try:
        OmegaConf.resolve(cfg)  # ${oc.env:...} and other interpolations, once, here
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or "a setting"
        raise ConfigError(
            f"{key}: {str(e).splitlines()[0].rstrip('.')}: set it, or give {key}=... on the command line"
        ) from None
    validate(cfg)
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


# Settings that name files or folders. A sweep resolves them on its driver before trials start, since
# Tune runs each trial in its own working folder.
PATH_SETTINGS = (
    ("eval", "cache_dir"),
    ("eval", "inception_weights"),
    ("eval", "out"),
    ("train", "resume"),
    ("data", "path"),
    ("data", "root"),
    ("data", "vae"),
    ("data", "ref_batch"),
)


def resolve_paths(tree: dict[str, Any]) -> dict[str, Any]:
    """`tree` (a training config as a dict) with relative and ~ paths made absolute, here."""
    for section, key in PATH_SETTINGS:
        value = tree.get(section, {}).get(key)
        if isinstance(value, str) and value and "://" not in value:
            tree[section][key] = str(Path(value).expanduser().resolve())
    return tree
