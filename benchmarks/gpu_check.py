"""GPU acceptance in one command: the kernel tests compiled, the kernels' numerics at each training
precision, whole models through Triton, the kernel and step-time benchmarks, and a 2-trial sweep on
the GPU. Writes benchmarks/results/gpu-check-<date>.json and prints a short table.

    make gpu-check
    python -m benchmarks.gpu_check [--parts tests numerics models kernels steps sweep] [--out DIR]

Without a CUDA device it prints one line and exits 0. Every part but the sweep needs only torch,
triton, numpy and pytest, plus hydra-core and omegaconf for the config schema (`make gpu-wheels`
builds them as wheels to carry: docs/cluster.md, "On a GPU"); the sweep needs the full install (Ray, MLflow,
Optuna) and is skipped with one line where it is missing. The exit code is 1 if any part failed.

Numerics: each op's output and gradients against a float64 reference on the same inputs, as the
relative gap max |a - ref| / max |ref|, within a tolerance per precision (TOLERANCE): fp32 runs exact
fp32 products, tf32 fp32 data on TF32 tensor cores, bf16 the op under bf16 autocast (train.precision).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path

import torch

PARTS = ("tests", "numerics", "models", "kernels", "steps", "sweep")
TOLERANCE = {"fp32": 1e-5, "tf32": 5e-3, "bf16": 3e-2}
MODEL_TOLERANCE = 1e-4  # fp32, exact products on both paths: only the summation order differs
KERNEL_TESTS = ["tests/test_kernels.py", "tests/test_kernel_backend.py", "tests/test_model_kernels.py"]
ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def matmul_precision(name: str):
    """torch's fp32 matmul setting of train.precision=name, restored after."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest" if name == "fp32" else "high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def kernel_tests(workdir: Path) -> dict:
    """The kernel, dispatch and model-through-Triton tests in a fresh interpreter without TRITON_INTERPRET,
    so that Triton compiles every kernel (the slow AOT compile test left out)."""
    report = workdir / "kernel-tests.xml"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    start = time.perf_counter()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "not slow",
            f"--junitxml={report}",
            *KERNEL_TESTS,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if not report.is_file():
        return {"ok": False, "error": (run.stdout + run.stderr).strip().splitlines()[-1:], "seconds": seconds}
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    return {"ok": run.returncode == 0, **counts, "failed": failed, "seconds": round(seconds, 1)}


def _sample_routed_case(b: int, length: int, d: int, device: str, contiguous: bool):
    from switchsweep.kernels import sample_routed_linear
    from switchsweep.kernels.reference import sample_routed_linear_reference

    g = torch.Generator().manual_seed(0)
    m, k = 3, 2
    z = torch.randn(b, length, d, generator=g)
    w, bias = torch.randn(m, d, d, generator=g) / d**0.5, torch.randn(m, d, generator=g) * 0.1
    idx = torch.stack([torch.randperm(m, generator=g)[:k] for _ in range(b)])
    gates = torch.softmax(torch.randn(b, m, generator=g), -1).gather(1, idx)
    inputs = [t.to(device) for t in (z, w, bias, idx, gates)]
    if not contiguous:  # the same values with a batch stride of D and a transposed weight layout
        inputs[0] = inputs[0].transpose(0, 1).contiguous().transpose(0, 1)
        inputs[1] = inputs[1].transpose(1, 2).contiguous().transpose(1, 2)
    return sample_routed_linear, sample_routed_linear_reference, inputs, (0, 1, 2, 4)


def _token_routed_case(t: int, din: int, dout: int, device: str, contiguous: bool):
    from switchsweep.kernels import token_routed_linear
    from switchsweep.kernels.reference import token_routed_linear_reference

    g = torch.Generator().manual_seed(0)
    m, k = 8, 2
    x, w = torch.randn(t, din, generator=g), torch.randn(m, din, dout, generator=g) / din**0.5
    gates, idx = torch.softmax(torch.randn(t, m, generator=g), -1).topk(k, -1)
    inputs = [v.to(device) for v in (x, w, idx, gates)]
    if not contiguous:
        inputs[0] = inputs[0].t().contiguous().t()
    return token_routed_linear, token_routed_linear_reference, inputs, (0, 1, 3)


NUMERIC_CASES = {
    "sample_routed B=4 L=77 D=128": lambda dev: _sample_routed_case(4, 77, 128, dev, True),
    "sample_routed B=3 L=300 D=384 (multi-tile)": lambda dev: _sample_routed_case(3, 300, 384, dev, True),
    "sample_routed B=3 L=300 D=384 non-contiguous": lambda dev: _sample_routed_case(3, 300, 384, dev, False),
    "token_routed T=1000 384->1152 (multi-tile)": lambda dev: _token_routed_case(1000, 384, 1152, dev, True),
    "token_routed T=1000 384->1152 non-contiguous": lambda dev: _token_routed_case(1000, 384, 1152, dev, False),
}


