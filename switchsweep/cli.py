"""Command line: `switchsweep train|evaluate|sweep|prepare|export|report|ui|optuna-ui [overrides...]`
(Hydra override syntax, e.g. model=dit train.steps=300)."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from switchsweep.config.compose import (
    load_config,
    load_data_config,
    load_eval_config,
    load_sweep_config,
    override_key,
    split_override,
)
from switchsweep.config.sweep_schema import ACCURACY_METRIC
from switchsweep.platform.errors import ConfigError, SwitchsweepError
from switchsweep.platform.sweep_dir import SweepDir
from switchsweep.platform.tracking import default_tracking_uri, runs_page
from switchsweep.platform.uris import is_server, redact, require_store
from switchsweep.results.ranking import LEARNED_ACCURACY
from switchsweep.results.tables import console_lines
from switchsweep.results.text import budget_line
from switchsweep.sweeps.locate import SweepCommand, find_sweep, sweeps_root

EXIT_TRIALS_FAILED = 3  # the sweep ran to its end but some trials failed (2: bad input, 130: interrupted)


def _train(cfg) -> int:
    from switchsweep.trainers.loop.trainer import train  # heavy imports only once the config is valid

    result = train(cfg)
    stats = result.model_stats
    print(
        f"model: {cfg.model.name}, {stats['params'] / 1e6:.3f} M parameters, {stats['gflops']:.4f} GFLOPs per image "
        "forward"
    )
    print(f"trained to step {result.step}: loss {result.last_metrics.get('loss', float('nan')):.4f}")
    print(f"checkpoint: {result.checkpoint}")
    if result.samples:
        print(f"samples:    {result.samples}")
    return 0


def _evaluate(cfg) -> int:
    from switchsweep.trainers.evaluation.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(cfg)
    print(json.dumps(result["metrics"], indent=2))
    accuracy = result["metrics"].get(ACCURACY_METRIC, math.nan)
    if accuracy < LEARNED_ACCURACY:
        print(
            f"not learned: {accuracy:.1%} of its samples are of the class they were drawn for (a learned model: "
            f">= {LEARNED_ACCURACY:.0%}); train it longer (train.steps) or faster (train.lr)"
        )
    print(f"written to {result['out']}")
    return 0


def _sweep(job, overrides, command) -> int:
    from switchsweep.sweeps.run import run_sweep

    result = run_sweep(job, overrides, command)
    metric, seeds = job.sweep.metric, job.sweep.seeds
    designs = sum(not r.baseline for r in result.ranked)
    baseline = " and the baseline" if designs < len(result.ranked) else ""
    print(
        f"\nsweep {result.sweep_id}: {designs} configurations{baseline} x {seeds} seed(s), best first by {metric} "
        "(mean +- 95% half-width; then the difference to the best, paired seed by seed, +- its 95% half-width: "
        "tied = not separable from the best)"
    )
    for line in console_lines(result.ranked, metric, job.sweep.objectives):
        print(line)
    for line in result.verdicts:
        print(f"  {line}")
    name, root = job.sweep.name, Path(job.sweep.root).expanduser().resolve()
    where = f"sweep={name} sweep.id={result.sweep_id} sweep.root={root}"
    print(f"sweep dir:   {result.sweep_dir}  (ranking.md, ranking.csv)")
    if result.report:
        print(f"report:      {result.report}  (open it in a browser; rebuild: switchsweep report {where})")
    print(f"MLflow:      {result.tracking_uri}  experiment '{name}'")
    if result.tracking_uri.startswith("sqlite:"):
        print(
            f"open it:     switchsweep ui sweep.root={root}   then "
            f"{runs_page('http://127.0.0.1:5000', result.experiment_id)}"
        )
    elif result.tracking_uri.startswith(("http://", "https://")):
        print(f"open it:     {runs_page(result.tracking_uri, result.experiment_id)}")
    if job.sweep.search != "grid":
        print(f"the search:  switchsweep optuna-ui {where}   (optuna-dashboard, http://127.0.0.1:8080)")
    print(f"export best: switchsweep export {where} top=3 out=runs/export/{name}")
    if result.budget:
        print(f"budget:      {budget_line(result.budget)}")
    if result.failed:
        first = next(iter(result.failed.items()))
        print(
            f"failed:      {len(result.failed)} trial(s) failed and were not retried (first: {first[0]}: {first[1]}); "
            f"reasons in ranking.md and on their MLflow runs (failure/worker.log)",
            file=sys.stderr,
        )
    if result.interrupted:
        print(
            f"interrupted: continue with `switchsweep sweep sweep={name} sweep.id={result.sweep_id} --resume`",
            file=sys.stderr,
        )
        return 130
    return EXIT_TRIALS_FAILED if result.failed else 0


def _own(overrides: Sequence[str], keys: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Split a command's own key=value arguments (top=, out=, port=, ...) from the config overrides."""
    own = {k: v for k, v in map(split_override, overrides) if k in keys}
    return own, [o for o in overrides if override_key(o) not in keys]


