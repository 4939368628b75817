"""Rung gates: a trial that reaches one of ASHA's rungs waits there for the scheduler's decision.

A Train worker's report reaches the scheduler through the Train controller, the Tune trial and the
Tune driver, while the worker trains on; without a wait, a trial ASHA stops at a rung trains past it
and logs part of its next evaluation before its processes are killed. Here rank 0 waits after each rung's
report until the scheduler says CONTINUE (a STOP is never answered: the trial's processes end).
The gate is a named actor of the sweep's driver (its scheduler starts it), so it ends with the driver;
a trial finds none when the sweep has no ASHA, and does not wait.
"""

from __future__ import annotations

import asyncio
import math

import numpy as np
import ray

NAMESPACE = "switchsweep"


def gate_name(sweep_id: str) -> str:
    return f"gate-{sweep_id}"


def rung_steps(grace_period: int, reduction_factor: float, evals: int, eval_every: int, train_steps: int) -> list[int]:
    """The training steps at which ASHA (Tune's, one bracket) decides: its rungs are evaluations
    grace * rf^k up to `evals`, decided at the first evaluation reaching each. The last step is left
    out: a trial ends there anyway."""
    count = int(np.log(evals / grace_period) / np.log(reduction_factor) + 1)  # as Tune sizes its bracket
    rungs = {math.ceil(grace_period * reduction_factor**k) for k in range(count)}
    return sorted(r * eval_every for r in rungs if r * eval_every < train_steps)


@ray.remote(num_cpus=0)
class _Gate:
    def __init__(self) -> None:
        self.events: dict[tuple[str, int], asyncio.Event] = {}

    def _event(self, trial_id: str, step: int) -> asyncio.Event:
        return self.events.setdefault((trial_id, step), asyncio.Event())

    async def open(self, trial_id: str, step: int) -> None:
        self._event(trial_id, step).set()

    async def wait(self, trial_id: str, step: int) -> None:
        await self._event(trial_id, step).wait()


def start_gate(sweep_id: str) -> ray.actor.ActorHandle:
    """The sweep's gate, started on the driver and ready (a trial looks it up by name)."""
    gate = _Gate.options(name=gate_name(sweep_id), namespace=NAMESPACE, get_if_exists=True).remote()
    ray.get(gate.__ray_ready__.remote())
    return gate


def wait_at_gate(sweep_id: str, trial_id: str, step: int) -> None:
    """Return once the scheduler lets the trial go on past `step` (at once when the sweep has no gate)."""
    try:
        gate = ray.get_actor(gate_name(sweep_id), namespace=NAMESPACE)
    except ValueError:
        return
    ray.get(gate.wait.remote(trial_id, step))
