"""Sweep schema (`switchsweep sweep sweep=<name>`): the search, its schedule, Ray resources and tracking.

A sweep job is a full training config plus a `sweep` section; each trial trains the training part
with the sampled parameters applied. Validation here is static (no Ray, no MLflow); the resource
check against the running cluster lives in `platform.runtime`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from switchsweep.platform.config import Config
from switchsweep.platform.errors import ConfigError

SEARCHES = ("tpe", "random", "grid")
# Metrics every trial report carries, and whether lower is better.
REPORTED_METRICS = {
    "kid": "min",
    "fid": "min",
    "inception_score": "max",
    "precision": "max",
    "recall": "max",
    "loss": "min",
}
SPEC_KINDS = ("choice", "loguniform", "uniform", "randint", "fraction_of")


@dataclass
class ParamSpec:
    """One searched setting: `key` is a dotted config path; exactly one distribution is set.

    `fraction_of: model.num_experts` draws an integer in 1..num_experts (for top_k given M) from a
    uniform fraction u in (0, 1] as ceil(u * M), so the searcher sees one fixed distribution.
    """

    key: str = "???"
    choice: Optional[List[Any]] = None
    loguniform: Optional[List[float]] = None
    uniform: Optional[List[float]] = None
    randint: Optional[List[int]] = None  # [low, high], both inclusive
    fraction_of: Optional[str] = None


@dataclass
class RayConfig:
    address: Optional[str] = None  # null: start a local Ray instance; "auto" or ray://host:10001 for a cluster
    num_cpus: Optional[int] = None  # local instance only; null: enough for max_concurrent trials
    num_workers: int = 1  # DDP workers per trial
    use_gpu: bool = False
    cpus_per_worker: Optional[float] = None  # null: local, the cores shared by all workers at once; cluster, 1
    gpus_per_worker: float = 1.0  # used only with use_gpu
    trainable_cpus: float = 0.05  # the per-trial driver that starts the Train job
    max_failures: int = 1  # worker-group restarts per trial, each resuming from the last checkpoint
    storage_path: Optional[str] = None  # shared storage on clusters; null: <root>/sweeps


@dataclass
class SweepConfig:
    name: str = "design_space"
    search: str = "tpe"
    num_trials: int = 8  # tpe/random: trials; grid: repeats of every row, each with its own train.seed
    max_concurrent: int = 1
    metric: str = "kid"
    mode: str = "min"
    eval_every: int = 100  # steps between evaluations; one ASHA time unit
    asha: bool = True
    grace_period: int = 1  # evaluations before ASHA may stop a trial
    reduction_factor: float = 2.0
    space: List[ParamSpec] = field(default_factory=list)
    grid: List[List[str]] = field(default_factory=list)  # rows of Hydra overrides (search=grid)
    seed: int = 0
    id: Optional[str] = None  # a sweep's id (<name>-<time>); null: a new one, or the latest with resume/export
    resume: bool = False
    root: str = "runs"  # sweeps, the MLflow store and its artifacts live under it
    tracking_uri: Optional[str] = None  # null: sqlite:///<root>/mlflow.db; an http(s) MLflow server on clusters
    ray: RayConfig = field(default_factory=RayConfig)


@dataclass
class SweepJobConfig(Config):
    sweep: SweepConfig = field(default_factory=SweepConfig)


ConfigStore.instance().store(name="sweep_schema", node=SweepJobConfig)


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _check_spec(i: int, spec: ParamSpec | DictConfig, base: DictConfig) -> None:
    where = f"sweep.space[{i}]"
    _need(spec.key not in ("", "???"), f"{where}.key is not set: give a dotted setting such as model.num_experts")
    _need(OmegaConf.select(base, spec.key, default="__missing__") != "__missing__",
          f"{where}.key={spec.key} is not a setting of the training config: check the spelling")
    kinds = [k for k in SPEC_KINDS if getattr(spec, k) is not None]
    _need(len(kinds) == 1, f"{where} ({spec.key}) sets {kinds or 'no distribution'}: set exactly one of {', '.join(SPEC_KINDS)}")
    kind, value = kinds[0], getattr(spec, kinds[0])
    if kind == "choice":
        _need(len(value) > 0, f"{where}.choice for {spec.key} is empty: list at least one value")
    elif kind == "fraction_of":
        ref = OmegaConf.select(base, value, default=None)
        _need(isinstance(ref, int), f"{where}.fraction_of={value} is not an integer setting: use e.g. model.num_experts")
    else:
        _need(len(value) == 2 and value[0] <= value[1],
              f"{where}.{kind} for {spec.key} must be [low, high] with low <= high, got {list(value)}")
        if kind == "loguniform":
            _need(value[0] > 0, f"{where}.loguniform for {spec.key} needs low > 0, got {value[0]}")


def validate_sweep(job: SweepJobConfig | DictConfig) -> None:
    """Static checks of the sweep section; raise ConfigError naming the field on the first bad one."""
    s = job.sweep
    _need(bool(s.name) and "/" not in s.name, f"sweep.name={s.name!r} must be a non-empty name without '/'")
    _need(s.search in SEARCHES, f"sweep.search={s.search!r} is not one of {', '.join(SEARCHES)}: pick one of those")
    if s.search == "grid":
        _need(len(s.grid) > 0, "sweep.grid is empty: list rows of overrides, or use sweep.search=tpe with sweep.space")
        _need(len(s.space) == 0, "sweep.space is set with sweep.search=grid: put the values in sweep.grid rows instead")
    else:
        _need(len(s.space) > 0,
              f"sweep.space is empty: nothing to search with sweep.search={s.search}; add parameters or pick a sweep with one")
        _need(len(s.grid) == 0, f"sweep.grid is set with sweep.search={s.search}: use sweep.search=grid for grids")
    base = OmegaConf.structured(job) if not isinstance(job, DictConfig) else job
    for i, spec in enumerate(s.space):
        _check_spec(i, spec, base)
    keys = [spec.key for spec in s.space]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ConfigError(f"sweep.space lists {dupes[0]} more than once: keep one entry per setting")
    _need(s.num_trials >= 1, f"sweep.num_trials={s.num_trials} must be >= 1")
    _need(s.max_concurrent >= 1, f"sweep.max_concurrent={s.max_concurrent} must be >= 1")
    _need(s.metric in REPORTED_METRICS,
          f"sweep.metric={s.metric!r} is never reported by a trial: use one of {', '.join(REPORTED_METRICS)}")
    _need(s.mode == REPORTED_METRICS[s.metric],
          f"sweep.mode={s.mode!r} but {s.metric} is {'lower' if REPORTED_METRICS[s.metric] == 'min' else 'higher'}"
          f"-is-better: set sweep.mode={REPORTED_METRICS[s.metric]}")
    _need(0 < s.eval_every <= job.train.steps,
          f"sweep.eval_every={s.eval_every} must be in [1, train.steps={job.train.steps}]: trials report only at evaluations")
    _need(s.grace_period >= 1, f"sweep.grace_period={s.grace_period} must be >= 1 evaluation")
    _need(s.reduction_factor > 1, f"sweep.reduction_factor={s.reduction_factor} must be > 1")
    _need(bool(s.root), "sweep.root is empty: give a directory for sweeps and the MLflow store")
    r = s.ray
    _need(r.num_workers >= 1, f"sweep.ray.num_workers={r.num_workers} must be >= 1")
    _need(r.cpus_per_worker is None or r.cpus_per_worker > 0, f"sweep.ray.cpus_per_worker={r.cpus_per_worker} must be > 0")
    _need(0 < r.trainable_cpus <= 1, f"sweep.ray.trainable_cpus={r.trainable_cpus} must be in (0, 1] (Ray refuses 0)")
    _need(not r.use_gpu or r.gpus_per_worker > 0, f"sweep.ray.gpus_per_worker={r.gpus_per_worker} must be > 0 with use_gpu")
    _need(r.max_failures >= 0, f"sweep.ray.max_failures={r.max_failures} must be >= 0")
    _need(r.num_cpus is None or r.num_cpus >= 1, f"sweep.ray.num_cpus={r.num_cpus} must be >= 1")
    _need(job.data.batch_size % r.num_workers == 0,
          f"data.batch_size={job.data.batch_size} is not divisible by sweep.ray.num_workers={r.num_workers}: make it a multiple")


def trial_resources(r: RayConfig) -> dict[str, float]:
    """Resources one trial holds at once: its driver plus its DDP workers (`cpus_per_worker` resolved)."""
    need = {"CPU": r.trainable_cpus + r.num_workers * r.cpus_per_worker}
    if r.use_gpu:
        need["GPU"] = r.num_workers * r.gpus_per_worker
    return need
