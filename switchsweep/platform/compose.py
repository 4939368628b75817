"""Compose the Hydra config tree shipped in `switchsweep/conf` with command-line overrides."""

from __future__ import annotations

from typing import Sequence

from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from switchsweep.platform.checkpoint import load_checkpoint
from switchsweep.platform.config import Config, to_config, validate_eval
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
    text = " ".join(parts).replace("Available options in", "available in").replace("To append to your config use", "unknown key; to add one use")
    return text[:300] or "unparseable override"


def compose_config(overrides: Sequence[str], config_name: str = "config") -> DictConfig:
    """The composed (unvalidated) config; bad keys, values or group names raise ConfigError."""
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise ConfigError(f"invalid override: {_one_line(e)}") from e


def _override_value(overrides: Sequence[str], key: str) -> str | None:
    for o in overrides:
        k, _, value = o.partition("=")
        if k.lstrip("+") == key and value not in ("", "null"):
            return value
    return None


def load_eval_config(overrides: Sequence[str]) -> Config:
    """Config for `switchsweep evaluate checkpoint=PATH eval.*=...`: the model, data and diffusion
    come from the checkpoint, the evaluation settings from the command line."""
    composed = compose_config(overrides)
    validate_eval(composed.eval, composed.diffusion.num_timesteps)  # again below against the checkpoint's T
    path = composed.checkpoint
    if not path:
        raise ConfigError("checkpoint is not set: pass checkpoint=<path of a ckpt.pt written by switchsweep train>")
    not_eval = [o for o in overrides if not o.lstrip("+").startswith(("eval.", "checkpoint="))]
    if not_eval:
        raise ConfigError(f"{not_eval[0]}: evaluate takes the model from the checkpoint; only checkpoint= and eval.* apply")
    saved = load_checkpoint(path, setting="checkpoint", mmap=True)["config"]
    merged = OmegaConf.merge(OmegaConf.structured(Config), saved)
    merged.eval = composed.eval
    merged.checkpoint = path
    return to_config(merged)


def load_config(overrides: Sequence[str]) -> Config:
    """Validated config for `switchsweep train` and friends.

    With `train.resume=PATH` the checkpoint's own resolved config is the base and only the dotted
    overrides given here apply on top (e.g. `train.steps=600`), so a resumed run is the same run.
    """
    resume = _override_value(overrides, "train.resume")
    if resume is None:
        return to_config(compose_config(overrides))
    groups = [o for o in overrides if "=" in o and "." not in o.partition("=")[0]]
    if groups:
        raise ConfigError(f"{groups[0]}: a resumed run keeps its checkpoint's config groups: drop it or start a new run")
    saved = load_checkpoint(resume, mmap=True)["config"]
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), saved, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as e:
        raise ConfigError(f"invalid override: {_one_line(e)}") from e
    return to_config(cfg)