def _port(own: dict[str, str], default: int) -> int:
    port = own.get("port", str(default))
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"port={port} is not a TCP port: give a number from 1 to 65535, e.g. port={default}")
    return int(port)


def _local_store(job) -> str:
    return require_store(job.sweep.tracking_uri or default_tracking_uri(job.sweep.root))


def _export(args: argparse.Namespace) -> int:
    from switchsweep.results.export import export_best

    own, overrides = _own(args.overrides, ("top", "out"))
    job = load_sweep_config(overrides)
    top = own.get("top", "1")
    if not top.isdigit():
        raise ConfigError(f"top={top} is not a whole number: give how many of the best trials to export, e.g. top=3")
    out = own.get("out") or f"runs/export/{job.sweep.name}"
    written = export_best(
        _local_store(job), job.sweep.name, int(top), out, sweep_id=job.sweep.id, sweeps_dir=sweeps_root(job)
    )
    for path in written:
        print(f"{path}    run it: switchsweep train --config {path}")
    print(f"ranking: {out}/ranking.md, {out}/ranking.csv")
    return 0


def _report(args: argparse.Namespace) -> int:
    own, overrides = _own(args.overrides, ("out",))
    job = load_sweep_config(overrides)
    uri = _local_store(job)
    from switchsweep.dashboards.report import make_report
    from switchsweep.platform.tracking import Tracker

    path = make_report(Tracker(uri), job.sweep.name, job.sweep.id, sweeps_root(job), own.get("out"))
    print(f"report: {path}  (one file: open it in a browser; also on the sweep's parent run in MLflow)")
    return 0


def _ui(args: argparse.Namespace) -> int:
    own, overrides = _own(args.overrides, ("port", "host"))
    job = load_sweep_config(overrides)
    port, host = _port(own, 5000), own.get("host", "127.0.0.1")
    uri = _local_store(job)
    if is_server(uri):
        raise ConfigError(f"sweep.tracking_uri={redact(uri)} is an MLflow server already: open it in a browser")
    from switchsweep.platform.tracking import SERVER_ENV, Tracker, reachable

    experiment_id = Tracker(reachable(uri)).find_experiment(job.sweep.name)
    what = (
        f"sweep={job.sweep.name}'s runs" if experiment_id else f"no sweep={job.sweep.name} in it yet; the experiments"
    )
    link = runs_page(f"http://{host}:{port}", experiment_id)
    print(f"MLflow UI over {redact(uri)}: {what} at {link} (Ctrl+C stops it)", flush=True)
    exe = Path(sys.executable).parent / "mlflow"
    # The store through the environment: a database's password stays out of the process list.
    env = {**os.environ, **SERVER_ENV, "MLFLOW_BACKEND_STORE_URI": uri}
    return subprocess.run([str(exe), "ui", "--host", host, "--port", str(port)], env=env).returncode


def _optuna_ui(args: argparse.Namespace) -> int:
    own, overrides = _own(args.overrides, ("port", "host"))
    job = load_sweep_config(overrides)
    port, host = _port(own, 8080), own.get("host", "127.0.0.1")

    journal = SweepDir(find_sweep(job)).journal
    if not journal.is_file():
        raise ConfigError(
            f"sweep={job.sweep.name}: {journal.parent.name} has no Optuna study ({journal} is missing): "
            "grid sweeps search none; use `switchsweep report` for them"
        )
    import optuna
    import optuna_dashboard

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    print(f"optuna-dashboard over {journal} on http://{host}:{port} (Ctrl+C stops it)", flush=True)
    optuna_dashboard.run_server(storage, host=host, port=port)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    own, overrides = _own(args.overrides, ("out", "address", "seed", "encoders"))
    data = load_data_config(overrides)
    if not own.get("out"):
        raise ConfigError("prepare needs out=<folder for the latents> (e.g. out=data/latents/imagenet256)")
    seed = own.get("seed", "0")
    if not seed.isdigit():
        raise ConfigError(
            f"seed={seed} is not a whole number: give e.g. seed=0 (it seeds the latents' posterior samples)"
        )
    encoders = own.get("encoders", "")
    if encoders and not (encoders.isdigit() and int(encoders) > 0):
        raise ConfigError(
            f"encoders={encoders} is not a positive whole number: give how many VAE actors may run, e.g. encoders=8"
        )
    from switchsweep.config.sweep_schema import RayConfig
    from switchsweep.sweeps.runtime import start_ray
    from switchsweep.trainers.data.prepare import check_inputs, prepare

    check_inputs(data, own["out"], int(seed))  # before Ray starts
    start_ray(RayConfig(address=own.get("address")))
    done = prepare(data, own["out"], seed=int(seed), encoders=int(encoders) if encoders else None)
    print(f"prepared {done.images} latents in {done.shards} shards ({done.redone} encoded now) in {done.out}")
    from switchsweep.trainers.data.latents import read_manifest

    manifest = read_manifest(done.out)
    channels, size, _ = manifest["latent_shape"]
    print(
        f"train on them: switchsweep train data=latents data.path={done.out} data.image_size={size} "
        f"data.channels={channels} "
        f"data.num_classes={len(manifest['classes'])}  (or a preset: data=imagenet256 ...); sweeps and evaluate also "
        "need "
        "eval.inception_weights=<FID Inception .pt>"
    )
    return 0


