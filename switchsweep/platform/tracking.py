"""MLflow tracking through one small client wrapper: experiments, parent/child runs, metrics, artifacts.

Everything goes through `MlflowClient` with explicit run ids (no fluent "active run" state), so the
same code works in the sweep driver, in a trial and in a Ray Train worker process. SQLite stores
serialise writers; a write that meets "database is locked" is retried with backoff.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from switchsweep.platform.errors import ConfigError, SwitchsweepError
from switchsweep.platform.storage import is_uri, storage_join
from switchsweep.platform.uris import is_database, is_server, redact

T = TypeVar("T")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep CLI output to our own lines

# The environment of an MLflow server of ours: without MLflow's GenAI job runner, whose eight processes
# do nothing for a sweep's runs.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

PARENT_TAG = "mlflow.parentRunId"
SWEEP_TAG = "switchsweep.sweep_id"
TRIAL_TAG = "switchsweep.trial_id"
ROLE_TAG = "switchsweep.role"  # "sweep" (parent) or "trial" (child)
GROUP_TAG = "switchsweep.group"  # the configuration a trial runs (one per seed of it)
SEED_TAG = "switchsweep.seed_index"
OBJECTIVES_TAG = "switchsweep.objectives"  # comma-separated, on the parent of a multi-objective sweep
METRIC_TAG, MODE_TAG = "switchsweep.metric", "switchsweep.mode"  # on the parent: what the sweep ranks by
GIT_TAG, MODEL_TAG = "switchsweep.git_commit", "switchsweep.model"
BEST_TRIAL_TAG, BEST_GROUP_TAG, BEST_RUN_TAG = (
    "switchsweep.best_trial",
    "switchsweep.best_group",
    "switchsweep.best_run_id",
)
STOPPED_TAG = "switchsweep.stopped_early"  # "true" on a trial the scheduler stopped
FAILURE_TAG = "switchsweep.failure"  # why a trial failed, one line
ATTEMPTS_TAG = "switchsweep.attempts"  # on a failed trial (and every inline one): attempts it ran (1: not retried)
RESUMED_TAG = "switchsweep.resumed_from_step"  # the checkpoint step a restarted trial went on from
HOST_TAG = "switchsweep.host"  # the machine whose rank 0 trained the trial (its latest attempt)
CHECKPOINT_TAG = "switchsweep.checkpoint"  # where the trial's final checkpoint is kept
CHECKPOINT_ARTIFACT = "checkpoint/ckpt.pt"  # a final checkpoint kept in MLflow, under the trial's run
IN_MLFLOW = f"mlflow:{CHECKPOINT_ARTIFACT}"  # CHECKPOINT_TAG's value for it
# per evaluation, the values its metrics' noise is read from (trainers.evaluation.metrics)
EVAL_NOISE_ARTIFACT = "eval_noise"
SAMPLES_KEY = "samples"  # each evaluation's sample grid, an image (MLflow: images/<key>+step+<step>+...png)
# MLflow 3's experiment kind for model training (the UI's view itself follows its workflowType link parameter).
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
PARAM_VALUE_LIMIT = 6000  # MLflow's limit on a param value's length
_IMAGE_NAME = re.compile(r"(?P<key>.+?)[+%]step[+%](?P<step>\d+)[+%]")  # how MLflow names a logged image's files


def eval_noise_name(step: int) -> str:
    """The file, under EVAL_NOISE_ARTIFACT, of the evaluation at `step`."""
    return f"step_{step:07d}.json"


def default_tracking_uri(root: str | Path) -> str:
    """The local default store: an absolute SQLite URI, so Tune's per-trial chdir cannot move it."""
    return f"sqlite:///{(Path(root).expanduser().resolve() / 'mlflow.db')}"


def runs_page(base_url: str, experiment_id: str | None) -> str:
    """The MLflow UI's Runs table of an experiment (the experiments list without one), in its model-training
    view: MLflow 3 opens an experiment in its GenAI view unless the link asks for this one, and clicking
    an experiment in the list drops the ask."""
    where = f"experiments/{experiment_id}/runs" if experiment_id else "experiments"
    return f"{base_url.rstrip('/')}/#/{where}?workflowType=machine_learning"


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


