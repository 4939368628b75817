"""Command line: `switchsweep train|evaluate [overrides...]` (Hydra override syntax, e.g. model=dit train.steps=300)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from omegaconf import OmegaConf

from switchsweep.platform.compose import load_config, load_eval_config
from switchsweep.platform.errors import SwitchsweepError


def _train(cfg) -> int:
    from switchsweep.trainers.loop import train  # heavy imports only once the config is valid

    result = train(cfg)
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


def _run(args: argparse.Namespace) -> int:
    cfg = args.load(args.overrides)  # validated before any data or model work
    if args.cfg:
        print(OmegaConf.to_yaml(OmegaConf.structured(cfg)), end="")
        return 0
    return args.run(cfg)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchsweep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="one training run on this machine")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=switch_dit model.top_k=1 train.steps=300")
    p.add_argument("--cfg", action="store_true", help="print the resolved, validated config and exit")
    p.set_defaults(load=load_config, run=_train)
    p = sub.add_parser("evaluate", help="sample from a checkpoint's EMA model and compute FID / KID / IS / precision-recall")
    p.add_argument("overrides", nargs="*", help="checkpoint=PATH and eval.* overrides, e.g. eval.num_samples=1000 eval.sampler=ddim")
    p.add_argument("--cfg", action="store_true", help="print the resolved, validated config and exit")
    p.set_defaults(load=load_eval_config, run=_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