def op_gaps(case: str, precision: str, device: str) -> dict[str, float]:
    """Relative gaps of one op's output and gradients against float64 at `precision`."""
    from tests.support.kernel_paths import relative_gap

    op, reference, inputs, differentiable = NUMERIC_CASES[case](device)
    ref_in = [t.double().requires_grad_() if i in differentiable else t for i, t in enumerate(inputs)]
    ref = reference(*ref_in)
    cotangent = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device)
    ref.backward(cotangent)
    tri_in = [t.detach().clone().requires_grad_() if i in differentiable else t for i, t in enumerate(inputs)]
    with matmul_precision(precision), torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = op(*tri_in)
    out.backward(cotangent.to(out.dtype))
    gaps = {"output": relative_gap(out, ref.detach())}
    gaps.update({f"grad{i}": relative_gap(tri_in[i].grad, ref_in[i].grad) for i in differentiable})
    return gaps


def numerics(device: str) -> dict:
    rows = []
    for precision in TOLERANCE:
        for case in NUMERIC_CASES:
            gaps = op_gaps(case, precision, device)
            worst = max(gaps.values())
            rows.append(
                {
                    "precision": precision,
                    "case": case,
                    "max_gap": worst,
                    "tolerance": TOLERANCE[precision],
                    "ok": worst <= TOLERANCE[precision],
                    "gaps": gaps,
                }
            )
    return {"ok": all(r["ok"] for r in rows), "rows": rows}


def models(device: str) -> dict:
    """Switch-DiT and DiT-MoE, tiny on digits and S/2 on 32x32x4 latents with 1000 classes, through
    Triton vs the reference path (fp32): the output and every parameter's gradient."""
    from switchsweep.config.schema import Config
    from switchsweep.models import build_model
    from tests.support.kernel_paths import kernel_path_gaps, randomize_

    rows = []
    shapes = {
        "tiny": dict(image_size=8, channels=1, num_classes=10),
        "S": dict(image_size=32, channels=4, num_classes=1000),
    }
    for size, shape in shapes.items():
        for name in ("switch_dit", "dit_moe"):
            cfg = Config()
            cfg.model.name, cfg.model.size = name, size
            for key, value in shape.items():
                setattr(cfg.data, key, value)
            model = randomize_(build_model(cfg.model, cfg.data, cfg.diffusion.num_timesteps)).to(device)
            g = torch.Generator().manual_seed(2)
            x = torch.randn(8, shape["channels"], shape["image_size"], shape["image_size"], generator=g).to(device)
            t = torch.randint(0, 1000, (8,), generator=g).to(device)
            y = torch.randint(0, shape["num_classes"], (8,), generator=g).to(device)
            with matmul_precision("fp32"):
                gaps = kernel_path_gaps(model, x, t, y)
            worst = max(gaps, key=gaps.get)
            rows.append(
                {
                    "model": f"{name} {size}/2",
                    "parameters": len(gaps) - 1,
                    "max_gap": gaps[worst],
                    "worst": worst,
                    "tolerance": MODEL_TOLERANCE,
                    "ok": gaps[worst] <= MODEL_TOLERANCE,
                }
            )
    return {"ok": all(r["ok"] for r in rows), "rows": rows}


def kernels() -> dict:
    """benchmarks/moe_kernels in bf16, forward+backward, at D in {384, 768, 1152}, L = 256."""
    from benchmarks.moe_kernels import run

    rows = run(["bf16"], modes=("forward+backward",))
    return {"ok": True, "rows": rows}


def steps(batch: int = 32, rounds: int = 5, per_round: int = 10) -> dict:
    """Switch-DiT vs DiT training-step time at S/2 on 32x32x4 latents, 1000 classes, interleaved."""
    from benchmarks.step_time import build_trainers, interleaved, random_latents

    shape = {"channels": 4, "image_size": 32, "num_classes": 1000}
    with tempfile.TemporaryDirectory(prefix="gpu-check-latents-") as folder:
        random_latents(Path(folder), shape["channels"], shape["image_size"], shape["num_classes"])
        trainers = build_trainers(["dit", "switch_dit"], "S", batch, "cuda", shape, Path(folder), 2)
        samples = interleaved(trainers, per_round, rounds)
    ms = {name: statistics.median(s) * 1e3 for name, s in samples.items()}
    precision = trainers["dit"].cfg.train.precision
    return {
        "ok": True,
        "batch": batch,
        "precision": precision,
        "ms_per_step": ms,
        "ratio": ms["switch_dit"] / ms["dit"],
    }


