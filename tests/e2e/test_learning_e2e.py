"""The science holds at the defaults: tiny DiT and Switch-DiT trained as the default sweep trains its trials
draw digits of the class they are asked for, and KID falls while they learn (benchmarks/learning.py has
the curves these defaults were chosen from)."""

import dataclasses

import pytest

from switchsweep.config.compose import load_sweep_config
from switchsweep.trainers.evaluation.curve import LearningCurve
from switchsweep.trainers.loop.trainer import train


@pytest.mark.parametrize(
    "model", [["model=dit"], ["model=switch_dit", "model.num_experts=3", "model.top_k=2"]], ids=["dit", "switch_dit"]
)
def test_the_default_sweep_s_models_learn_to_draw_their_classes(model, digits_net, tmp_path):
    _, _, cache = digits_net
    job = load_sweep_config(["sweep=design_space", *model, f"eval.cache_dir={cache}", "eval.device=cpu"])
    cfg = dataclasses.replace(
        job,
        train=dataclasses.replace(job.train, device="cpu", progress=False, out_dir=str(tmp_path)),
        sample=dataclasses.replace(job.sample, per_class=0),
    )
    curve = LearningCurve(job.sweep.eval_every)
    train(cfg, curve)
    accuracy = [p["class_accuracy"] for p in curve.points]
    kid = [p["kid_x1e3"] for p in curve.points]
    assert [p["step"] for p in curve.points][-1] == job.train.steps
    assert accuracy[-1] >= 0.9, f"class accuracy at each evaluation: {accuracy}"
    assert kid[-1] < kid[0], f"KID x 10^3 at each evaluation: {kid}"
