"""The sweep's MLflow side on the driver: its experiment (refused where other nodes could not reach its
artifacts), its parent run with the search's settings, and the best trial's checkpoint moved into MLflow."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from switchsweep.config.sweep_schema import SHARED_SCHEMES, SweepJobConfig, baseline_model, is_local_address
from switchsweep.platform.errors import ConfigError
from switchsweep.platform.sweep_record import SweepRecord
from switchsweep.platform.tracking import (
    CHECKPOINT_ARTIFACT,
    CHECKPOINT_TAG,
    GIT_TAG,
    IN_MLFLOW,
    METRIC_TAG,
    MODE_TAG,
    OBJECTIVES_TAG,
    ROLE_TAG,
    SWEEP_TAG,
    Tracker,
    git_commit,
)
from switchsweep.platform.uris import is_database, is_local_store, redact
from switchsweep.results.ranking import Ranked
from switchsweep.sweeps.locate import join


def experiment(tracker: Tracker, job: SweepJobConfig) -> str:
    """The sweep's MLflow experiment. On a cluster, trials on other nodes write artifacts where it says:
    refuse a tracking server that hands out a path on some machine's disk instead of serving them
    itself or keeping them in a bucket."""
    storage = job.sweep.ray.storage_path or ""
    # A database store with a bucket beside it: artifacts in the bucket, where every node reaches them.
    shared = is_database(tracker.uri) and (storage.startswith(SHARED_SCHEMES) or job.sweep.ray.shared_fs)
    root = join(storage, "mlartifacts") if shared else Path(job.sweep.root).expanduser().resolve() / "mlartifacts"
    experiment_id = tracker.experiment(job.sweep.name, root)
    location = tracker.artifact_location(experiment_id)
    if is_local_address(job.sweep.ray.address) or is_local_store(tracker.uri) or not is_local_store(location):
        return experiment_id
    raise ConfigError(
        f"sweep.tracking_uri={redact(tracker.uri)}: its experiment {job.sweep.name!r} keeps artifacts at "
        f"{location}, on one machine's disk: start the server with --serve-artifacts (or "
        "--default-artifact-root s3://...) and use a new sweep.name"
    )


def open_parent(
    tracker: Tracker,
    job: SweepJobConfig,
    record: SweepRecord,
    experiment_id: str,
    overrides: Sequence[str],
) -> None:
    """Create the sweep's parent run in its experiment once (here, on the driver: trials only add
    child runs), or reopen it on resume."""
    s = job.sweep
    if record.parent_run_id:
        tracker.set_status(record.parent_run_id, "RUNNING")
        return
    parent = tracker.create_run(
        experiment_id,
        record.sweep_id,
        {
            ROLE_TAG: "sweep",
            SWEEP_TAG: record.sweep_id,
            METRIC_TAG: s.metric,
            MODE_TAG: s.mode,
            OBJECTIVES_TAG: ",".join(s.objectives),
            GIT_TAG: git_commit(),
        },
    )
    tracker.log_dict(
        parent,
        {
            "search": s.search,
            "space": [dataclasses.asdict(p) for p in s.space],
            "grid": [list(r) for r in s.grid],
            "num_trials": s.num_trials,
            "seeds": s.seeds,
            "objectives": list(s.objectives),
            "points_to_evaluate": [dict(p) for p in s.points_to_evaluate],
        },
        "search_space.json",
    )
    tracker.log_params(
        parent,
        {
            "sweep.search": s.search,
            "sweep.metric": s.metric,
            "sweep.mode": s.mode,
            "sweep.num_trials": s.num_trials,
            "sweep.seeds": s.seeds,
            "sweep.eval_every": s.eval_every,
            "sweep.objectives": ",".join(s.objectives),
            "sweep.baseline": baseline_model(s) or "none",
            "sweep.race": s.race,
            "sweep.race_seeds": s.race_seeds,
            "train.steps": job.train.steps,
            "sweep.overrides": redact(" ".join(overrides)),
            # what one trial occupies: the report turns wall time into device-hours
            **{
                f"sweep.ray.{k}": getattr(s.ray, k)
                for k in ("num_workers", "use_gpu", "cpus_per_worker", "gpus_per_worker")
            },
        },
    )
    record.experiment_id, record.parent_run_id, record.tracking_uri = experiment_id, parent, redact(tracker.uri)
    record.save()


def keep_best_checkpoint(tracker: Tracker, best: Ranked) -> None:
    """sweep.log_checkpoints=best: the best trial's final checkpoint moves from Ray Train's storage to MLflow."""
    from ray.train import Checkpoint

    where = tracker.tags(best.run_id).get(CHECKPOINT_TAG, "")
    if not where.endswith("/ckpt.pt") or where == IN_MLFLOW:
        return
    ckpt = Checkpoint(where.removesuffix("/ckpt.pt"))
    with ckpt.as_directory() as local:
        tracker.log_artifact(best.run_id, Path(local) / "ckpt.pt", str(Path(CHECKPOINT_ARTIFACT).parent))
    tracker.set_tags(best.run_id, {CHECKPOINT_TAG: IN_MLFLOW})
    ckpt.filesystem.delete_dir(ckpt.path)
