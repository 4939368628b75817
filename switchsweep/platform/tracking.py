"""MLflow tracking through one small client wrapper: experiments, parent/child runs, metrics, artifacts.

Everything goes through `MlflowClient` with explicit run ids (no fluent "active run" state), so the
same code works in the sweep driver, in a trial and in a Ray Train worker process. SQLite stores
serialise writers; a write that meets "database is locked" is retried with backoff.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from switchsweep.platform.errors import ConfigError, SwitchsweepError

T = TypeVar("T")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep CLI output to our own lines

PARENT_TAG = "mlflow.parentRunId"
SWEEP_TAG = "switchsweep.sweep_id"
TRIAL_TAG = "switchsweep.trial_id"
ROLE_TAG = "switchsweep.role"  # "sweep" (parent) or "trial" (child)
GROUP_TAG = "switchsweep.group"  # the configuration a trial runs (one per seed of it)
SEED_TAG = "switchsweep.seed_index"
OBJECTIVES_TAG = "switchsweep.objectives"  # comma-separated, on the parent of a multi-objective sweep
# MLflow 3's experiment kind for model training (the UI's view itself follows its workflowType link parameter).
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
PARAM_VALUE_LIMIT = 6000  # MLflow's limit on a param value's length


def default_tracking_uri(root: str | Path) -> str:
    """The local default store: an absolute SQLite URI, so Tune's per-trial chdir cannot move it."""
    return f"sqlite:///{(Path(root).expanduser().resolve() / 'mlflow.db')}"


def require_store(uri: str) -> str:
    """`uri`, once a local SQLite store is known to exist: reading must not create an empty one."""
    local = uri.removeprefix("sqlite:///")
    if local != uri and not Path(local).is_file():
        raise ConfigError(f"no MLflow store at {local}: run `switchsweep sweep` first, or set sweep.root to the folder "
                          "a sweep used (sweep.root=DIR)")
    return uri


def git_commit(cwd: str | Path = Path(__file__).parent) -> str:
    """The commit of the installed source tree (an editable install), or "unknown"."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"top_k": 2}} -> {"model.top_k": 2}; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _retry(fn: Callable[[], T], attempts: int = 6) -> T:
    for i in range(attempts):
        try:
            return fn()
        except MlflowException as e:
            if "locked" not in str(e) or i == attempts - 1:
                raise
            time.sleep(0.2 * 2**i)
    raise AssertionError("unreachable")


class Tracker:
    def __init__(self, uri: str):
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)

    def experiment(self, name: str, artifact_root: str | Path | None = None) -> str:
        """The id of experiment `name`, created (with an absolute artifact location) if missing, and
        marked as a model-training experiment (not a GenAI one)."""
        exp = _retry(lambda: self.client.get_experiment_by_name(name))
        if exp is not None:
            experiment_id = exp.experiment_id
        else:
            location = None if artifact_root is None else (Path(artifact_root).expanduser().resolve() / name).as_uri()
            try:
                experiment_id = _retry(lambda: self.client.create_experiment(name, artifact_location=location))
            except MlflowException as e:
                raise SwitchsweepError(f"MLflow at {self.uri} refused to create experiment {name!r}: {str(e).splitlines()[0]}") from e
        _retry(lambda: self.client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND))
        return experiment_id

    def find_experiment(self, name: str) -> str | None:
        exp = _retry(lambda: self.client.get_experiment_by_name(name))
        return None if exp is None else exp.experiment_id

    def create_run(self, experiment_id: str, name: str, tags: Mapping[str, Any]) -> str:
        run = _retry(lambda: self.client.create_run(experiment_id, run_name=name, tags={k: str(v) for k, v in tags.items()}))
        return run.info.run_id

    def search(self, experiment_id: str, filter_string: str, order_by: list[str] | None = None) -> list:
        return list(_retry(lambda: self.client.search_runs([experiment_id], filter_string, order_by=order_by, max_results=5000)))

    def child_run(self, experiment_id: str, parent_id: str, sweep_id: str, trial_id: str, name: str,
                  tags: Mapping[str, Any]) -> tuple[str, bool]:
        """The trial's run under `parent_id`: the existing one on resume (never a duplicate), else a new one."""
        found = self.search(experiment_id, f"tags.`{PARENT_TAG}` = '{parent_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'")
        if found:
            run_id = found[0].info.run_id
            _retry(lambda: self.client.update_run(run_id, status="RUNNING"))
            return run_id, False
        all_tags = {PARENT_TAG: parent_id, SWEEP_TAG: sweep_id, TRIAL_TAG: trial_id, ROLE_TAG: "trial", **tags}
        return self.create_run(experiment_id, name, all_tags), True

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)[:PARAM_VALUE_LIMIT]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow's per-batch param limit
            chunk = items[start : start + 100]
            _retry(lambda: self.client.log_batch(run_id, params=chunk, synchronous=True))

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        _retry(lambda: self.client.log_batch(run_id, metrics=batch, synchronous=True))

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        _retry(lambda: self.client.log_batch(run_id, tags=batch, synchronous=True))

    def log_artifact(self, run_id: str, path: str | Path, artifact_dir: str | None = None) -> None:
        _retry(lambda: self.client.log_artifact(run_id, str(path), artifact_dir))

    def log_artifacts(self, run_id: str, paths: Iterable[str | Path], artifact_dir: str | None = None) -> None:
        for p in paths:
            self.log_artifact(run_id, p, artifact_dir)

    def log_image(self, run_id: str, png: str | Path, key: str, step: int) -> None:
        """An image under `key` at `step` (the MLflow UI shows a step slider)."""
        from PIL import Image

        with Image.open(png) as im:
            image = im.convert("RGB")
        _retry(lambda: self.client.log_image(run_id, image, key=key, step=step, synchronous=True))

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        _retry(lambda: self.client.log_text(run_id, text, artifact_file))

    def log_dict(self, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
        _retry(lambda: self.client.log_dict(run_id, dict(data), artifact_file))

    def set_status(self, run_id: str, status: str) -> None:
        """RUNNING reopens a run (resume); FINISHED / FAILED / KILLED end it."""
        if status == "RUNNING":
            _retry(lambda: self.client.update_run(run_id, status=status))
        else:
            _retry(lambda: self.client.set_terminated(run_id, status=status))

    def download(self, run_id: str, artifact_path: str, dst: str | Path) -> Path:
        return Path(_retry(lambda: self.client.download_artifacts(run_id, artifact_path, str(dst))))
