"""From a sweep config to what is searched, and from one sampled point back to a training config.

Trials receive plain resolved dicts (never Hydra state): one base training config per grid row (one in
all for tpe/random), plus the trial's resolved settings applied as dotted overrides.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from ray import tune

from switchsweep.config.compose import compose_config, override_key
from switchsweep.config.schema import Config, to_config, validate
from switchsweep.config.sweep_schema import (
    SPEC_KINDS,
    ParamSpec,
    SweepConfig,
    SweepJobConfig,
    baseline_model,
)
from switchsweep.platform.errors import ConfigError

FRACTION_SUFFIX = ":fraction"  # the name Optuna sees for a `fraction_of` key: the fraction u itself
# Keys of a trial's config that are not training settings: the grid row, the seed index, the group
# (one sampled configuration or grid row, run once per seed).
ROW, SEED, GROUP = "row", "seed", "group"
# Set on trials that train every step whatever the scheduler thinks: the baseline's and racing seeds.
FULL = "full"
META_KEYS = (ROW, SEED, GROUP, FULL)
BASELINE_ROW = 1  # a tpe/random sweep's second base: its baseline
MAX_COMBINATIONS = 100_000  # beyond this a space is too large to check exhaustively before starting


def training_dict(job: SweepJobConfig | Config) -> dict[str, Any]:
    """The training part of a sweep job as a plain dict (what a trial, and `switchsweep train`, runs)."""
    tree = dataclasses.asdict(job)
    tree.pop("sweep", None)
    return tree


def _spec_kind(spec: ParamSpec) -> tuple[str, Any]:
    for kind in SPEC_KINDS:
        value = getattr(spec, kind)
        if value is not None:
            return kind, value
    raise ConfigError(f"sweep.space entry {spec.key} sets no distribution")


def optuna_distributions(space: Sequence[ParamSpec]) -> dict[str, BaseDistribution]:
    """What Optuna samples: one fixed distribution per searched key (a `fraction_of` key as its
    fraction u in [0, 1], so the distribution of k does not change with M)."""
    out: dict[str, BaseDistribution] = {}
    for spec in space:
        kind, v = _spec_kind(spec)
        if kind == "choice":
            out[spec.key] = CategoricalDistribution(list(v))
        elif kind in ("loguniform", "uniform"):
            out[spec.key] = FloatDistribution(float(v[0]), float(v[1]), log=kind == "loguniform")
        elif kind == "randint":
            out[spec.key] = IntDistribution(int(v[0]), int(v[1]))
        else:
            out[spec.key + FRACTION_SUFFIX] = FloatDistribution(0.0, 1.0)
    return out


def fraction_to_int(u: float, n: int) -> int:
    """k = ceil(u * n) in 1..n: for u ~ U(0, 1] every k is equally likely."""
    return min(n, max(1, math.ceil(u * n)))


def int_to_fraction(k: int, n: int) -> float:
    """A fraction u in the middle of k's interval ((k-1)/n, k/n], so fraction_to_int(u, n) == k exactly."""
    return (k - 0.5) / n


