"""Sweep schema (`switchsweep sweep sweep=<name>`): the search, its schedule, Ray resources and tracking.

A sweep job is a full training config plus a `sweep` section; each trial trains the training part
with the sampled parameters applied. Validation here is static (no Ray, no MLflow); the resource
check against the running cluster lives in `sweeps.runtime`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from switchsweep.config.schema import Config, validate_scoring
from switchsweep.platform.errors import ConfigError
from switchsweep.platform.uris import is_database, is_server, redact

SEARCHES = ("tpe", "random", "grid")
# Metrics every trial report carries, and whether lower is better.
REPORTED_METRICS = {
    "kid_x1e3": "min",  # KID x 10^3, as the literature prints it
    "class_accuracy": "max",  # where the feature network classifies the data's classes (the digits)
    "fid": "min",
    "inception_score": "max",
    "precision": "max",
    "recall": "max",
    "loss": "min",
    "gflops": "min",  # per image forward: the compute side of a quality/compute trade-off
    "params": "min",
    "steps_per_sec": "max",
}
# A metric's evaluation noise, reported beside it: its standard error over the generated samples
# (trainers.evaluation.metrics), what re-evaluating the same model with another eval.seed varies it by.
METRIC_SE = {"kid_x1e3": "kid_x1e3_se", "fid": "fid_se", "class_accuracy": "class_accuracy_se"}
# The share of samples the data's classifier assigns to the class they were drawn for: reported only where
# the evaluation's feature network classifies the data's own classes (the digits classifier).
ACCURACY_METRIC = "class_accuracy"
CLASSIFIED_ONLY = (ACCURACY_METRIC,)
SPEC_KINDS = ("choice", "loguniform", "uniform", "randint", "fraction_of")
LOG_CHECKPOINTS = ("last", "best", "false")
# Sweep names and ids become folder names and MLflow filter values: letters, digits, . _ - only.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass
class ParamSpec:
    """One searched setting: `key` is a dotted config path; exactly one distribution is set.

    `fraction_of: model.num_experts` draws an integer in 1..num_experts (for top_k given M) from a
    uniform fraction u in (0, 1] as ceil(u * M), so the searcher sees one fixed distribution.
    """

    key: str = "???"
    choice: list[Any] | None = None
    loguniform: list[float] | None = None
    uniform: list[float] | None = None
    randint: list[int] | None = None  # [low, high], both inclusive
    fraction_of: str | None = None


@dataclass
class RayConfig:
    address: str | None = None  # null: start a local Ray instance; "auto" or ray://host:10001 for a cluster
    num_cpus: int | None = None  # local instance only; null: enough for max_concurrent trials
    num_workers: int = 1  # DDP workers per trial
    use_gpu: bool = False
    cpus_per_worker: float | None = None  # null: local, the cores shared by all workers at once; cluster, 1
    gpus_per_worker: float = 1.0  # used only with use_gpu
    trainable_cpus: float = 0.05  # the per-trial driver that starts the Train job
    max_failures: int = 1  # restarts of a trial's training, each resuming from the last checkpoint
    # A one-worker trial on this machine trains in its Tune trial's own process instead of a Train job,
    # whose controller and worker processes cost seconds a trial to start; false: always a Train job.
    inline: bool = True
    storage_path: str | None = (
        None  # Tune state and Train checkpoints (s3://, gs://, a shared mount); null: <root>/sweeps
    )
    shared_fs: bool = False  # storage_path is a path every node mounts (NFS, ...): accepted with a cluster address
    driver_resource: str | None = None  # a custom resource (TRAIN_DRIVER) that places trial drivers, CPU-free
    worker_resources: dict[str, float] = field(default_factory=dict)  # extra custom resources per DDP worker
    # A custom resource only one-GPU nodes have (cluster.yaml's ONE_GPU_NODE): a one-GPU trial asks for it, so
    # it never takes a GPU of a multi-GPU node, which multi-GPU trials need whole. null: no such marking.
    one_gpu_resource: str | None = None
    cluster_config: str = (
        "~/ray_bootstrap_config.yaml"  # the autoscaler's config on the head: the node types a trial may get
    )
    # How a trial's DDP workers are placed: STRICT_PACK keeps them on one node, so an 8-GPU trial asks the
    # autoscaler for one 8-GPU node rather than eight 1-GPU ones (PACK or SPREAD: across nodes).
    placement_strategy: str = "STRICT_PACK"
    # How long a trial's workers may take to start: on a cluster that includes a GPU node's boot and setup.
    worker_start_timeout_s: float = 180.0


PLACEMENT_STRATEGIES = ("STRICT_PACK", "PACK", "SPREAD", "STRICT_SPREAD")  # Ray's placement group strategies


@dataclass
class SweepConfig:
    name: str = "design_space"
    search: str = "tpe"
    num_trials: int = 8  # tpe/random: sampled configurations (grid: 1, every row once)
    seeds: int = 1  # runs of every configuration, train.seed + 0..seeds-1; Optuna is told their mean
    max_concurrent: int = 1
    # Device-hours the sweep may spend: GPU-hours, or CPU-hours where trials use no GPU (sweeps/budget.py);
    # null: no limit. A resume or extend may give a new one; what the record holds is counted against it.
    budget: float | None = None
    metric: str = "kid_x1e3"
    mode: str = "min"
    objectives: list[str] = field(default_factory=list)  # >= 2 metrics: multi-objective search, Pareto ranking
    tpe_startup: int | None = None  # TPE's random start-up configurations; null: max(2, num_trials // 4)
    points_to_evaluate: list[dict[str, Any]] = field(default_factory=list)  # first configurations, e.g. the paper's
    # A model (conf/model/<name>) trained with every seed, the same steps and evaluation, outside the search,
    # that each configuration is compared with; none: no baseline.
    baseline: str | None = None
    race: int = 0  # after the search: the top N configurations and the baseline get more seeds until the best separates
    race_seeds: int = 3  # the racing budget: extra seeds per raced configuration at most
    eval_every: int = 250  # steps between evaluations; one ASHA time unit
    asha: bool = True
    # Evaluations before ASHA may stop a trial: 2 x 250 steps puts its first rung where the digits models
    # draw digits and KID falls with training (benchmarks/learning.py); before it KID ranks noise.
    grace_period: int = 2
    reduction_factor: float = 2.0
    space: list[ParamSpec] = field(default_factory=list)
    grid: list[list[str]] = field(default_factory=list)  # rows of Hydra overrides (search=grid)
    seed: int = 0
    id: str | None = None  # a sweep's id (<name>-<time>); null: a new one, or the latest (--resume, report, ...)
    root: str = "runs"  # sweeps, the MLflow store and its artifacts live under it
    tracking_uri: str | None = None  # null: sqlite:///<root>/mlflow.db; an http(s) MLflow server on clusters
    # A trial's final checkpoint, kept once: last: every finished trial's in MLflow; best: the best trial's in
    # MLflow, the others' in Ray Train's storage; false: every one in Ray Train's storage only.
    log_checkpoints: str = "last"
    ray: RayConfig = field(default_factory=RayConfig)


@dataclass
class SweepJobConfig(Config):
    sweep: SweepConfig = field(default_factory=SweepConfig)


ConfigStore.instance().store(name="sweep_schema", node=SweepJobConfig)


# Stores each node reaches by itself; a bare path or file:// lives on one machine only.
SHARED_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "hdfs://")
LOOPBACK_HOSTS = ("localhost", "[::1]")


def baseline_model(s: SweepConfig | DictConfig) -> str | None:
    """The sweep's baseline model, None without one (`sweep.baseline=none` or null)."""
    name = s.baseline
    return None if name is None or str(name).lower() in ("none", "null", "false", "") else str(name)


