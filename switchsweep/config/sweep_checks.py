"""The sweep job's static checks (no Ray, no MLflow): every field a bad value of which is refused in one line
naming it and the fix, the search space (every combination it can reach is a valid training config) and the
stores a cluster's nodes must share. The resource check against a running cluster is `sweeps.runtime`'s."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from switchsweep.config.schema import validate_scoring
from switchsweep.config.sweep_schema import (
    CLASSIFIED_ONLY,
    LOG_CHECKPOINTS,
    PLACEMENT_STRATEGIES,
    REPORTED_METRICS,
    SAFE_NAME,
    SEARCHES,
    SHARED_SCHEMES,
    SPEC_KINDS,
    ParamSpec,
    SweepConfig,
    SweepJobConfig,
    baseline_model,
    is_local_address,
)
from switchsweep.platform.errors import ConfigError
from switchsweep.platform.uris import is_database, is_server, redact


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
