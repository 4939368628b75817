"""Several `switchsweep` command lines, each in a process of its own with its own environment, forked from
one that imported the package once: what each returned and wrote to standard error (file descriptor 2,
where Ray's core writes too). For refusals, which end before any work: an import costs more than they do.

    python tests/cli_cases.py CASES.json RESULTS.json
CASES.json: [{"argv": [...], "env": {...}}, ...]; RESULTS.json: [{"code": int, "stderr": str}, ...]."""

import json
import os
import sys
import tempfile


def _child(case: dict, err) -> None:
    from switchsweep.cli import main

    os.environ.clear()
    os.environ.update(case["env"])
    os.dup2(err.fileno(), 2)
    try:
        code = main(case["argv"])
    except SystemExit as e:  # argparse's refusals
        code = e.code if isinstance(e.code, int) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(cases: list[dict]) -> list[dict]:
    import switchsweep.cli  # noqa: F401  (once, before the forks)

    started = []
    for case in cases:
        err = tempfile.TemporaryFile("w+")
        pid = os.fork()
        if pid == 0:
            _child(case, err)
        started.append((pid, err))
    results = []
    for pid, err in started:
        _, status = os.waitpid(pid, 0)
        err.seek(0)
        results.append({"code": os.waitstatus_to_exitcode(status), "stderr": err.read()})
        err.close()
    return results


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        found = run(json.load(fh))
    with open(sys.argv[2], "w") as fh:
        json.dump(found, fh)
