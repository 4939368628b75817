"""A design sweep with its baseline and racing, end to end through the CLI on the session's Ray head:
the baseline trains outside the study, racing adds seeds to the leaders and the baseline, and the
closing lines, ranking and report say how the best design compares with the baseline: here, at 16 steps,
that no model has learned to draw its class, so no winner is named (tests/test_ranking.py holds the
sentences of models that have learned)."""

import csv
import re
import subprocess

import optuna
from mlflow.tracking import MlflowClient

from switchsweep.platform.tracking import default_tracking_uri
from tests.support.sweep_harness import ENV, record, sweep_cmd


def test_a_design_sweep_races_its_leaders_against_the_baseline(ray_head, digits_net, tmp_path):
    root = tmp_path / "runs"
    cmd = [
        o
        for o in sweep_cmd(
            root,
            ray_head,
            digits_net[2],
            "sweep.num_trials=2",
            "train.steps=16",
            "sweep.eval_every=8",
            "sweep.baseline=dit",
            "sweep.race=2",
            "sweep.race_seeds=1",
            "sweep.max_concurrent=2",  # two trials at a time: one starts while the other trains
        )
        if o != "sweep.baseline=none"
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    closing = re.search(
        r"No configuration has learned to draw its classes \(class accuracy below 80%: .*\), so no winner is named: "
        r"raise train\.steps \(now 16\) or train\.lr \(now 0\.002\) and sweep again\.",
        done.stdout,
    )
    assert closing, done.stdout[-3000:]
    versus = re.search(r"No comparison with the baseline dit: .* not learned to draw their classes; raise", done.stdout)
    assert versus and "beats" not in done.stdout and "is worse than" not in done.stdout, done.stdout[-3000:]

    # Six trials, all trained to the end: the baseline's seed, two configurations, then one racing round of three.
    trials = record(root)["trials"]
    assert len(trials) == 6 and {t["status"] for t in trials.values()} == {"finished"}
    assert record(root)["status"] == "finished"
    client = MlflowClient(default_tracking_uri(root))
    exp = client.get_experiment_by_name("design_space")
    runs = client.search_runs([exp.experiment_id], "tags.`switchsweep.role` = 'trial'")
    seeds = {}
    for run in runs:
        seeds.setdefault(run.data.tags["switchsweep.group"], []).append(int(run.data.tags["switchsweep.seed_index"]))
        assert run.data.params["train.steps"] == "16" and run.info.status == "FINISHED"
    assert {g: sorted(s) for g, s in seeds.items()} == {"baseline": [0, 1], "g000": [0, 1], "g001": [0, 1]}
    base = [r for r in runs if r.data.tags["switchsweep.group"] == "baseline"]
    assert {r.data.params["model.name"] for r in base} == {"dit"} and {r.data.params["train.seed"] for r in base} == {
        "0",
        "1",
    }
    sweep_dir = next(root.glob("sweeps/design_space/*"))
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(sweep_dir / "optuna.journal"))
    )
    assert len(optuna.load_study(study_name=sweep_dir.name, storage=storage).trials) == 2  # neither baseline nor racing

    with open(sweep_dir / "ranking.csv", newline="") as fh:
        ranking = {r["group"]: r for r in csv.DictReader(fh)}
    assert ranking["baseline"]["variant"] == "dit" and ranking["baseline"]["seeds"] == "2"
    assert {r["learned"] for r in ranking.values()} == {"not learned"}
    assert {r["vs_best"] for r in ranking.values()} == {"not learned"} and not any(
        r["vs_baseline"] for r in ranking.values()
    )
    report = (sweep_dir / "report.html").read_text()
    assert closing.group(0) in report.split('<p class="meta">')[0]  # the report opens with it
