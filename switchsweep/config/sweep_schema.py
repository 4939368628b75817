"""Sweep schema (`switchsweep sweep sweep=<name>`): the search, its schedule, Ray resources and tracking.

A sweep job is a full training config plus a `sweep` section; each trial trains the training part
with the sampled parameters applied. Its static checks are `config.sweep_checks`'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from switchsweep.config.schema import Config

SEARCHES = ("tpe", "random", "grid")
# Metrics every trial report carries, and whether lower is better.
REPORTED_METRICS = {
    "kid_x1e3": "min",  # KID x 10^3, as the literature prints it
    "class_accuracy": "max",  # where the feature network classifies the data's classes (the digits)
    "fid": "min",
    "inception_score": "max",
    "precision": "max",
    "recall": "max",
    "loss": "min",
    "gflops": "min",  # per image forward: the compute side of a quality/compute trade-off
    "params": "min",
    "steps_per_sec": "max",
}
# A metric's evaluation noise, reported beside it: its standard error over the generated samples
# (trainers.evaluation.metrics), what re-evaluating the same model with another eval.seed varies it by.
METRIC_SE = {"kid_x1e3": "kid_x1e3_se", "fid": "fid_se", "class_accuracy": "class_accuracy_se"}
# The share of samples the data's classifier assigns to the class they were drawn for: reported only where
# the evaluation's feature network classifies the data's own classes (the digits classifier).
ACCURACY_METRIC = "class_accuracy"
CLASSIFIED_ONLY = (ACCURACY_METRIC,)
SPEC_KINDS = ("choice", "loguniform", "uniform", "randint", "fraction_of")
LOG_CHECKPOINTS = ("last", "best", "false")
# Sweep names and ids become folder names and MLflow filter values: letters, digits, . _ - only.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass
class ParamSpec:
    """One searched setting: `key` is a dotted config path; exactly one distribution is set.

    `fraction_of: model.num_experts` draws an integer in 1..num_experts (for top_k given M) from a
    uniform fraction u in (0, 1] as ceil(u * M), so the searcher sees one fixed distribution.
    """

    key: str = "???"
    choice: list[Any] | None = None
    loguniform: list[float] | None = None
    uniform: list[float] | None = None
    randint: list[int] | None = None  # [low, high], both inclusive
    fraction_of: str | None = None


@dataclass
class RayConfig:
    address: str | None = None  # null: start a local Ray instance; "auto" or ray://host:10001 for a cluster
    num_cpus: int | None = None  # local instance only; null: enough for max_concurrent trials
    num_workers: int = 1  # DDP workers per trial
    use_gpu: bool = False
    cpus_per_worker: float | None = None  # null: local, the cores shared by all workers at once; cluster, 1
    gpus_per_worker: float = 1.0  # used only with use_gpu
    trainable_cpus: float = 0.05  # the per-trial driver that starts the Train job
    max_failures: int = 1  # restarts of a trial's training, each resuming from the last checkpoint
    # A one-worker trial on this machine trains in its Tune trial's own process instead of a Train job,
    # whose controller and worker processes cost seconds a trial to start; false: always a Train job.
    inline: bool = True
    storage_path: str | None = (
        None  # Tune state and Train checkpoints (s3://, gs://, a shared mount); null: <root>/sweeps
    )
    shared_fs: bool = False  # storage_path is a path every node mounts (NFS, ...): accepted with a cluster address
    driver_resource: str | None = None  # a custom resource (TRAIN_DRIVER) that places trial drivers, CPU-free
    worker_resources: dict[str, float] = field(default_factory=dict)  # extra custom resources per DDP worker
    # A custom resource only one-GPU nodes have (cluster.yaml's ONE_GPU_NODE): a one-GPU trial asks for it, so
    # it never takes a GPU of a multi-GPU node, which multi-GPU trials need whole. null: no such marking.
    one_gpu_resource: str | None = None
    cluster_config: str = (
        "~/ray_bootstrap_config.yaml"  # the autoscaler's config on the head: the node types a trial may get
    )
    # How a trial's DDP workers are placed: STRICT_PACK keeps them on one node, so an 8-GPU trial asks the
    # autoscaler for one 8-GPU node rather than eight 1-GPU ones (PACK or SPREAD: across nodes).
    placement_strategy: str = "STRICT_PACK"
    # How long a trial's workers may take to start: on a cluster that includes a GPU node's boot and setup.
    worker_start_timeout_s: float = 180.0


PLACEMENT_STRATEGIES = ("STRICT_PACK", "PACK", "SPREAD", "STRICT_SPREAD")  # Ray's placement group strategies


@dataclass
class SweepConfig:
    name: str = "design_space"
    search: str = "tpe"
    num_trials: int = 8  # tpe/random: sampled configurations (grid: 1, every row once)
    seeds: int = 1  # runs of every configuration, train.seed + 0..seeds-1; Optuna is told their mean
    max_concurrent: int = 1
    # Device-hours the sweep may spend: GPU-hours, or CPU-hours where trials use no GPU (sweeps/budget.py);
    # null: no limit. A resume or extend may give a new one; what the record holds is counted against it.
    budget: float | None = None
    metric: str = "kid_x1e3"
    mode: str = "min"
    objectives: list[str] = field(default_factory=list)  # >= 2 metrics: multi-objective search, Pareto ranking
    tpe_startup: int | None = None  # TPE's random start-up configurations; null: max(2, num_trials // 4)
    points_to_evaluate: list[dict[str, Any]] = field(default_factory=list)  # first configurations, e.g. the paper's
    # A model (conf/model/<name>) trained with every seed, the same steps and evaluation, outside the search,
    # that each configuration is compared with; none: no baseline.
    baseline: str | None = None
    race: int = 0  # after the search: the top N configurations and the baseline get more seeds until the best separates
    race_seeds: int = 3  # the racing budget: extra seeds per raced configuration at most
    eval_every: int = 250  # steps between evaluations; one ASHA time unit
    asha: bool = True
    # Evaluations before ASHA may stop a trial: 2 x 250 steps puts its first rung where the digits models
    # draw digits and KID falls with training (benchmarks/learning.py); before it KID ranks noise.
    grace_period: int = 2
    reduction_factor: float = 2.0
    space: list[ParamSpec] = field(default_factory=list)
    grid: list[list[str]] = field(default_factory=list)  # rows of Hydra overrides (search=grid)
    seed: int = 0
    id: str | None = None  # a sweep's id (<name>-<time>); null: a new one, or the latest (--resume, report, ...)
    root: str = "runs"  # sweeps, the MLflow store and its artifacts live under it
    tracking_uri: str | None = None  # null: sqlite:///<root>/mlflow.db; an http(s) MLflow server on clusters
    # A trial's final checkpoint, kept once: last: every finished trial's in MLflow; best: the best trial's in
    # MLflow, the others' in Ray Train's storage; false: every one in Ray Train's storage only.
    log_checkpoints: str = "last"
    ray: RayConfig = field(default_factory=RayConfig)


@dataclass
class SweepJobConfig(Config):
    sweep: SweepConfig = field(default_factory=SweepConfig)


ConfigStore.instance().store(name="sweep_schema", node=SweepJobConfig)


# Stores each node reaches by itself; a bare path or file:// lives on one machine only.
SHARED_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "hdfs://")
LOOPBACK_HOSTS = ("localhost", "[::1]")


def baseline_model(s: SweepConfig | DictConfig) -> str | None:
    """The sweep's baseline model, None without one (`sweep.baseline=none` or null)."""
    name = s.baseline
    return None if name is None or str(name).lower() in ("none", "null", "false", "") else str(name)


def is_local_address(address: str | None) -> bool:
    """No address (a local instance), or a head listening on loopback: every node is on this machine,
    since no other machine can join a head bound to 127.0.0.1."""
    if not address:
        return True
    host = address.split("://", 1)[-1].rsplit(":", 1)[0]
    return host in LOOPBACK_HOSTS or host.startswith("127.")
