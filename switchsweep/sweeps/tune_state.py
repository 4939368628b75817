"""Tune's experiment state, made readable again before a resume.

Tune writes its state (`experiment_state-<driver start>.json`) into the driver's staging folder on
this machine, then copies it into the sweep's storage from a background thread. It snapshots at every
checkpoint an inline trial reports, so a driver killed then can leave the storage copy cut short; a
Tune restore then logs the error and starts the experiment afresh. The staging copy, written before
the copy began, is whole: it is put back in place. With no whole copy the cut-short file is set aside
and Tune resumes from the previous driver's state, or the resume is refused in one line.
"""

from __future__ import annotations

import glob
import json
import os

import pyarrow.fs as pafs

from switchsweep.platform.errors import ConfigError
from switchsweep.platform.storage import storage_fs

STATE_PREFIX = "experiment_state-"


def _whole(text: bytes) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _states(tune_path: str) -> tuple[pafs.FileSystem, list[str]]:
    """Tune's experiment-state files under `tune_path` (a path or URI), oldest first (their names hold
    the start time of the driver that wrote them)."""
    fs, base = storage_fs(tune_path)
    infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    return fs, sorted(i.path for i in infos if i.base_name.startswith(STATE_PREFIX) and i.base_name.endswith(".json"))


def repair(tune_path: str, ray_temp_dir: str) -> str | None:
    """Make the newest experiment state under `tune_path` readable; returns what was done (None: nothing
    needed). `ray_temp_dir` is Ray's temp folder on this machine, where the staging copies live."""
    fs, found = _states(tune_path)
    if not found:
        return None
    newest = found[-1]
    with fs.open_input_stream(newest) as f:
        if _whole(f.readall()):
            return None
    name, experiment = newest.rsplit("/", 1)[-1], newest.rsplit("/", 2)[-2]
    staged = glob.glob(os.path.join(ray_temp_dir, "session_*", "artifacts", "*", experiment, "driver_artifacts", name))
    for copy in sorted({os.path.realpath(c) for c in staged}, key=os.path.getmtime, reverse=True):
        with open(copy, "rb") as f:
            text = f.read()
        if _whole(text):
            with fs.open_output_stream(newest) as out:
                out.write(text)
            return f"{name} was cut short (the driver was killed while saving it): put back from {copy}"
    if len(found) == 1:
        raise ConfigError(
            f"--resume: Tune's state {newest} was cut short (the driver was killed while saving it) and "
            "no whole copy is left on this machine: start a new sweep"
        )
    fs.move(newest, f"{newest}.cut-short")
    return f"{name} was cut short (the driver was killed while saving it): resuming from {found[-2].rsplit('/', 1)[-1]}"
