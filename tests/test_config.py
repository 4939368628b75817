import subprocess
import sys

import pytest

from switchsweep.cli import main
from switchsweep.config.compose import load_config, load_sweep_config

TRAIN_BAD = [
    (["model.top_k=5"], "model.top_k"),
    (["model.top_k=0"], "model.top_k"),
    (["model.num_experts=0", "model.top_k=0"], "model.num_experts"),
    (["model.prior_alpha=0"], "model.prior_alpha"),
    (["model.lambda_dp=-0.5"], "model.lambda_dp"),
    (["model.size=XXL"], "model.size"),
    (["model=nonexistent"], "model/nonexistent"),
    (["model.patch_size=3"], "model.patch_size"),
    (["model.patch_size=8", "data.image_size=12"], "model.patch_size"),
    (["train.steps=0"], "train.steps"),
    (["train.lr=-1"], "train.lr"),
    (["train.ema_decay=1.0"], "train.ema_decay"),
    (["diffusion.schedule=quadratic"], "diffusion.schedule"),
    (["sample.steps=2000"], "sample.steps"),
    (["sample.cfg_scale=0.5"], "sample.cfg_scale"),
    (["model=dtr", "model.dtr_beta=1.5"], "model.dtr_beta"),
    (["model.top_k=two"], "model.top_k"),
    (["model.unknown_key=1"], "model.unknown_key"),
    (["train.resume=/no/such/ckpt.pt"], "train.resume"),
]
EVALUATE_BAD = [
    ([], "checkpoint"),
    (["checkpoint=/no/such.pt"], "checkpoint=/no/such.pt"),
    (["eval.num_samples=1"], "eval.num_samples"),
    (["eval.sampler=euler"], "eval.sampler"),
    (["eval.feature_net=inception"], "eval.inception_weights"),
    (["eval.feature_net=clip"], "eval.feature_net"),
    (["eval.pr_k=0"], "eval.pr_k"),
]


@pytest.mark.parametrize(
    "command, overrides, field",
    [("train", o, f) for o, f in TRAIN_BAD] + [("evaluate", o, f) for o, f in EVALUATE_BAD],
)
def test_bad_input_is_one_clear_line_and_exit_2(command, overrides, field, capsys):
    assert main([command, "--cfg", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err and "Traceback" not in err


def test_valid_config_resolves(capsys):
    cfg = load_config(["model=switch_dit", "model.num_experts=4", "model.top_k=4", "data=digits"])
    assert (cfg.model.num_experts, cfg.model.top_k, cfg.data.image_size) == (4, 4, 8)
    assert main(["train", "--cfg", "model=dtr"]) == 0
    assert "name: dtr" in capsys.readouterr().out


def test_console_entry_point_exit_code_without_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "switchsweep", "train", "model.top_k=9"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "switchsweep train: error: model.top_k=9 must be <= model.num_experts=3: lower top_k or raise num_experts"
    )


def test_paper_preset_sets_the_paper_protocol_and_overrides_still_win():
    cfg = load_config(["preset=paper"])
    assert (cfg.diffusion.schedule, cfg.data.batch_size, cfg.train.lr, cfg.train.ema_decay) == (
        "cosine",
        256,
        1e-4,
        0.9999,
    )
    assert (cfg.sample.sampler, cfg.sample.steps, cfg.sample.cfg_scale) == ("ddpm", 250, 1.5)
    assert (cfg.eval.num_samples, cfg.eval.sampler, cfg.eval.steps) == (50000, "ddpm", 250)
    assert load_config(["preset=paper", "data.batch_size=32"]).data.batch_size == 32
    assert load_config([]).diffusion.schedule == "linear"  # no preset: the defaults
    # the digits defaults the models learn at (benchmarks/learning.py), and the paper's lr in a sweep too
    plain = load_config([])
    assert (plain.model.patch_size, plain.train.lr, plain.train.steps) == (4, 2e-3, 1000)
    assert load_sweep_config(["preset=paper"]).train.lr == 1e-4
    assert load_sweep_config([]).train.lr == 2e-3
