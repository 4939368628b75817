"""Names of a trial's design, from its flattened config (values as logged): the run name MLflow shows
and the short label of tables and plots. Light on imports: every trial names its MLflow run with it."""

from __future__ import annotations

import dataclasses
from typing import Any

from switchsweep.config.schema import ModelConfig


def _design(params: dict[str, Any]) -> tuple[str, list[str], list[str]]:
    """The model name, what sets this design apart and the run-name parts, from a flattened config
    (values as logged), as the config schema's design settings say (`config.schema.ModelConfig`)."""
    name = str(params.get("model.name", "?"))
    extra: list[str] = []
    run: list[str] = []
    for f in dataclasses.fields(ModelConfig):
        how = f.metadata
        if name not in how.get("models", ()):
            continue
        value = params.get(f"model.{f.name}", f.default)
        if "label" in how:
            extra.append(f"{how['label']}={value}")
        elif how.get("flag") and str(value) != str(f.default):
            extra.append(str(value))
        elif "off" in how and float(value) == 0:
            extra.append(how["off"])
        elif "on" in how and float(value) > 0:
            extra.append(how["on"])
        if "run" in how:
            text = f"{float(value):.3g}" if how.get("decimal") else f"{float(value):g}"
            run.append(f"{how['run']}{text if not how.get('decimal') or '.' in text or 'e' in text else text + '.0'}")
    return name, extra, run


def variant_label(params: dict[str, Any]) -> str:
    """A short name of the design a trial trained, from its flattened config, e.g.
    switch_dit(M=4,k=1,noisy,direct,no-prior) or dit_moe(M=8,k=2,shared=1)+min_snr."""
    name, extra, _ = _design(params)
    label = f"{name}({','.join(extra)})" if extra else name
    weighting = params.get("train.loss_weighting", "constant")
    return label if weighting == "constant" else f"{label}+{weighting}"


def run_name(params: dict[str, Any], seed_index: int) -> str:
    """A trial's MLflow run name: its design and seed, e.g. `switch_dit M3 k2 ldp1.0 a4 s0`,
    `dit_moe M8 k2 shared1 s0`, `dit uw s1` (a setting with a run-name part shows there, not as a flag)."""
    name, extra, run = _design(params)
    off = {f.metadata["off"] for f in dataclasses.fields(ModelConfig) if "off" in f.metadata and "run" in f.metadata}
    parts = [name, *(e.replace("=", "") for e in extra if e not in off), *run]
    weighting = params.get("train.loss_weighting", "constant")
    if weighting != "constant":
        parts.append(str(weighting))
    return " ".join([*parts, f"s{seed_index}"])
