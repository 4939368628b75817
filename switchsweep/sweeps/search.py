"""Optuna behind Tune, told the truth about every trial.

One Optuna trial is one *configuration* (a group), run `sweep.seeds` times as Tune trials with
train.seed + 0..seeds-1. The group is told to Optuna once all its seeds are over:
- COMPLETE with the mean over seeds of the objective(s), when every seed trained all its steps;
- PRUNED when ASHA stopped any seed early, after reporting the mean intermediate value at each
  evaluation (TPE ranks pruned trials by how far they got, never as equals of finished ones);
- FAIL when any seed failed or reported a non-finite objective.
Averaging seeds inside one Optuna trial (rather than one Optuna trial per seed) keeps TPE from
treating seed noise as a difference between configurations, and keeps `study.best_trial` and the
importances on the same footing as the sweep's own seed-aggregated ranking.

Trials receive the *resolved* settings (k as an integer, not the fraction Optuna samples); the
resolved values are also stored on each Optuna trial as user attributes.

Outside the study, the searcher also hands out
- the baseline's seeds first (`sweep.baseline`: group `baseline`, the sweep's second base), never told
  to Optuna and never stopped early;
- racing rounds (`sweep.race=N`) once every configuration is over: one more seed each for the N best
  complete configurations and the baseline, round after round, until the best separates from the
  runner-up (or, racing one configuration, from the baseline) at 95% (`results.ranking.separated`, a
  paired t interval over seeds) or `race_seeds` rounds are spent; then it ends the sweep.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from switchsweep.config.sweep_schema import ParamSpec
from switchsweep.platform.sweep_record import TrialEnd
from switchsweep.results.ranking import BASELINE_GROUP, race_leaders, separated
from switchsweep.sweeps.compat import storage_id
from switchsweep.sweeps.space import (
    BASELINE_ROW,
    FULL,
    GROUP,
    ROW,
    SEED,
    optuna_distributions,
    resolve_point,
    to_sampled,
)


@dataclass
class _Group:
    name: str
    number: int  # the Optuna trial's number in the study
    storage_id: int  # its id in the storage (to report intermediate values after a restore)
    settings: dict[str, Any]
    outcomes: dict[str, tuple[str, list[float]] | None] = field(default_factory=dict)  # Tune trial id -> outcome
    intermediate: dict[str, dict[int, float]] = field(default_factory=dict)  # Tune trial id -> {iteration: value}
    told: bool = False


def default_tpe_startup(num_trials: int) -> int:
    """TPE's random start-up, sized to the sweep so a short one still gets model-based proposals."""
    return max(2, num_trials // 4)


def trial_outcome(
    result: dict[str, Any] | None, error: bool, objectives: Sequence[str], train_steps: int
) -> tuple[TrialEnd, list[float]]:
    """(end, objective values) of one Tune trial that is over, from its last result: failed too when
    an objective is missing or not finite."""
    values = [float(result[m]) for m in objectives if m in result] if result else []
    failed = error or len(values) != len(objectives) or not all(math.isfinite(v) for v in values)
    end = TrialEnd.of(int((result or {}).get("step", 0)), train_steps, failed=failed)
    return end, [] if failed else values


class SeededStudySearch(Searcher):
    """A Tune searcher over an Optuna study kept in a journal file; see the module docstring."""

    def __init__(
        self,
        *,
        space: Sequence[ParamSpec],
        base: dict[str, Any],
        journal: str,
        study_name: str,
        objectives: Sequence[str],
        modes: Sequence[str],
        search: str,
        seed: int,
        tpe_startup: int,
        seeds: int,
        train_steps: int,
        configs: int,
        baseline: bool = False,
        race: int = 0,
        race_seeds: int = 0,
    ):
        super().__init__(metric=objectives[0], mode=modes[0])
        self.space, self.base = list(space), base
        self.journal, self.study_name = journal, study_name
        self.objectives, self.modes = list(objectives), list(modes)
        self.search, self.seed, self.tpe_startup = search, seed, tpe_startup
        self.seeds, self.train_steps = seeds, train_steps
        self.distributions = optuna_distributions(self.space)
        self.groups: dict[str, _Group] = {}
        self.trial_group: dict[str, str] = {}  # Tune trial id -> group name
        self.filling: str | None = None  # the group still handing out seeds
        self._study: optuna.Study | None = None
        self.configs = configs  # configurations to sample from the study
        self.baseline_seeds = seeds if baseline else 0
        self.race, self.race_seeds = race, race_seeds
        self.full: dict[str, tuple[str, int]] = {}  # Tune trial id -> (group, seed) of baseline and racing trials
        self.pending: set[str] = set()  # full trials handed out and not over
        self.values: dict[str, dict[int, float]] = {}  # group -> seed -> objective, complete trials only
        self.queue: list[tuple[str, int]] = []  # the racing round's (group, seed) still to hand out
        self.rounds = 0  # racing rounds started
        self.raced: list[str] = []  # the configurations (and baseline) racing, fixed at the first round

    # The study is reopened from its journal after a restore; only plain state is pickled.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_study": None}

    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        if self.search == "tpe":
            # constant_liar: configurations proposed while others still run are not all alike.
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.tpe_startup, constant_liar=True)
        return optuna.samplers.RandomSampler(seed=seed)

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(self.journal))
            directions = ["minimize" if m == "min" else "maximize" for m in self.modes]
            self._study = optuna.create_study(
                storage=storage,
                sampler=self._sampler(self.seed),
                study_name=self.study_name,
                directions=directions,
                load_if_exists=True,
            )
            asked = len(self._study.get_trials(deepcopy=False))
            if asked:
                # Reopened (resume, extend): a sampler seeded as at the start would draw the first
                # configurations again; one seeded by what the study already holds goes on from there.
                self._study.sampler = self._sampler(
                    int(np.random.SeedSequence([self.seed, asked]).generate_state(1)[0])
                )
        return self._study

    def enqueue(self, points: Sequence[dict[str, Any]]) -> None:
        """Evaluate these configurations first (resolved settings, e.g. model.top_k: 2)."""
        for point in points:
            self.study.enqueue_trial(to_sampled(self.space, dict(point), self.base))

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space, metric and mode are this searcher's own

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        given = sum(g == BASELINE_GROUP for g, _ in self.full.values())
        if given < self.baseline_seeds:
            return self._full(trial_id, BASELINE_GROUP, given)
        group = self.groups.get(self.filling) if self.filling else None
        if group is None or len(group.outcomes) >= self.seeds:
            if len(self.groups) >= self.configs:
                return self._race(trial_id)
            ot = self.study.ask(self.distributions)
            settings = resolve_point(self.space, ot.params, self.base)
            for key, value in settings.items():
                ot.set_user_attr(key, value)
            group = _Group(f"g{ot.number:03d}", ot.number, storage_id(ot), settings)
            self.groups[group.name] = group
            self.filling = group.name
        seed = len(group.outcomes)
        group.outcomes[trial_id] = None
        self.trial_group[trial_id] = group.name
        return {GROUP: group.name, SEED: seed, **group.settings}

    def _full(self, trial_id: str, group: str, seed: int) -> dict[str, Any]:
        """A trial that trains every step (the scheduler never stops it): a baseline or racing seed."""
        self.full[trial_id] = (group, seed)
        self.pending.add(trial_id)
        if group == BASELINE_GROUP:
            return {GROUP: group, SEED: seed, ROW: BASELINE_ROW, FULL: True}
        return {GROUP: group, SEED: seed, FULL: True, **self.groups[group].settings}

    def _mean(self, group: str) -> float:
        return (1.0 if self.modes[0] == "min" else -1.0) * float(np.mean(list(self.values[group].values())))

    def standings(self) -> list[str]:
        """Configurations whose every seed trained all its steps (not the baseline), best mean first."""
        done = [g for g, v in self.values.items() if g in self.groups and self.groups[g].told and len(v) >= self.seeds]
        return sorted(done, key=lambda g: (self._mean(g), g))

    def _race(self, trial_id: str) -> dict[str, Any] | str | None:
        """The next racing trial; None while a round (or the search) still runs; FINISHED at the end."""
        if not self.race:
            return Searcher.FINISHED
        if not self.queue:
            if self.pending or not all(g.told for g in self.groups.values()):
                return None
            if not self.rounds:
                self.raced = self.standings()[: self.race] + ([BASELINE_GROUP] if BASELINE_GROUP in self.values else [])
            leaders = race_leaders(
                sorted((g for g in self.raced if g in self.values), key=lambda g: (self._mean(g), g)),
                lambda g: g == BASELINE_GROUP,
            )
            if (
                len(leaders) < 2
                or self.rounds >= self.race_seeds
                or separated(*([self.values[g][i] for i in sorted(self.values[g])] for g in leaders))
            ):
                return Searcher.FINISHED
            self.rounds += 1
            self.queue = [(g, self.seeds + self.rounds - 1) for g in self.raced]
        group, seed = self.queue.pop(0)
        return self._full(trial_id, group, seed)

    def _record(self, group: _Group, trial_id: str, result: dict[str, Any] | None) -> None:
        if result and len(self.objectives) == 1 and self.metric in result and "training_iteration" in result:
            group.intermediate.setdefault(trial_id, {})[int(result["training_iteration"])] = float(result[self.metric])

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        group = self.groups.get(self.trial_group.get(trial_id, ""))
        if group is not None:
            self._record(group, trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id in self.full:
            self.pending.discard(trial_id)
            end, values = trial_outcome(result, error, self.objectives, self.train_steps)
            if end is TrialEnd.FINISHED:
                group, seed = self.full[trial_id]
                self.values.setdefault(group, {})[seed] = values[0]
            return
        group = self.groups.get(self.trial_group.get(trial_id, ""))
        if group is None or group.told:
            return
        self._record(group, trial_id, result)  # Tune withholds the result that makes ASHA stop a trial
        group.outcomes[trial_id] = trial_outcome(result, error, self.objectives, self.train_steps)
        if len(group.outcomes) == self.seeds and all(o is not None for o in group.outcomes.values()):
            self._tell(group)

    def _tell(self, group: _Group) -> None:
        outcomes = [o for o in group.outcomes.values() if o is not None]
        end = TrialEnd.of_group(o[0] for o in outcomes)
        if end is TrialEnd.FAILED:
            self.study.tell(group.number, state=TrialState[end.optuna_state])
        elif end is TrialEnd.STOPPED:
            if len(self.objectives) == 1:
                trial = optuna.trial.Trial(self.study, group.storage_id)
                steps = sorted({s for values in group.intermediate.values() for s in values})
                for step in steps:
                    trial.report(float(np.mean([v[step] for v in group.intermediate.values() if step in v])), step)
            self.study.tell(group.number, state=TrialState[end.optuna_state])
        else:
            means = [float(np.mean([o[1][i] for o in outcomes])) for i in range(len(self.objectives))]
            self.study.tell(group.number, means if len(means) > 1 else means[0])
            self.values[group.name] = {seed: o[1][0] for seed, o in enumerate(outcomes)}
        group.told = True

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.__getstate__(), fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            state = pickle.load(fh)
        state.pop("journal", None)  # where this driver keeps it: a resumed sweep may run on another machine
        self.__dict__.update(state)
