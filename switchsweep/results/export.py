"""`switchsweep export`: the best trials of a sweep, read from MLflow, as runnable configs plus a ranking.

Each exported YAML is the trial's resolved training config with `train.out_dir` pointed beside it, so
`switchsweep train --config <file>` runs it as it is. Only the training config is written: tracking
URIs, hosts and credentials never are.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from switchsweep.platform.errors import ConfigError
from switchsweep.platform.tracking import Tracker
from switchsweep.platform.uris import require_store
from switchsweep.results.tables import write_ranking
from switchsweep.results.text import value_text
from switchsweep.results.trials import rank_trials


def export_best(
    tracking_uri: str,
    name: str,
    top: int,
    out: str | Path,
    sweep_id: str | None = None,
    sweeps_dir: Path | None = None,
) -> list[Path]:
    """Write the `top` best configurations (rank01-<trial>.yaml, ...; their lowest seed's config) and
    the full ranking into `out`. A multi-objective sweep writes its Pareto set (pareto01-<trial>.yaml, ...)."""
    if top < 1:
        raise ConfigError(f"top={top} must be >= 1")
    tracker = Tracker(require_store(tracking_uri))
    ranking = rank_trials(tracker, name, sweep_id, sweeps_dir)
    if not ranking.ranked:
        raise ConfigError(
            f"sweep {ranking.sweep_id} has no trials yet: resume it with `switchsweep sweep sweep={name} --resume`"
        )
    designs = [r for r in ranking.ranked if not r.baseline]  # the baseline is compared with, not exported
    chosen = [r for r in designs if r.pareto] if ranking.objectives else designs[:top]
    prefix = "pareto" if ranking.objectives else "rank"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, r in enumerate(chosen, 1):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                cfg = OmegaConf.load(tracker.download(r.run_id, "config.yaml", tmp))
            except Exception as e:  # a trial whose artifact store is gone: say which, keep the others
                raise ConfigError(
                    f"trial {r.trial_id}: its config.yaml artifact cannot be read ({type(e).__name__}): "
                    "check the MLflow artifact store"
                ) from e
        stem = f"{prefix}{i:02d}-{r.trial_id}"
        cfg.train.out_dir = str(out / stem)
        path = out / f"{stem}.yaml"
        objectives = "".join(f", {o}={r.objectives[o]:.6g}" for o in ranking.objectives[1:])
        header = (
            f"# {ranking.sweep_id} rank {r.rank}: {ranking.metric}={value_text(r)} over {r.seeds} seed(s){objectives} "
            f"after {r.steps} steps ({r.status})\n"
        )
        path.write_text(header + OmegaConf.to_yaml(cfg))
        written.append(path)
    write_ranking(ranking, out)
    return written
