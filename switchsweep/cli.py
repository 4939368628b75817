"""Command line: `switchsweep train|evaluate|sweep|export [overrides...]` (Hydra override syntax, e.g. model=dit train.steps=300)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from omegaconf import OmegaConf

from switchsweep.platform.compose import load_config, load_eval_config, load_sweep_config
from switchsweep.platform.errors import ConfigError, SwitchsweepError
from switchsweep.platform.export import value_text, variant_label
from switchsweep.platform.tracking import default_tracking_uri


def _train(cfg) -> int:
    from switchsweep.trainers.loop import train  # heavy imports only once the config is valid

    result = train(cfg)
    stats = result.model_stats
    print(f"model: {cfg.model.name}, {stats['params'] / 1e6:.3f} M parameters, {stats['gflops']:.4f} GFLOPs per image forward")
    print(f"trained to step {result.step}: loss {result.last_metrics.get('loss', float('nan')):.4f}")
    print(f"checkpoint: {result.checkpoint}")
    if result.samples:
        print(f"samples:    {result.samples}")
    return 0


def _evaluate(cfg) -> int:
    from switchsweep.trainers.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(cfg)
    print(json.dumps(result["metrics"], indent=2))
    print(f"written to {result['out']}")
    return 0


def _sweep(job, overrides) -> int:
    from switchsweep.sweeps.run import run_sweep

    result = run_sweep(job, overrides)
    metric, seeds = job.sweep.metric, job.sweep.seeds
    print(f"\nsweep {result.sweep_id}: {len(result.ranked)} configurations x {seeds} seed(s), best first by {metric} "
          "(mean +- 95% half-width; tied = not separable from the best)")
    for r in result.ranked[:12]:
        extra = ""
        if r.params.get("model.name") == "switch_dit":
            extra = f"  lambda_dp={float(r.params['model.lambda_dp']):.3g} alpha={r.params['model.prior_alpha']}"
        objectives = "".join(f"  {o}={r.objectives[o]:.4g}" for o in job.sweep.objectives[1:])
        flags = " ".join(x for x in (r.vs_best, "pareto" if r.pareto else "") if x)
        print(f"  {r.rank:2d}. {r.group:<6} {metric}={value_text(r):<16} steps={r.steps:<5} {r.status:<8} "
              f"{variant_label(r.params)}{extra}{objectives}  {flags}")
    print(f"sweep dir:   {result.sweep_dir}  (ranking.md, ranking.csv)")
    print(f"MLflow:      {result.tracking_uri}  experiment '{result.experiment}'")
    print("open it:     make ui   (http://127.0.0.1:5000)")
    print(f"export best: switchsweep export sweep={job.sweep.name} top=3 out=runs/export/{job.sweep.name}")
    if result.interrupted:
        print(f"interrupted: continue with `switchsweep sweep sweep={job.sweep.name} --resume`", file=sys.stderr)
        return 130
    return 0


def _export(args: argparse.Namespace) -> int:
    from switchsweep.platform.export import export_best

    own = {k: v for k, _, v in (o.partition("=") for o in args.overrides) if k in ("top", "out")}
    job = load_sweep_config([o for o in args.overrides if o.partition("=")[0] not in ("top", "out")])
    top = own.get("top", "1")
    if not top.isdigit():
        raise ConfigError(f"top={top} is not a whole number: give how many of the best trials to export, e.g. top=3")
    out = own.get("out") or f"runs/export/{job.sweep.name}"
    uri = job.sweep.tracking_uri or default_tracking_uri(job.sweep.root)
    written = export_best(uri, job.sweep.name, int(top), out, sweep_id=job.sweep.id)
    for path in written:
        print(f"{path}    run it: switchsweep train --config {path}")
    print(f"ranking: {out}/ranking.md, {out}/ranking.csv")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.command == "export":
        return _export(args)
    overrides = list(args.overrides) + (["sweep.resume=true"] if getattr(args, "resume", False) else [])
    if getattr(args, "extend", None) is not None:
        if args.extend < 1:
            raise ConfigError(f"--extend {args.extend}: give how many configurations to add, at least 1")
        overrides.append(f"sweep.extend={args.extend}")
    if getattr(args, "config", None):
        cfg = load_config(overrides, config_file=args.config)
    else:
        cfg = args.load(overrides)  # validated before any data or model work
    if args.cfg:
        print(OmegaConf.to_yaml(OmegaConf.structured(cfg)), end="")
        return 0
    return _sweep(cfg, overrides) if args.command == "sweep" else args.run(cfg)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchsweep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="one training run on this machine")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=switch_dit model.top_k=1 train.steps=300")
    p.add_argument("--cfg", action="store_true", help="print the resolved, validated config and exit")
    p.add_argument("--config", metavar="FILE", help="a resolved YAML config (e.g. from switchsweep export) to run as it is")
    p.set_defaults(load=load_config, run=_train)
    p = sub.add_parser("evaluate", help="sample from a checkpoint's EMA model and compute FID / KID / IS / precision-recall")
    p.add_argument("overrides", nargs="*", help="checkpoint=PATH and eval.* overrides, e.g. eval.num_samples=1000 eval.sampler=ddim")
    p.add_argument("--cfg", action="store_true", help="print the resolved, validated config and exit")
    p.set_defaults(load=load_eval_config, run=_evaluate)
    p = sub.add_parser("sweep", help="a Ray Tune sweep: every trial is a Ray Train DDP job, tracked in MLflow")
    p.add_argument("overrides", nargs="*", help="sweep=<design_space|table1|lambda_dp|alpha> and overrides, e.g. sweep.num_trials=4")
    p.add_argument("--cfg", action="store_true", help="print the resolved, validated sweep job and exit")
    p.add_argument("--resume", action="store_true", help="continue the latest interrupted sweep of that name (or sweep.id=...)")
    p.add_argument("--extend", type=int, metavar="N",
                   help="add N configurations to the latest finished sweep of that name (or sweep.id=...), same study and parent run")
    p.set_defaults(load=load_sweep_config)
    p = sub.add_parser("export", help="write the best trials of a sweep as runnable configs plus a ranking table")
    p.add_argument("overrides", nargs="*", help="sweep=<name> top=K out=DIR, and sweep.id=<id> for a sweep other than the latest")
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