def reachable(uri: str) -> str:
    """`uri`, once a database store has answered one connection (MLflow itself retries a refused one for
    about 100 s, logging each failure over many lines, before it gives up), or a server has taken this
    machine's login, if it asks for one."""
    if uri.startswith(("http://", "https://")):
        _check_login(uri)
        return uri
    if not is_database(uri):
        return uri
    import sqlalchemy

    engine = None
    try:  # a missing driver module fails in create_engine, the rest in connect
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": 10}, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect():
            return uri
    except Exception as e:  # a refused password, an unknown host or database, a timeout, a driver not installed
        raise ConfigError(
            f"sweep.tracking_uri={redact(uri)}: cannot open the MLflow database ({redact(_first_line(e))}): "
            "check its host, port, user, password and database name, and that its driver is installed"
        ) from None
    finally:
        if engine is not None:
            engine.dispose()


def _check_login(uri: str) -> None:
    """A server that refuses this machine's login (MLFLOW_TRACKING_USERNAME/PASSWORD, or none) is one line."""
    import base64
    import urllib.error
    import urllib.request

    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    request = urllib.request.Request(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1")
    if user and password:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            said = "refused the login of MLFLOW_TRACKING_USERNAME" if user else "asks for a login"
            raise ConfigError(
                f"sweep.tracking_uri={redact(uri)}: the MLflow server {said}: set MLFLOW_TRACKING_USERNAME and "
                'MLFLOW_TRACKING_PASSWORD to its user (a cluster\'s: eval "$(make -s cluster-login)")'
            ) from None
    except OSError:
        pass  # unreachable: MLflow's own calls say so


def artifact_location(root: str | Path, name: str) -> str:
    """Where a store's experiment `name` keeps artifacts: a folder under `root` (a local folder or a URI)."""
    root = str(root)
    return storage_join(root, name) if is_uri(root) else (Path(root).expanduser().resolve() / name).as_uri()


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


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

    def experiment(self, name: str, artifact_root: str | Path) -> str:
        """The id of experiment `name`, created if missing, and marked as a model-training experiment
        (not a GenAI one). A store (SQLite, a database) keeps artifacts under `artifact_root` (a folder or
        a bucket URI); a tracking server in its own artifact store, where every node (and the UI) reaches them."""
        exp = _retry(lambda: self.client.get_experiment_by_name(name))
        if exp is not None:
            experiment_id = exp.experiment_id
        else:
            location = None if is_server(self.uri) else artifact_location(artifact_root, name)
            try:
                experiment_id = _retry(lambda: self.client.create_experiment(name, artifact_location=location))
            except MlflowException as e:
                raise SwitchsweepError(
                    f"MLflow at {redact(self.uri)} refused to create experiment {name!r}: {_first_line(e)}"
                ) from e
        _retry(lambda: self.client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND))
        return experiment_id

    def artifact_location(self, experiment_id: str) -> str:
        return _retry(lambda: self.client.get_experiment(experiment_id)).artifact_location

    def find_experiment(self, name: str) -> str | None:
        exp = _retry(lambda: self.client.get_experiment_by_name(name))
        return None if exp is None else exp.experiment_id

    def create_run(self, experiment_id: str, name: str, tags: Mapping[str, Any]) -> str:
        run = _retry(
            lambda: self.client.create_run(experiment_id, run_name=name, tags={k: str(v) for k, v in tags.items()})
        )
        return run.info.run_id

    def search(self, experiment_id: str, filter_string: str, order_by: list[str] | None = None) -> list:
        return list(
            _retry(lambda: self.client.search_runs([experiment_id], filter_string, order_by=order_by, max_results=5000))
        )

    def parent_run(self, experiment_id: str, sweep_id: str | None = None):
        """A sweep's parent run (the latest sweep of the experiment without `sweep_id`), or None."""
        filt = f"tags.`{ROLE_TAG}` = 'sweep'" + (f" and tags.`{SWEEP_TAG}` = '{sweep_id}'" if sweep_id else "")
        runs = self.search(experiment_id, filt, order_by=["attributes.start_time DESC"])
        return runs[0] if runs else None

    def children(self, experiment_id: str, parent_id: str, trial_id: str | None = None) -> list:
        """The trial runs of a sweep (or the one of `trial_id`): the only lookup of a sweep's child runs."""
        filt = f"tags.`{PARENT_TAG}` = '{parent_id}'" + (f" and tags.`{TRIAL_TAG}` = '{trial_id}'" if trial_id else "")
        return self.search(experiment_id, filt)

    def child_run(
        self, experiment_id: str, parent_id: str, sweep_id: str, trial_id: str, name: str, tags: Mapping[str, Any]
    ) -> tuple[str, bool]:
        """The trial's run under `parent_id`: the existing one on resume (never a duplicate), else a new one."""
        found = self.children(experiment_id, parent_id, trial_id)
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
            _retry(lambda: self.client.log_batch(run_id, params=chunk, synchronous=True))  # noqa: B023 - called here

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

    def tags(self, run_id: str) -> dict[str, str]:
        return dict(_retry(lambda: self.client.get_run(run_id)).data.tags)

    def has_artifact(self, run_id: str, path: str) -> bool:
        folder = str(Path(path).parent) if "/" in path else None
        return any(a.path == path for a in _retry(lambda: self.client.list_artifacts(run_id, folder)))

    def logged_steps(self, run_id: str) -> dict[str, set[int]]:
        """The steps already logged per metric, and per image key (as "image:<key>"): what a retry skips."""
        run = _retry(lambda: self.client.get_run(run_id))
        seen = {
            k: {m.step for m in _retry(lambda k=k: self.client.get_metric_history(run_id, k))} for k in run.data.metrics
        }
        for art in _retry(lambda: self.client.list_artifacts(run_id, "images")):
            found = _IMAGE_NAME.match(Path(art.path).name)
            if found:
                seen.setdefault(f"image:{found['key']}", set()).add(int(found["step"]))
        return seen