def is_local_address(address: str | None) -> bool:
    """No address (a local instance), or a head listening on loopback: every node is on this machine,
    since no other machine can join a head bound to 127.0.0.1."""
    if not address:
        return True
    host = address.split("://", 1)[-1].rsplit(":", 1)[0]
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _check_spec(i: int, spec: ParamSpec | DictConfig, base: DictConfig) -> None:
    where = f"sweep.space[{i}]"
    _need(spec.key not in ("", "???"), f"{where}.key is not set: give a dotted setting such as model.num_experts")
    _need(
        OmegaConf.select(base, spec.key, default="__missing__") != "__missing__",
        f"{where}.key={spec.key} is not a setting of the training config: check the spelling",
    )
    kinds = [k for k in SPEC_KINDS if getattr(spec, k) is not None]
    _need(
        len(kinds) == 1,
        f"{where} ({spec.key}) sets {kinds or 'no distribution'}: set exactly one of {', '.join(SPEC_KINDS)}",
    )
    kind, value = kinds[0], getattr(spec, kinds[0])
    if kind == "choice":
        _need(len(value) > 0, f"{where}.choice for {spec.key} is empty: list at least one value")
    elif kind == "fraction_of":
        ref = OmegaConf.select(base, value, default=None)
        _need(
            isinstance(ref, int), f"{where}.fraction_of={value} is not an integer setting: use e.g. model.num_experts"
        )
    else:
        _need(
            len(value) == 2 and value[0] <= value[1],
            f"{where}.{kind} for {spec.key} must be [low, high] with low <= high, got {list(value)}",
        )
        if kind == "loguniform":
            _need(value[0] > 0, f"{where}.loguniform for {spec.key} needs low > 0, got {value[0]}")