def resolve_point(space: Sequence[ParamSpec], sampled: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The training settings of one sampled point: `fraction_of` keys resolved to integers from the
    sampled (or, if not searched, the base config's) value of what they are a fraction of."""
    point = {spec.key: sampled[spec.key] for spec in space if spec.fraction_of is None}
    for spec in space:
        if spec.fraction_of is not None:
            n = (
                point[spec.fraction_of]
                if spec.fraction_of in point
                else OmegaConf.select(OmegaConf.create(base), spec.fraction_of)
            )
            point[spec.key] = fraction_to_int(sampled[spec.key + FRACTION_SUFFIX], int(n))
    return point


def to_sampled(space: Sequence[ParamSpec], point: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `resolve_point` for a given point (points_to_evaluate): Optuna's parameters."""
    sampled: dict[str, Any] = {}
    for spec in space:
        if spec.fraction_of is None:
            sampled[spec.key] = point[spec.key]
        else:
            n = point.get(spec.fraction_of, OmegaConf.select(OmegaConf.create(base), spec.fraction_of))
            sampled[spec.key + FRACTION_SUFFIX] = int_to_fraction(int(point[spec.key]), int(n))
    return sampled


def param_space(sweep: SweepConfig) -> dict[str, Any]:
    """Tune's param_space: every (row, seed) for grid; nothing for tpe/random, whose searcher
    hands each trial its resolved settings."""
    if sweep.search == "grid":
        return {ROW: tune.grid_search(list(range(len(sweep.grid)))), SEED: tune.grid_search(list(range(sweep.seeds)))}
    return {}


def reporter_columns(sweep: SweepConfig) -> list[str]:
    """The settings that tell a sweep's trials apart in its console table."""
    if sweep.search == "grid":
        return [ROW, SEED]
    return [GROUP, SEED, *(spec.key for spec in sweep.space)]


def apply_params(base: dict[str, Any], params: dict[str, Any]) -> DictConfig:
    """The trial's training config on the schema (one merge; `to_config` validates it): `base` with the
    trial's settings set and train.seed offset by its seed index."""
    cfg = OmegaConf.merge(OmegaConf.structured(Config), base)
    for key, value in params.items():
        if key not in META_KEYS:
            OmegaConf.update(cfg, key, value)
    cfg.train.seed = int(cfg.train.seed) + int(params.get(SEED, 0))
    return cfg


def config_from_dict(tree: dict[str, Any]) -> Config:
    """A validated Config from a plain dict (trial side)."""
    return to_config(OmegaConf.merge(OmegaConf.structured(Config), tree))


def _values(spec: ParamSpec) -> list[Any]:
    """The values a key's validity can depend on: every choice, or both ends of a range."""
    kind, v = _spec_kind(spec)
    return list(v) if kind == "choice" else [v[0], v[1]]


def reachable_points(space: Sequence[ParamSpec], base: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every combination of every choice and range end, with each `fraction_of` key at every
    integer 1..N it can reach for that combination's N."""
    plain = [s for s in space if s.fraction_of is None]
    fractions = [s for s in space if s.fraction_of is not None]
    size = math.prod(len(_values(s)) for s in plain)
    if size > MAX_COMBINATIONS:
        raise ConfigError(
            f"sweep.space has {size} corner combinations, too many to check before starting: "
            "search fewer settings or fewer choices"
        )
    base_cfg = OmegaConf.create(base)
    for combo in itertools.product(*(_values(s) for s in plain)):
        point = dict(zip((s.key for s in plain), combo))
        tops = [int(point.get(s.fraction_of, OmegaConf.select(base_cfg, s.fraction_of))) for s in fractions]
        for ks in itertools.product(*(range(1, n + 1) for n in tops)):
            yield {**point, **dict(zip((s.key for s in fractions), ks))}


def _with_settings(typed: DictConfig, settings: dict[str, Any]) -> DictConfig:
    """A copy of the typed config with dotted settings applied (a value of the wrong type raises ConfigError)."""
    cfg = copy.deepcopy(typed)
    try:
        for key, value in settings.items():
            OmegaConf.update(cfg, key, value)
    except OmegaConfBaseException as e:
        raise ConfigError(str(e).splitlines()[0]) from e
    return cfg


def check_space(job: SweepJobConfig, base: dict[str, Any]) -> int:
    """Every configuration the space can reach, as a whole, and every points_to_evaluate entry must be
    a valid training config; returns how many were checked. The first invalid one is named in one line."""
    typed = OmegaConf.merge(OmegaConf.structured(Config), base)
    count = 0
    for point in reachable_points(job.sweep.space, base):
        try:
            validate(_with_settings(typed, point))
        except ConfigError as e:
            where = ", ".join(f"{k}={v}" for k, v in point.items())
            raise ConfigError(f"sweep.space can reach an invalid config at {where}: {e}") from e
        count += 1
    for i, point in enumerate(job.sweep.points_to_evaluate):
        try:
            validate(_with_settings(typed, dict(point)))
        except ConfigError as e:
            raise ConfigError(f"sweep.points_to_evaluate[{i}]: {e}") from e
    return count


def baseline_base(overrides: Sequence[str], model: str) -> dict[str, Any]:
    """The baseline's training dict: the sweep's own composition with its model group replaced."""
    kept = [o for o in overrides if override_key(o) != "model"]
    try:
        return training_dict(to_config(compose_config([*kept, f"model={model}"], config_name="sweep_job")))
    except ConfigError as e:
        raise ConfigError(f"sweep.baseline={model}: {e}; name a model of conf/model (e.g. dit) or none") from e


def trial_bases(job: SweepJobConfig, overrides: Sequence[str]) -> list[dict[str, Any]]:
    """Validated base training dicts of a validated job (`load_sweep_config`): one per grid row (composed
    with the row's overrides), or, for tpe/random, the job's own after checking every corner of the space,
    then the baseline's (`BASELINE_ROW`) where the sweep has one."""
    if job.sweep.search != "grid":
        base = training_dict(job)
        check_space(job, base)
        model = baseline_model(job.sweep)
        return [base] if model is None else [base, baseline_base(overrides, model)]
    bases = []
    for i, row in enumerate(job.sweep.grid):
        try:
            composed = compose_config([*overrides, *row], config_name="sweep_job")
            row_job = to_config(composed)
        except ConfigError as e:
            raise ConfigError(f"sweep.grid[{i}] {list(row)}: {e}") from e
        bases.append(training_dict(row_job))
    return bases