COMMANDS = {"export": _export, "prepare": _prepare, "report": _report, "ui": _ui, "optuna-ui": _optuna_ui}


def _run(args: argparse.Namespace) -> int:
    if args.command in COMMANDS:
        return COMMANDS[args.command](args)
    overrides = list(args.overrides)
    if getattr(args, "extend", None) is not None and args.extend < 1:
        raise ConfigError(f"--extend {args.extend}: give how many configurations to add, at least 1")
    if getattr(args, "config", None):
        cfg = load_config(overrides, config_file=args.config)
    else:
        cfg = args.load(overrides)  # validated before any data or model work
    if args.cfg:
        print(OmegaConf.to_yaml(OmegaConf.structured(cfg)), end="")
        return 0
    if args.command == "sweep":
        return _sweep(cfg, overrides, SweepCommand(resume=args.resume, extend=args.extend or 0))
    return args.run(cfg)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchsweep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="one training run on this machine")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=switch_dit model.top_k=1 train.steps=300")
    p.add_argument("--cfg", action="store_true", help="print the resolved, validated config and exit")
    p.add_argument(
        "--config", metavar="FILE", help="a resolved YAML config (e.g. from switchsweep export) to run as it is"
    )
    p.set_defaults(load=load_config, run=_train)
    p = sub.add_parser(
        "evaluate", help="sample from a checkpoint's EMA model and compute FID / KID / IS / precision-recall"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        help="checkpoint=PATH and eval.* overrides, e.g. eval.num_samples=1000 eval.sampler=ddim",
    )
    p.add_argument("--cfg", action="store_true", help="print the resolved, validated config and exit")
    p.set_defaults(load=load_eval_config, run=_evaluate)
    p = sub.add_parser("sweep", help="a Ray Tune sweep: every trial is a Ray Train DDP job, tracked in MLflow")
    p.add_argument(
        "overrides",
        nargs="*",
        help="sweep=<design_space|table1|lambda_dp|alpha> and overrides, e.g. sweep.num_trials=4",
    )
    p.add_argument("--cfg", action="store_true", help="print the resolved, validated sweep job and exit")
    p.add_argument(
        "--resume", action="store_true", help="continue the latest interrupted sweep of that name (or sweep.id=...)"
    )
    p.add_argument(
        "--extend",
        type=int,
        metavar="N",
        help="add N configurations to the latest finished sweep of that name (or sweep.id=...), "
        "same study and parent run",
    )
    p.set_defaults(load=load_sweep_config)
    p = sub.add_parser("export", help="write the best trials of a sweep as runnable configs plus a ranking table")
    p.add_argument(
        "overrides", nargs="*", help="sweep=<name> top=K out=DIR, and sweep.id=<id> for a sweep other than the latest"
    )
    p = sub.add_parser(
        "report", help="write a sweep's HTML report (ranking, search space, Pareto fronts, curves, routing)"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        help="sweep=<name> [sweep.id=<id>] [out=FILE] (default: report.html in the sweep's folder)",
    )
    p = sub.add_parser("prepare", help="encode an ImageFolder into VAE latents for data=latents (a Ray Data pipeline)")
    p.add_argument(
        "overrides",
        nargs="*",
        help="data.root=DIR data.vae=DIR out=DIR [data.resolution=256] [data.flip=true] "
        "[data.shard_size=256] [seed=0] [address=auto: a Ray cluster; default: a local instance] "
        "[encoders=N: VAE actors, one GPU each on a cluster; default: one per GPU up now]",
    )
    p = sub.add_parser("ui", help="the MLflow UI over the sweeps' local store, on 127.0.0.1")
    p.add_argument("overrides", nargs="*", help="[sweep.root=DIR] [port=5000] [host=127.0.0.1]")
    p = sub.add_parser("optuna-ui", help="optuna-dashboard over a sweep's Optuna study, on 127.0.0.1")
    p.add_argument(
        "overrides", nargs="*", help="sweep=<name> [sweep.id=<id>] [sweep.root=DIR] [port=8080] [host=127.0.0.1]"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may follow a flag (`sweep=x --resume train.steps=9`); argparse leaves those over.
    unknown = [a for a in extra if a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = [*args.overrides, *extra]
    try:
        return _run(args)
    except SwitchsweepError as e:
        print(f"switchsweep {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"switchsweep {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