def _check_fractions(space: list[ParamSpec]) -> None:
    """`fraction_of` must name a fixed integer setting or a searched integer one (choice of ints or randint)."""
    by_key = {spec.key: spec for spec in space}
    for spec in space:
        ref = spec.fraction_of
        if ref is None:
            continue
        _need(
            ref != spec.key,
            f"sweep.space entry {spec.key} is a fraction of itself: name another setting, e.g. model.num_experts",
        )
        other = by_key.get(ref)
        if other is None:
            continue
        _need(
            other.fraction_of is None,
            f"sweep.space entry {spec.key} is a fraction of {ref}, itself a fraction: search {ref} with choice or "
            "randint",
        )
        ints = other.randint is not None or (other.choice is not None and all(isinstance(v, int) for v in other.choice))
        _need(
            ints and all(v >= 1 for v in (other.randint or other.choice or [])),
            f"sweep.space entry {spec.key} is a fraction of {ref}, which is not searched over integers >= 1: "
            f"use choice or randint for {ref}",
        )


def _in_domain(spec: ParamSpec | DictConfig, value: Any) -> bool:
    if spec.choice is not None:
        return value in list(spec.choice)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    if spec.fraction_of is not None:
        return isinstance(value, int) and value >= 1  # checked against the referenced value when resolved
    low, high = spec.loguniform or spec.uniform or spec.randint
    return low <= value <= high and (spec.randint is None or isinstance(value, int))


def check_point(i: int, point: Any, space: list[ParamSpec]) -> None:
    """A `points_to_evaluate` entry sets every searched key to a value its distribution can take
    (a `fraction_of` key as the integer itself, e.g. model.top_k: 2)."""
    where = f"sweep.points_to_evaluate[{i}]"
    keys = {spec.key for spec in space}
    given = set(point.keys()) if hasattr(point, "keys") else set()
    _need(given == keys, f"{where} must set exactly the searched keys {sorted(keys)}; it sets {sorted(given)}")
    for spec in space:
        value = point[spec.key]
        _need(_in_domain(spec, value), f"{where}: {spec.key}={value!r} is outside its sweep.space distribution")
        if spec.fraction_of is not None and spec.fraction_of in point:
            _need(
                value <= point[spec.fraction_of],
                f"{where}: {spec.key}={value} must be <= {spec.fraction_of}={point[spec.fraction_of]}",
            )


