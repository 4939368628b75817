"""Where a sweep lives and which one a command means: its folder under the sweeps root, its storage (Tune's
state and Train's checkpoints, possibly a bucket), and its record, new, resumed or extended."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from switchsweep.config.compose import override_key
from switchsweep.config.sweep_schema import SweepJobConfig
from switchsweep.platform.errors import ConfigError
from switchsweep.platform.sweep_dir import SweepDir
from switchsweep.platform.sweep_record import FINISHED, RUNNING, SweepRecord, stored_sweeps, sweep_status, sweeps
from switchsweep.platform.uris import redact

# Settings a resumed sweep may change: where and how it runs, never what it searches.
RESUME_KEYS = ("sweep", "sweep.id", "sweep.root", "sweep.tracking_uri", "sweep.budget")
RESUME_PREFIXES = ("sweep.ray.",)


@dataclass(frozen=True)
class SweepCommand:
    """What `switchsweep sweep` is asked to do with the sweep: start it (the default), `--resume` the
    interrupted one, or `--extend` a finished one by `extend` configurations."""

    resume: bool = False
    extend: int = 0

    @property
    def continues(self) -> bool:
        return self.resume or self.extend > 0


def _where_it_runs(override: str) -> bool:
    """An override a resumed sweep may change (RESUME_KEYS, RESUME_PREFIXES)."""
    key = override_key(override)
    return key in RESUME_KEYS or key.startswith(RESUME_PREFIXES)


def stored(overrides: Sequence[str]) -> list[str]:
    """The overrides that define the sweep (not which sweep this one command named)."""
    return [o for o in overrides if override_key(o) != "sweep.id"]


def sweeps_root(job: SweepJobConfig) -> Path:
    return Path(job.sweep.root).expanduser().resolve() / "sweeps" / job.sweep.name


def sweep_storage(job: SweepJobConfig, sweep_id: str) -> str:
    """Where a sweep's Tune state and Train checkpoints live: <storage_path>/<name>/<id>, so sweeps that
    share a storage_path (a bucket) never touch each other's state. The default storage_path,
    <root>/sweeps, puts them in the sweep's own folder."""
    base = job.sweep.ray.storage_path or str(sweeps_root(job).parent)
    return join(base, job.sweep.name, sweep_id)


def join(base: str, *parts: str) -> str:
    """A path under a local directory or a URI (s3://bucket/x)."""
    return str(Path(base, *parts)) if "://" not in base else "/".join([base.rstrip("/"), *parts])


def find_sweep(job: SweepJobConfig, finished: bool | None = None) -> Path:
    """The sweep named by sweep.id, else the latest one that is (not) finished (None: either): on this
    machine, else in the sweep's storage (a new head after the old one was lost), copied here first."""
    root = sweeps_root(job)
    flag = {True: "--extend", False: "--resume", None: f"sweep={job.sweep.name}"}[finished]
    if job.sweep.id:
        path = root / job.sweep.id
        if not SweepRecord.exists(path) and not _from_storage(job, None):  # its status is checked below
            raise ConfigError(f"sweep.id={job.sweep.id}: no such sweep under {root}: check the id (ls {root})")
        status = sweep_status(path)
        if finished is not None and (status == FINISHED) != finished:
            hint = "resume it with --resume first" if finished else "add trials with --extend N instead"
            if status == RUNNING:
                hint = "its driver is still running: wait for it or stop it"
            raise ConfigError(f"{flag}: sweep {job.sweep.id} is {status}: {hint}")
        return path
    found = [p for p in sweeps(root) if finished is None or (sweep_status(p) == FINISHED) == finished]
    if not found and (fetched := _from_storage(job, finished)):
        found = [fetched]
    if not found:
        what = {True: "finished ", False: "interrupted ", None: ""}[finished]
        hint = (
            f"start one without {flag}"
            if finished is not None
            else f"run `switchsweep sweep sweep={job.sweep.name}` first"
        )
        raise ConfigError(f"{flag}: no {what}{job.sweep.name} sweep under {root}: {hint}")
    return found[-1]


def _from_storage(job: SweepJobConfig, finished: bool | None) -> Path | None:
    """The sweep (sweep.id's, else the latest one that is (not) finished) whose state the sweep's storage
    keeps but this machine does not, copied into its folder here; None if there is none."""
    base = job.sweep.ray.storage_path
    if not base:  # the default storage is this machine's own sweeps folder
        return None
    kept = [
        (folder, record)
        for folder, record in stored_sweeps(join(base, job.sweep.name))
        if (not job.sweep.id or record.sweep_id == job.sweep.id)
        and (finished is None or (record.status == FINISHED) == finished)
        and not SweepRecord.exists(sweeps_root(job) / record.sweep_id)
    ]
    if not kept:
        return None
    folder, record = kept[-1]
    local = SweepDir(sweeps_root(job) / record.sweep_id)
    local.copy_from(folder)
    print(f"switchsweep: sweep {record.sweep_id}'s state comes from {redact(folder)}", file=sys.stderr)
    return local.path


def open_record(job: SweepJobConfig, overrides: Sequence[str], command: SweepCommand) -> SweepRecord:
    """The sweep's record (its folder: `path`): a new one, the interrupted one being resumed, or the
    finished one being extended."""
    s = job.sweep
    if command.continues:
        if command.resume and command.extend:
            raise ConfigError("--resume and --extend together: resume the interrupted sweep first, then extend it")
        if command.extend and s.search == "grid":
            raise ConfigError(
                f"--extend with sweep={s.name}: a grid runs a fixed set of rows; start a new sweep "
                "(e.g. with more sweep.seeds) instead"
            )
        sweep_dir = find_sweep(job, finished=bool(command.extend))
        record = SweepRecord.load(sweep_dir)
        changed = [o for o in overrides if not _where_it_runs(o) and o not in record.overrides]
        if changed:
            raise ConfigError(
                f"{changed[0]}: a resumed or extended sweep keeps its search and training config; "
                "drop it or start a new sweep"
            )
        if command.extend:
            record.extensions.append(command.extend)
            record.tune_dir = f"tune-ext{len(record.extensions)}"
        return record
    sweep_id = s.id or f"{s.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    sweep_dir = sweeps_root(job) / sweep_id
    if sweep_dir.exists():
        raise ConfigError(
            f"sweep {sweep_id} already exists at {sweep_dir}: resume it with --resume or pick another sweep.id"
        )
    # Credentials in URIs are never stored: a resume is given them again.
    kept = [redact(o) for o in stored(overrides)]
    return SweepRecord(sweep_dir, sweep_id=sweep_id, name=s.name, overrides=kept, storage=sweep_storage(job, sweep_id))


def resume_overrides(record: SweepRecord, given: Sequence[str]) -> list[str]:
    """The sweep's stored overrides, with where-it-runs settings given again on the command line taking
    their place; a stored one whose credentials were redacted must be given again."""
    keys = {override_key(o) for o in given if _where_it_runs(o)}
    stored = [o for o in record.overrides if override_key(o) not in keys]
    hidden = [o for o in stored if "***" in o]
    if hidden:
        key = override_key(hidden[0])
        raise ConfigError(
            f"{key}: its credentials were not stored with the sweep: give {key}=... again with --resume "
            "(or put them in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)"
        )
    return [*stored, *filter(_where_it_runs, given)]
