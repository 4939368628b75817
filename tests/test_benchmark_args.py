"""A benchmark given a bad count stops with one argparse line, not a traceback."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_zero_batch_is_one_line_before_any_work():
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.train_throughput", "--batch", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].endswith("error: argument --batch: 0 is not a positive integer")


def test_every_count_flag_of_the_benchmarks_takes_positive_whole_numbers_only():
    # The flags' types, read from each benchmark's source: none parses a count with a bare int.
    sources = {p.name: p.read_text() for p in (ROOT / "benchmarks").glob("*.py")}
    assert not [name for name, text in sources.items() if "type=int" in text]
    for bad, why in (("-3", "-3 is not a positive integer"), ("x", "'x' is not a whole number")):
        run = subprocess.run(
            [sys.executable, "-m", "benchmarks.step_time", "--rounds", bad],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 2 and run.stderr.strip().splitlines()[-1].endswith(f"argument --rounds: {why}")