def validate_sweep(job: SweepJobConfig | DictConfig) -> None:
    """Static checks of the sweep section; raise ConfigError naming the field on the first bad one."""
    validate_scoring(job.eval, job.data.name)  # every trial is evaluated
    s = job.sweep
    _need(
        bool(SAFE_NAME.fullmatch(str(s.name))),
        f"sweep.name={str(s.name)[:60]!r} must be 1-128 letters, digits, '.', '_' or '-' (starting with a letter or "
        "digit)",
    )
    _need(
        s.id is None or bool(SAFE_NAME.fullmatch(str(s.id))),
        f"sweep.id={str(s.id)[:60]!r} must be 1-128 letters, digits, '.', '_' or '-' (starting with a letter or "
        "digit), "
        "e.g. design_space-20261201-120000",
    )
    _need(
        str(s.log_checkpoints).lower() in LOG_CHECKPOINTS,
        f"sweep.log_checkpoints={s.log_checkpoints!r} is not one of {', '.join(LOG_CHECKPOINTS)}: pick one of those",
    )
    _need(s.search in SEARCHES, f"sweep.search={s.search!r} is not one of {', '.join(SEARCHES)}: pick one of those")
    _need(
        s.budget is None or float(s.budget) > 0,
        f"sweep.budget={s.budget} must be > 0 device-hours (GPU-hours; CPU-hours without GPUs), or null for no limit",
    )
    _need(
        s.budget is None or s.search != "grid",
        f"sweep.budget={s.budget} needs sweep.search=tpe or random (a grid runs every row): drop it, or limit the "
        "rows of sweep.grid",
    )
    if s.search == "grid":
        _need(len(s.grid) > 0, "sweep.grid is empty: list rows of overrides, or use sweep.search=tpe with sweep.space")
        _need(len(s.space) == 0, "sweep.space is set with sweep.search=grid: put the values in sweep.grid rows instead")
    else:
        _need(
            len(s.space) > 0,
            f"sweep.space is empty: nothing to search with sweep.search={s.search}; add parameters or pick a sweep "
            "with one",
        )
        _need(len(s.grid) == 0, f"sweep.grid is set with sweep.search={s.search}: use sweep.search=grid for grids")
    base = OmegaConf.structured(job) if not isinstance(job, DictConfig) else job
    for i, spec in enumerate(s.space):
        _check_spec(i, spec, base)
    keys = [spec.key for spec in s.space]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ConfigError(f"sweep.space lists {dupes[0]} more than once: keep one entry per setting")
    _check_fractions(s.space)
    for i, point in enumerate(s.points_to_evaluate):
        check_point(i, point, s.space)
    _need(s.num_trials >= 1, f"sweep.num_trials={s.num_trials} must be >= 1")
    _need(
        s.search != "grid" or s.num_trials == 1,
        f"sweep.num_trials={s.num_trials} with sweep.search=grid: a grid runs every row once; repeat rows with "
        "sweep.seeds",
    )
    _need(s.seeds >= 1, f"sweep.seeds={s.seeds} must be >= 1")
    _need(s.max_concurrent >= 1, f"sweep.max_concurrent={s.max_concurrent} must be >= 1")
    _need(s.tpe_startup is None or s.tpe_startup >= 1, f"sweep.tpe_startup={s.tpe_startup} must be >= 1 (or null)")
    if baseline_model(s) is not None:
        _need(
            s.search != "grid",
            f"sweep.baseline={s.baseline} with sweep.search=grid: add the baseline as a grid row "
            f"(model={s.baseline}) or set sweep.baseline=none",
        )
    _need(s.race >= 0, f"sweep.race={s.race} must be >= 0 (0: no racing)")
    if s.race:
        _need(
            s.search != "grid",
            "sweep.race with sweep.search=grid: a grid runs every row; give it more sweep.seeds instead",
        )
        _need(not s.objectives, "sweep.race with sweep.objectives: racing separates one metric; set sweep.race=0")
        _need(s.race_seeds >= 1, f"sweep.race_seeds={s.race_seeds} must be >= 1 (extra seeds per raced configuration)")
        _need(
            s.race >= 2 or baseline_model(s) is not None,
            f"sweep.race={s.race} races one configuration against nothing: race 2 or more, or set sweep.baseline",
        )
    _need(
        not s.points_to_evaluate or s.search != "grid",
        "sweep.points_to_evaluate is set with sweep.search=grid: add the point as a sweep.grid row instead",
    )
    for name in [s.metric, *s.objectives]:
        _need(
            name in REPORTED_METRICS,
            f"sweep.metric={name!r} is never reported by a trial: use one of {', '.join(REPORTED_METRICS)}",
        )
    for name in set(CLASSIFIED_ONLY) & {s.metric, *s.objectives}:
        _need(
            job.data.name == "digits" and job.eval.feature_net == "digits",
            f"sweep.metric={name}: data={job.data.name} is scored by eval.feature_net={job.eval.feature_net}, which "
            "does not classify its classes: rank by kid_x1e3 or fid",
        )
    _need(
        s.mode == REPORTED_METRICS[s.metric],
        f"sweep.mode={s.mode!r} but {s.metric} is {'lower' if REPORTED_METRICS[s.metric] == 'min' else 'higher'}"
        f"-is-better: set sweep.mode={REPORTED_METRICS[s.metric]}",
    )
    if s.objectives:
        _need(
            len(s.objectives) >= 2 and len(set(s.objectives)) == len(s.objectives),
            f"sweep.objectives={list(s.objectives)} needs two or more different metrics, e.g. [kid_x1e3, gflops]",
        )
        _need(
            s.objectives[0] == s.metric,
            f"sweep.objectives starts with {s.objectives[0]} but sweep.metric={s.metric}: set "
            f"sweep.metric={s.objectives[0]}",
        )
        _need(
            not s.asha, "sweep.objectives with sweep.asha=true: ASHA stops trials on one metric; set sweep.asha=false"
        )
    _need(
        0 < s.eval_every <= job.train.steps,
        f"sweep.eval_every={s.eval_every} must be in [1, train.steps={job.train.steps}]: trials report only at "
        "evaluations",
    )
    _need(s.grace_period >= 1, f"sweep.grace_period={s.grace_period} must be >= 1 evaluation")
    _need(s.reduction_factor > 1, f"sweep.reduction_factor={s.reduction_factor} must be > 1")
    _need(bool(s.root), "sweep.root is empty: give a directory for sweeps and the MLflow store")
    r = s.ray
    _need(r.num_workers >= 1, f"sweep.ray.num_workers={r.num_workers} must be >= 1")
    _need(
        r.cpus_per_worker is None or r.cpus_per_worker > 0, f"sweep.ray.cpus_per_worker={r.cpus_per_worker} must be > 0"
    )
    _need(0 < r.trainable_cpus <= 1, f"sweep.ray.trainable_cpus={r.trainable_cpus} must be in (0, 1] (Ray refuses 0)")
    _need(
        not r.use_gpu or r.gpus_per_worker > 0,
        f"sweep.ray.gpus_per_worker={r.gpus_per_worker} must be > 0 with use_gpu",
    )
    _need(r.max_failures >= 0, f"sweep.ray.max_failures={r.max_failures} must be >= 0")
    _need(
        r.placement_strategy in PLACEMENT_STRATEGIES,
        f"sweep.ray.placement_strategy={r.placement_strategy} must be one of {', '.join(PLACEMENT_STRATEGIES)}",
    )
    _need(r.worker_start_timeout_s > 0, f"sweep.ray.worker_start_timeout_s={r.worker_start_timeout_s} must be > 0")
    _need(r.num_cpus is None or r.num_cpus >= 1, f"sweep.ray.num_cpus={r.num_cpus} must be >= 1")
    _need(
        not r.driver_resource or r.driver_resource not in ("CPU", "GPU", "memory"),
        f"sweep.ray.driver_resource={r.driver_resource} must be a custom resource (e.g. TRAIN_DRIVER) declared on the "
        "head",
    )
    _need(
        all(v > 0 for v in r.worker_resources.values()) and not {"CPU", "GPU"} & set(r.worker_resources),
        f"sweep.ray.worker_resources={dict(r.worker_resources)} must map custom resources to amounts > 0 "
        "(CPUs and GPUs: cpus_per_worker, gpus_per_worker)",
    )
    _need(
        not r.one_gpu_resource or r.one_gpu_resource not in ("CPU", "GPU", "memory"),
        f"sweep.ray.one_gpu_resource={r.one_gpu_resource} must be a custom resource that only one-GPU node types "
        "declare (cluster.yaml's ONE_GPU_NODE), or null",
    )
    if not is_local_address(r.address):
        _check_shared(s)
    _need(
        job.data.batch_size % r.num_workers == 0,
        f"data.batch_size={job.data.batch_size} is not divisible by sweep.ray.num_workers={r.num_workers}: make it a "
        "multiple",
    )


