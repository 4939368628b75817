"""Compose the Hydra config tree shipped in `switchsweep/conf` with command-line overrides."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from switchsweep.config.schema import Config, DataConfig, to_config, validate_eval, validate_scoring
from switchsweep.config.sweep_checks import validate_sweep
from switchsweep.config.sweep_schema import SweepJobConfig
from switchsweep.platform.checkpoint import load_checkpoint
from switchsweep.platform.errors import ConfigError

CONFIG_MODULE = "switchsweep.conf"


def _one_line(e: BaseException) -> str:
    """Hydra and OmegaConf spread the reason over several lines and chained causes: keep the informative part."""
    parts: list[str] = []
    while e is not None:
        text = str(e).split("Config search path")[0].split("See https://")[0]
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith(("full_key:", "object_type", "reference_type")) and line not in parts:
                parts.append(line)
        e = e.__cause__
    text = (
        " ".join(parts)
        .replace("Available options in", "available in")
        .replace("To append to your config use", "unknown key; to add one use")
    )
    return text[:300] or "unparseable override"


def compose_config(overrides: Sequence[str], config_name: str = "config") -> DictConfig:
    """The composed (unvalidated) config; bad keys, values or group names raise ConfigError."""
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise ConfigError(f"invalid override: {_one_line(e)}") from e


def split_override(override: str) -> tuple[str, str]:
    """(key, value) of a Hydra override, without its +, ++ or ~ prefix: `+sweep.ray.x=1` -> ("sweep.ray.x", "1")."""
    key, _, value = override.lstrip("+~").partition("=")
    return key, value


def override_key(override: str) -> str:
    return split_override(override)[0]


def _override_value(overrides: Sequence[str], key: str) -> str | None:
    for o in overrides:
        k, value = split_override(o)
        if k == key and value not in ("", "null"):
            return value
    return None


PREPARE_SETTINGS = ("data.root", "data.vae", "data.resolution", "data.flip", "data.shard_size")
# What a user may reach for instead of the setting prepare reads.
_PREPARE_INSTEAD = {
    "data.image_size": "the latent size follows from data.resolution (pixels / 8 with an SD VAE): set data.resolution",
    "data.channels": "the latent channels are the VAE's (data.vae)",
    "data.num_classes": "the classes are data.root's class folders",
}


def load_data_config(overrides: Sequence[str]) -> DataConfig:
    """The data section alone, for `switchsweep prepare`: a dataset preset (data=imagenet256) brings
    training and evaluation settings that preparing its latents does not need, so they are not checked.
    A setting given on the command line that prepare does not read is refused, never ignored."""
    for o in overrides:
        key = override_key(o)
        if key != "data" and key not in PREPARE_SETTINGS:
            why = _PREPARE_INSTEAD.get(key, f"prepare reads only {', '.join(PREPARE_SETTINGS)} (and a data=<preset>)")
            raise ConfigError(f"{key} is not used by prepare: {why}")
    composed = compose_config(overrides)
    try:
        OmegaConf.resolve(composed.data)
        return OmegaConf.to_object(composed.data)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise ConfigError(f"invalid override: {_one_line(e)}") from e


SCORED_WITH = ("feature_net", "inception_weights")


def load_eval_config(overrides: Sequence[str]) -> Config:
    """Config for `switchsweep evaluate checkpoint=PATH eval.*=...`: the model, data, diffusion and
    feature network come from the checkpoint, the other evaluation settings from the command line."""
    composed = compose_config(overrides)
    validate_eval(composed.eval, composed.diffusion.num_timesteps)  # again below against the checkpoint's T
    validate_scoring(composed.eval)  # what the command line asks for; below, with what the checkpoint brings
    path = composed.checkpoint
    if not path:
        raise ConfigError("checkpoint is not set: pass checkpoint=<path of a ckpt.pt written by switchsweep train>")
    not_eval = [o for o in overrides if not (override_key(o).startswith("eval.") or override_key(o) == "checkpoint")]
    if not_eval:
        raise ConfigError(
            f"{not_eval[0]}: evaluate takes the model from the checkpoint; only checkpoint= and eval.* apply"
        )
    saved = load_checkpoint(path, setting="checkpoint", mmap=True)["config"]
    merged = OmegaConf.merge(OmegaConf.structured(Config), saved)
    trained_with = OmegaConf.to_container(merged.eval)
    merged.eval = composed.eval
    for key in SCORED_WITH:  # the network that scores this data, unless the command line picks another
        if _override_value(overrides, f"eval.{key}") is None:
            merged.eval[key] = trained_with[key]
    merged.checkpoint = path
    cfg = to_config(merged)
    validate_scoring(cfg.eval, cfg.data.name)
    return cfg


def _on_top_of(saved: Any, overrides: Sequence[str], setting: str) -> Config:
    """`saved` (a resolved config) with dotted overrides on top; config-group overrides are refused."""
    groups = [o for o in overrides if "=" in o and "." not in override_key(o)]
    if groups:
        raise ConfigError(
            f"{groups[0]}: {setting} fixes the config groups; give dotted overrides only (e.g. model.top_k=1)"
        )
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), saved)
    except OmegaConfBaseException as e:  # name the setting only: the file may hold anything
        key = getattr(e, "full_key", "") or "a setting"
        raise ConfigError(
            f"{setting}: {key} is not a setting of this version's config or has a value of the wrong type: "
            "fix it or write the file again with switchsweep export"
        ) from None
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as e:
        raise ConfigError(f"invalid override: {_one_line(e)}") from e
    return to_config(cfg)


def _config_file(path: str) -> Any:
    """The YAML mapping in `path`. Its errors say where, never what the file holds (it may be any file)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {path}: no such file: give a YAML written by switchsweep export or --cfg")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"--config {path}: not valid YAML{where}: give a YAML written by switchsweep export or --cfg"
        ) from None
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise ConfigError(
            f"--config {path}: not a readable YAML file ({type(e).__name__}): give a YAML written by "
            "switchsweep export or --cfg"
        ) from None
    if not isinstance(data, dict) or not set(data) <= {f.name for f in dataclasses.fields(Config)}:
        raise ConfigError(
            f"--config {path}: not a switchsweep config (its top level must be sections such as model:, "
            "train:, data:): give a YAML written by switchsweep export or --cfg"
        )
    return OmegaConf.create(data)


def load_config(overrides: Sequence[str], config_file: str | None = None) -> Config:
    """Validated config for `switchsweep train` and friends.

    With `train.resume=PATH` the checkpoint's own resolved config is the base, and with `--config FILE`
    that file is (e.g. one written by `switchsweep export`); only dotted overrides apply on top, so a
    resumed run is the same run.
    """
    resume = _override_value(overrides, "train.resume")
    if resume is not None:
        return _on_top_of(load_checkpoint(resume, mmap=True)["config"], overrides, "train.resume")
    if config_file is not None:
        return _on_top_of(_config_file(config_file), overrides, "--config")
    return to_config(compose_config(overrides))


def load_sweep_config(overrides: Sequence[str]) -> SweepJobConfig:
    """Validated `switchsweep sweep` job: the training config (checked as for train) plus its sweep section."""
    job = to_config(compose_config(overrides, config_name="sweep_job"))
    validate_sweep(job)
    return job  # type: ignore[return-value]
