"""Several `switchsweep` command lines in one process, one after another, each with its own environment:
what each returned and wrote to standard error (file descriptor 2, where Ray's core writes too). For
refusals, which end before any work: the package is imported once instead of once a command. Ray reads
its token once a process: cases with different tokens belong in different processes.

    python tests/support/cli_cases.py CASES.json RESULTS.json
CASES.json: [{"argv": [...], "env": {...}}, ...]; RESULTS.json: [{"code": int, "stderr": str}, ...]."""

import json
import os
import sys
import tempfile


def run(cases: list[dict]) -> list[dict]:
    from switchsweep.cli import main

    results = []
    for case in cases:
        os.environ.clear()
        os.environ.update(case["env"])
        with tempfile.TemporaryFile("w+") as err:
            sys.stderr.flush()
            saved = os.dup(2)
            os.dup2(err.fileno(), 2)
            try:
                code = main(case["argv"])
            except SystemExit as e:  # argparse's refusals
                code = e.code
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
            err.seek(0)
            results.append({"code": code, "stderr": err.read()})
        _disconnect()
    return results


def _disconnect() -> None:
    """As a command's own process would leave things: no Ray connection carried into the next one."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        found = run(json.load(fh))
    with open(sys.argv[2], "w") as fh:
        json.dump(found, fh)
