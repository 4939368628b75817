"""The sweep's Tuner: its trainable, searcher (Optuna's study, seeded), scheduler (ASHA with its rungs) and
callbacks, built new or restored from Tune's state on a resume."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ray import tune

from switchsweep.config.resources import driver_bundle, trains_inline, trial_resources
from switchsweep.config.sweep_schema import REPORTED_METRICS, SweepJobConfig, baseline_model
from switchsweep.platform.errors import ConfigError
from switchsweep.platform.sweep_dir import SweepDir
from switchsweep.platform.sweep_record import SweepRecord
from switchsweep.sweeps.asha import ResumableASHA
from switchsweep.sweeps.budget import BudgetedSearch, devices_per_trial
from switchsweep.sweeps.callbacks import TrialTracking
from switchsweep.sweeps.compat import restored_parts
from switchsweep.sweeps.console import NEW_OUTPUT_ENV, SweepReporter
from switchsweep.sweeps.gate import rung_steps
from switchsweep.sweeps.locate import SweepCommand, join
from switchsweep.sweeps.search import SeededStudySearch, default_tpe_startup
from switchsweep.sweeps.space import param_space, reporter_columns
from switchsweep.sweeps.trial import KEPT_CHECKPOINTS, TrialJob, run_trial


def expected_trials(job: SweepJobConfig, record: SweepRecord) -> int:
    """Tune trials the sweep runs at least: configurations (grid rows, or sampled ones plus every
    extension) times seeds, plus the baseline's seeds (racing adds more, `race_budget`)."""
    s = job.sweep
    configs = len(s.grid) if s.search == "grid" else s.num_trials + sum(record.extensions)
    return (configs + (baseline_model(s) is not None)) * s.seeds


def race_budget(job: SweepJobConfig) -> int:
    """Racing trials at most: `race_seeds` rounds over the N best configurations and the baseline."""
    s = job.sweep
    return s.race_seeds * (min(s.race, s.num_trials) + (baseline_model(s) is not None)) if s.race else 0


def _search_alg(
    job: SweepJobConfig, sweep_dir: Path, sweep_id: str, base: dict[str, Any], extend: int
) -> SeededStudySearch | None:
    """The searcher; an --extend samples more configurations only (its baseline and racing are done)."""
    s = job.sweep
    if s.search == "grid":
        return None
    objectives = list(s.objectives) or [s.metric]
    # The study lives in a journal file beside the sweep, so the search itself can be inspected and resumed.
    return SeededStudySearch(
        space=s.space,
        base=base,
        journal=str(SweepDir(sweep_dir).journal),
        study_name=sweep_id,
        objectives=objectives,
        modes=[REPORTED_METRICS[m] for m in objectives],
        search=s.search,
        seed=s.seed,
        tpe_startup=s.tpe_startup or default_tpe_startup(s.num_trials),
        seeds=s.seeds,
        train_steps=job.train.steps,
        configs=extend or s.num_trials,
        baseline=not extend and baseline_model(s) is not None,
        race=0 if extend else s.race,
        race_seeds=s.race_seeds,
    )


def _asha_rungs(job: SweepJobConfig) -> tuple[int, int]:
    """ASHA's (grace period, max_t) in evaluations."""
    evals = math.ceil(job.train.steps / job.sweep.eval_every)
    return min(job.sweep.grace_period, evals), evals


def sweep_rung_steps(job: SweepJobConfig) -> list[int]:
    """The steps at which ASHA compares trials (none without ASHA)."""
    if not job.sweep.asha:
        return []
    grace, evals = _asha_rungs(job)
    return rung_steps(grace, job.sweep.reduction_factor, evals, job.sweep.eval_every, job.train.steps)


def _scheduler(job: SweepJobConfig, sweep_dir: Path) -> ResumableASHA | None:
    s = job.sweep
    if not s.asha:
        return None
    grace, evals = _asha_rungs(job)
    # One ASHA state per sweep: a resume or an --extend compares new results with every earlier one.
    return ResumableASHA(
        SweepDir(sweep_dir).asha,
        gate=sweep_dir.name,
        time_attr="training_iteration",
        max_t=evals,
        grace_period=grace,
        reduction_factor=s.reduction_factor,
    )