class ResilientLog:
    """Rank 0's logging during training: a write that fails is retried, and one that still fails is
    kept and sent again with the next write (and at `flush`), so a tracking outage never stops or
    restarts training. Writes already in the run (a retried attempt re-running steps) are skipped,
    so every metric step is logged once."""

    def __init__(
        self,
        tracker: Tracker,
        run_id: str,
        seen: dict[str, set[int]] | None = None,
        attempts: int = 4,
        backoff_s: float = 0.5,
    ):
        self.tracker, self.run_id, self.attempts, self.backoff_s = tracker, run_id, attempts, backoff_s
        self.seen = seen or {}
        self.pending: list[tuple[str, tuple, dict]] = []
        self.hold: Path | None = None
        self.warned = False

    def _send(self, method: str, args: tuple, kwargs: dict, attempts: int) -> None:
        for i in range(attempts):
            try:
                getattr(self.tracker, method)(self.run_id, *args, **kwargs)
                return
            except (MlflowException, OSError, ConnectionError) as e:
                if i == attempts - 1:
                    raise
                if not self.warned:
                    print(f"switchsweep: MLflow write failed ({type(e).__name__}); retrying", file=sys.stderr)
                    self.warned = True
                time.sleep(self.backoff_s * 2**i)

    def _write(self, method: str, *args: Any, **kwargs: Any) -> None:
        # During an outage (writes already kept) each write tries once, so training is not held up by backoffs.
        attempts = 1 if self.pending else self.attempts
        self.pending.append((method, args, kwargs))
        if not self.flush(quiet=True, attempts=attempts) and method in ("log_image", "log_artifacts"):
            self.pending[-1] = (method, (self._hold(args[0]), *args[1:]), kwargs)  # the caller may delete its files

    def _hold(self, paths: Any) -> Any:
        """Copies of files kept for a later send."""
        if self.hold is None:
            self.hold = Path(tempfile.mkdtemp(prefix="switchsweep-unsent-"))
        many = isinstance(paths, list)
        copies = []
        for src in paths if many else [paths]:
            dst = self.hold / str(len(list(self.hold.iterdir()))) / Path(src).name
            dst.parent.mkdir()
            shutil.copy2(src, dst)
            copies.append(dst)
        return copies if many else copies[0]

    def flush(self, quiet: bool = False, attempts: int | None = None) -> bool:
        """Send what is kept, in order; True once nothing is left."""
        while self.pending:
            method, args, kwargs = self.pending[0]
            try:
                self._send(method, args, kwargs, attempts or self.attempts)
            except (MlflowException, OSError, ConnectionError) as e:
                if not quiet:
                    print(
                        f"switchsweep: {len(self.pending)} MLflow writes not sent ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:120] if str(e) else ''})",
                        file=sys.stderr,
                    )
                return False
            self.pending.pop(0)
        return True

    def _new(self, key: str, step: int) -> bool:
        return step not in self.seen.get(key, ())

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        fresh = {k: v for k, v in metrics.items() if self._new(k, step)}
        if fresh:
            self._write("log_metrics", fresh, step)

    def log_image(self, png: str | Path, key: str, step: int) -> None:
        if self._new(f"image:{key}", step):
            self._write("log_image", png, key=key, step=step)

    def log_artifacts(self, paths: Iterable[str | Path], artifact_dir: str | None = None) -> None:
        self._write("log_artifacts", list(paths), artifact_dir)  # same path on a retry: overwritten, not added

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._write("set_tags", dict(tags))