def _check_shared(s: SweepConfig) -> None:
    """On a cluster every node writes results where the driver reads them: a store all nodes share."""
    r, where = s.ray, f"with sweep.ray.address={s.ray.address}"
    storage = r.storage_path or ""
    if not storage.startswith(SHARED_SCHEMES):
        _need(
            r.shared_fs and storage.startswith("/"),
            f"sweep.ray.storage_path={storage or 'null'} {where}: worker nodes cannot reach a path on this machine; "
            "use s3://bucket/sweeps or gs://bucket/sweeps, or an absolute path every node mounts with "
            "sweep.ray.shared_fs=true",
        )
    uri = s.tracking_uri or ""
    _need(
        is_server(uri) or is_database(uri),
        f"sweep.tracking_uri={redact(uri) or 'null'} {where}: trials on other nodes cannot write to a local MLflow "
        "store; run `mlflow server --serve-artifacts` on the head and pass sweep.tracking_uri=http://HEAD:5000 (or "
        "platform=cluster), or a database every node reaches (postgresql://USER:PASSWORD@HOST/DB)",
    )


def worker_bundle(r: RayConfig) -> dict[str, float]:
    """Resources of one DDP worker (`cpus_per_worker` resolved)."""
    one_gpu = r.use_gpu and r.one_gpu_resource and r.num_workers == 1 and r.gpus_per_worker <= 1
    marker = {r.one_gpu_resource: 1.0} if one_gpu else {}
    return {
        "CPU": r.cpus_per_worker,
        **({"GPU": r.gpus_per_worker} if r.use_gpu else {}),
        **r.worker_resources,
        **marker,
    }


def trains_inline(r: RayConfig) -> bool:
    """Whether a trial trains in its Tune trial's process (`sweep.ray.inline`): one worker, every node local."""
    return r.inline and r.num_workers == 1 and is_local_address(r.address)


def driver_bundle(r: RayConfig) -> dict[str, float]:
    """Resources of a trial's driver (the Tune function that starts its Train job): a custom resource
    that pins it to the head, or a fraction of a CPU anywhere (Ray refuses an empty request)."""
    return {r.driver_resource: 1.0} if r.driver_resource else {"CPU": r.trainable_cpus}


def trial_resources(r: RayConfig) -> dict[str, float]:
    """Resources one trial holds at once: its driver plus its DDP workers (an inline trial's process is both)."""
    need = dict(driver_bundle(r))
    for name, amount in worker_bundle(r).items():
        need[name] = need.get(name, 0.0) + r.num_workers * amount
    return need