def build_tuner(job: SweepJobConfig, trial_job: TrialJob, record: SweepRecord, command: SweepCommand) -> tune.Tuner:
    s = job.sweep
    inline = trains_inline(s.ray)  # the trial's process trains: it holds its worker's resources too
    # Tune snapshots its state at each inline checkpoint (it keeps one a trial) and warns when those come
    # within 5 s of each other: they do in a short trial, and the snapshot is what a resume relies on.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault(NEW_OUTPUT_ENV, "0")
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, job=trial_job), trial_resources(s.ray) if inline else driver_bundle(s.ray)
    )
    storage, name = trial_job.reports.storage, record.tune_dir
    tune_path = join(storage, name)
    if command.resume:  # that it can be restored was checked before any work
        tuner = tune.Tuner.restore(tune_path, trainable=trainable, resume_unfinished=True)
        _relocate(tuner, trial_job, record, s.budget)
        return tuner
    tracking = TrialTracking(
        trial_job.reports.tracking_uri,
        trial_job.experiment_id,
        trial_job.parent_run_id,
        str(record.path),
        job.train.steps,
        storage,
        trial_job.reports.log_checkpoints,
    )
    searcher = _search_alg(job, record.path, trial_job.reports.sweep_id, trial_job.bases[0], command.extend)
    if searcher is not None and not command.extend and s.points_to_evaluate:
        searcher.enqueue(s.points_to_evaluate)
    if searcher is not None and s.budget is not None:
        searcher = BudgetedSearch(searcher, float(s.budget), *devices_per_trial(s.ray), record.path)
    samples = (command.extend or s.num_trials) * s.seeds
    if not command.extend:
        samples += s.seeds * (baseline_model(s) is not None) + race_budget(job)
    return tune.Tuner(
        trainable,
        param_space=param_space(s),
        tune_config=tune.TuneConfig(
            metric=s.metric,
            mode=s.mode,
            search_alg=searcher,
            scheduler=_scheduler(job, record.path),
            num_samples=1 if s.search == "grid" else samples,
            max_concurrent_trials=s.max_concurrent,
        ),
        # A Train job's attempts (restarts from its last checkpoint) are decided in run_trial, an inline trial's
        # here: its process may be what died. Tune keeps an inline trial's last checkpoints (KEPT_CHECKPOINTS).
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            verbose=1,
            callbacks=[tracking],
            progress_reporter=SweepReporter(list(s.objectives) or [s.metric], reporter_columns(s)),
            failure_config=tune.FailureConfig(max_failures=s.ray.max_failures if inline else 0),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=KEPT_CHECKPOINTS),
        ),
    )


def _relocate(tuner: tune.Tuner, trial_job: TrialJob, record: SweepRecord, budget: float | None) -> None:
    """Tune restores the sweep's callback, searcher and scheduler as they were pickled, with the folder and
    MLflow address of the machine that started the sweep; this driver may run on another (a new head after
    the old one was lost): point them at its own. A budget given again with --resume replaces the old one."""
    callbacks, searcher, scheduler = restored_parts(tuner)
    for callback in callbacks:
        if isinstance(callback, TrialTracking):
            callback.sweep_dir, callback.tracking_uri = record.path, trial_job.reports.tracking_uri
    folder = SweepDir(record.path)
    if isinstance(searcher, BudgetedSearch):
        searcher.sweep_dir, searcher.stopped = record.path, False
        searcher.budget = searcher.budget if budget is None else float(budget)
        searcher = searcher.searcher
    elif budget is not None:
        raise ConfigError(
            f"sweep.budget={budget}: sweep {record.sweep_id} started without a budget, which --resume cannot add: "
            "resume it without one, then --extend it with sweep.budget"
        )
    if isinstance(searcher, SeededStudySearch):
        searcher.journal = str(folder.journal)
    if isinstance(scheduler, ResumableASHA):
        scheduler.relocate(folder.asha)