def sweep(workdir: Path) -> dict:
    """A 2-trial design-space sweep with train.device=cuda, read back from its MLflow store."""
    missing = [m for m in ("ray", "mlflow", "optuna", "hydra") if importlib.util.find_spec(m) is None]
    if missing:
        return {
            "ok": True,
            "skipped": f"{', '.join(missing)} not installed here: the sweep needs the full install "
            "(make install, as on a cluster GPU node)",
        }
    root = workdir / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "switchsweep",
        "sweep",
        "sweep=design_space",
        "sweep.num_trials=2",
        "sweep.baseline=none",
        "sweep.asha=false",
        "train.device=cuda",
        "sweep.ray.use_gpu=true",
        "train.steps=150",
        "sweep.eval_every=150",
        f"sweep.root={root}",
    ]
    start = time.perf_counter()
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=420)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        return {"ok": False, "seconds": round(seconds, 1), "error": (run.stdout + run.stderr).strip().splitlines()[-3:]}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("design_space")
    trials = client.search_runs([exp.experiment_id], "tags.`switchsweep.role` = 'trial'")
    done = [{"status": r.info.status, "kid_x1e3": r.data.metrics.get("kid_x1e3")} for r in trials]
    ok = len(done) == 2 and all(d["status"] == "FINISHED" and d["kid_x1e3"] is not None for d in done)
    return {"ok": ok, "seconds": round(seconds, 1), "trials": done}


def _lines(part: str, r: dict) -> list[str]:
    """The table's lines of one part's result."""
    if part == "tests":
        return [
            f"kernel tests, compiled {'ok' if r['ok'] else 'FAILED'}: {r.get('tests', 0)} run, "
            f"{r.get('failures', 0) + r.get('errors', 0)} failed, {r.get('skipped', 0)} skipped, {r['seconds']} s "
            + " ".join(r.get("failed", []) + r.get("error", []))
        ]
    if "error" in r:
        return [f"{part} FAILED: {' '.join(r['error'])}"]
    if part == "numerics":
        return [
            f"numerics {x['precision']:<5} {x['case']:<46} gap {x['max_gap']:.1e} (tol {x['tolerance']:.0e}) "
            f"{'ok' if x['ok'] else 'FAILED'}"
            for x in r["rows"]
        ]
    if part == "models":
        return [
            f"model through Triton {x['model']:<16} gap {x['max_gap']:.1e} ({x['worst']}; tol {x['tolerance']:.0e}) "
            f"{'ok' if x['ok'] else 'FAILED'}"
            for x in r["rows"]
        ]
    if part == "kernels":
        return [
            f"P1 {x['op']:<13} {x['shape']:<26} fwd+bwd {x['median_ms']:.3f} ms: {x['speedup_vs_loop']:.2f}x the "
            f"per-expert loop, {x['speedup_vs_dense']:.2f}x dense, {x['pct_of_mm']:.0f}% of same-FLOP mm"
            for x in r["rows"]
            if x["variant"] == "triton"
        ]
    if part == "steps":
        ms = r["ms_per_step"]
        return [
            f"P2 S/2 step ({r['precision']}, batch {r['batch']}): DiT {ms['dit']:.2f} ms, Switch-DiT "
            f"{ms['switch_dit']:.2f} ms, {r['ratio']:.3f}x"
        ]
    if "skipped" in r:
        return [f"sweep on cuda skipped: {r['skipped']}"]
    return [f"sweep on cuda {'ok' if r['ok'] else 'FAILED'}: {r['trials']} in {r['seconds']} s"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device on this machine (torch.cuda.is_available() is False): nothing to check here")
        return 0
    os.environ.pop("TRITON_INTERPRET", None)
    results: dict = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        workdir = Path(tmp)
        steps_of = {
            "tests": lambda: kernel_tests(workdir),
            "numerics": lambda: numerics("cuda"),
            "models": lambda: models("cuda"),
            "kernels": kernels,
            "steps": steps,
            "sweep": lambda: sweep(workdir),
        }
        for part in args.parts:
            t0 = time.perf_counter()
            try:
                results[part] = steps_of[part]()
            except Exception as e:  # one part's failure is a figure of the check; the others still run
                results[part] = {
                    "ok": False,
                    "error": [f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"],
                }
            results[part].setdefault("seconds", round(time.perf_counter() - t0, 1))
            print(
                f"gpu-check: {part} {'ok' if results[part]['ok'] else 'FAILED'} in {results[part]['seconds']} s",
                flush=True,
            )
    import triton

    record = {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": sys.version.split()[0],
        "seconds": round(time.perf_counter() - started, 1),
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu-check-{record['date']}.json"
    path.write_text(json.dumps(record, indent=1, default=float) + "\n")
    print(f"\n{record['device']}, torch {record['torch']}, triton {record['triton']}, {record['seconds']} s")
    for part, r in results.items():
        print(*_lines(part, r), sep="\n")
    print(f"written to {path}")
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
