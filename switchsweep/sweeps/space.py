"""From a sweep config to what Tune searches, and from one sampled point back to a training config.

Trials receive plain resolved dicts (never Hydra state): one base training config per grid row (one in
all for tpe/random), plus the sampled values applied as dotted overrides.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Sequence

from omegaconf import OmegaConf
from ray import tune

from switchsweep.platform.compose import compose_config
from switchsweep.platform.config import Config, to_config
from switchsweep.platform.errors import ConfigError
from switchsweep.platform.sweep_config import SPEC_KINDS, ParamSpec, SweepConfig, SweepJobConfig, validate_sweep

FRACTION_SUFFIX = ":fraction"
ROW, REPEAT = "row", "repeat"


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


def param_space(sweep: SweepConfig) -> dict[str, Any]:
    """Tune's param_space: distributions for tpe/random, a grid of (row, repeat) for grid."""
    if sweep.search == "grid":
        return {ROW: tune.grid_search(list(range(len(sweep.grid)))), REPEAT: tune.grid_search(list(range(sweep.num_trials)))}
    space: dict[str, Any] = {}
    for spec in sweep.space:
        kind, v = _spec_kind(spec)
        if kind == "choice":
            space[spec.key] = tune.choice(list(v))
        elif kind == "loguniform":
            space[spec.key] = tune.loguniform(v[0], v[1])
        elif kind == "uniform":
            space[spec.key] = tune.uniform(v[0], v[1])
        elif kind == "randint":
            space[spec.key] = tune.randint(v[0], v[1] + 1)  # Tune's upper bound is exclusive
        else:
            space[spec.key + FRACTION_SUFFIX] = tune.uniform(0.0, 1.0)
    return space


def apply_params(base: dict[str, Any], space: Sequence[ParamSpec | dict], params: dict[str, Any]) -> dict[str, Any]:
    """The trial's training dict: `base` with the sampled values set; `fraction_of` entries become
    integers in 1..N as ceil(u * N), N read after the other values are set."""
    cfg = OmegaConf.create(copy.deepcopy(base))
    specs = [OmegaConf.structured(ParamSpec(**s)) if isinstance(s, dict) else s for s in space]
    for spec in specs:
        if spec.fraction_of is None:
            OmegaConf.update(cfg, spec.key, params[spec.key])
    for spec in specs:
        if spec.fraction_of is not None:
            n = int(OmegaConf.select(cfg, spec.fraction_of))
            OmegaConf.update(cfg, spec.key, max(1, math.ceil(params[spec.key + FRACTION_SUFFIX] * n)))
    return OmegaConf.to_container(cfg)  # type: ignore[return-value]


def config_from_dict(tree: dict[str, Any]) -> Config:
    """A validated Config from a plain dict (trial side)."""
    return to_config(OmegaConf.merge(OmegaConf.structured(Config), tree))


def _extremes(spec: ParamSpec) -> list[Any]:
    kind, v = _spec_kind(spec)
    if kind == "choice":
        return list(v)
    if kind in ("loguniform", "uniform", "randint"):
        return [v[0], v[1]]
    return []


def _check_space_corners(job: SweepJobConfig, base: dict[str, Any]) -> None:
    """Every value a searched setting can take must give a valid training config on its own, and
    `fraction_of` settings at 1 and at the largest value of what they are a fraction of."""
    by_key = {s.key: s for s in job.sweep.space}
    for spec in job.sweep.space:
        if spec.fraction_of is not None:
            ref = by_key.get(spec.fraction_of)
            tops = _extremes(ref) if ref is not None else [OmegaConf.select(OmegaConf.create(base), spec.fraction_of)]
            cases = [{spec.fraction_of: max(tops), spec.key: 1}, {spec.fraction_of: max(tops), spec.key: max(tops)}]
        else:
            cases = [{spec.key: value} for value in _extremes(spec)]
        for case in cases:
            cfg = OmegaConf.create(copy.deepcopy(base))
            for key, value in case.items():
                OmegaConf.update(cfg, key, value)
            try:
                to_config(OmegaConf.merge(OmegaConf.structured(Config), cfg))
            except ConfigError as e:
                raise ConfigError(f"sweep.space entry {spec.key} can reach an invalid config ({e})") from e


def trial_bases(job: SweepJobConfig, overrides: Sequence[str]) -> list[dict[str, Any]]:
    """Validated base training dicts: one per grid row (composed with the row's overrides), or the
    job's own for tpe/random after checking every corner of the space."""
    validate_sweep(job)
    if job.sweep.search != "grid":
        base = training_dict(job)
        _check_space_corners(job, base)
        return [base]
    bases = []
    for i, row in enumerate(job.sweep.grid):
        try:
            composed = compose_config([*overrides, *row], config_name="sweep_job")
            row_job = to_config(composed)
        except ConfigError as e:
            raise ConfigError(f"sweep.grid[{i}] {list(row)}: {e}") from e
        bases.append(training_dict(row_job))
    return bases
