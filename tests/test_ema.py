"""EMA: its decay sequence, the direction of its update, and that sampling and evaluation use it."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from switchsweep.config.compose import load_eval_config
from switchsweep.platform.checkpoint import load_checkpoint, save_checkpoint
from switchsweep.trainers.data.images import save_image_grid
from switchsweep.trainers.evaluation.evaluate import evaluate_checkpoint
from switchsweep.trainers.loop import trainer as loop
from switchsweep.trainers.loop.ema import EMA
from switchsweep.trainers.loop.trainer import Trainer, train


def test_decay_warms_up_as_the_closed_form_then_holds():
    ema = EMA(torch.nn.Linear(1, 1), decay=0.5)
    got = []
    for _ in range(12):
        got.append(ema.current_decay())
        ema.num_updates += 1
    want = [min(0.5, (1 + n) / (10 + n)) for n in range(12)]  # 0.1, 2/11, 3/12, ..., then 0.5 from n = 8
    assert got == pytest.approx(want) and got[0] == pytest.approx(0.1) and got[-1] == 0.5


def test_update_moves_the_average_towards_the_model_by_one_minus_decay():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9)
    avg = np.zeros(2)
    for n, target in enumerate([1.0, 3.0, -2.0, 5.0, 0.5] * 3):
        with torch.no_grad():
            model.weight.fill_(target)
        d = min(0.9, (1 + n) / (10 + n))
        avg = d * avg + (1 - d) * target  # e <- d e + (1 - d) theta
        ema.update(model)
        np.testing.assert_allclose(ema.model.weight.detach().numpy()[0], avg, rtol=0, atol=1e-6)
    assert not ema.model.weight.requires_grad  # the average is never trained itself


def _diverged(tiny_cfg, tmp_path):
    """A trained run's checkpoint plus two copies: raw weights scrambled (EMA intact), EMA scrambled."""
    ckpt = train(tiny_cfg).checkpoint
    payload = load_checkpoint(ckpt)
    scramble = {
        k: v + 0.1 * torch.randn_like(v) if v.is_floating_point() else v
        for k, v in payload["model"].items()
        if torch.is_tensor(v)
    }
    raw = tmp_path / "raw_scrambled.pt"
    save_checkpoint(
        {**{k: v for k, v in payload.items() if k != "format"}, "model": {**payload["model"], **scramble}}, raw
    )
    ema_bad = tmp_path / "ema_scrambled.pt"
    ema_state = {
        **payload["ema"],
        "model": {**payload["ema"]["model"], **{k: v for k, v in scramble.items() if k in payload["ema"]["model"]}},
    }
    save_checkpoint({**{k: v for k, v in payload.items() if k != "format"}, "ema": ema_state}, ema_bad)
    return ckpt, raw, ema_bad


def test_evaluate_scores_the_ema_weights(tiny_cfg, tmp_path, digits_net):
    ckpt, raw, ema_bad = _diverged(tiny_cfg, tmp_path)

    def score(path):
        cfg = load_eval_config(
            [
                f"checkpoint={path}",
                "eval.num_samples=16",
                "eval.batch_size=16",
                "eval.steps=2",
                "eval.kid_subset_size=8",
                "eval.kid_subsets=2",
                f"eval.cache_dir={digits_net[2]}",
                f"eval.out={tmp_path / 'e.json'}",
                "eval.device=cpu",
            ]
        )
        evaluate_checkpoint(cfg)
        metrics = json.loads((tmp_path / "e.json").read_text())["metrics"]
        return {k: v for k, v in metrics.items() if not k.endswith("_per_sec")}  # timings vary

    base = score(ckpt)
    assert score(raw) == base  # the raw weights play no part
    assert score(ema_bad)["fid"] != base["fid"]


def test_sample_grid_draws_with_the_ema_model(tiny_cfg, tmp_path):
    tiny_cfg.sample.per_class = 1
    tiny_cfg.sample.steps = 2
    trainer = Trainer(tiny_cfg)
    with torch.no_grad():  # make the raw model differ from its average
        for p in trainer.model.parameters():
            p.add_(torch.randn_like(p))
    got = np.asarray(Image.open(trainer.sample_grid(tmp_path / "grid.png")))
    labels = torch.arange(10)

    def drawn_with(model):
        gen = torch.Generator().manual_seed(tiny_cfg.train.seed)
        images = loop.sample_images(
            model,
            trainer.diffusion,
            labels,
            sampler="ddim",
            steps=2,
            cfg_scale=tiny_cfg.sample.cfg_scale,
            eta=0.0,
            generator=gen,
        )
        return np.asarray(Image.open(save_image_grid(images, tmp_path / "ref.png", nrow=10)))

    np.testing.assert_array_equal(got, drawn_with(trainer.ema.model))
    assert not np.array_equal(got, drawn_with(trainer.model.eval()))


def test_resume_restores_ema_optimizer_and_weighting_state(tiny_cfg, tmp_path):
    tiny_cfg.train.loss_weighting = "uw"
    straight = load_checkpoint(train(tiny_cfg).checkpoint)
    first = dataclasses.replace(
        tiny_cfg, train=dataclasses.replace(tiny_cfg.train, steps=3, out_dir=str(tmp_path / "a"))
    )
    part1 = train(first)
    resumed = dataclasses.replace(
        tiny_cfg, train=dataclasses.replace(tiny_cfg.train, resume=str(part1.checkpoint), out_dir=str(tmp_path / "b"))
    )
    again = load_checkpoint(train(resumed).checkpoint)
    assert again["ema"]["num_updates"] == straight["ema"]["num_updates"] == 6
    for k, v in straight["ema"]["model"].items():
        assert torch.equal(v, again["ema"]["model"][k]) if torch.is_tensor(v) else v == again["ema"]["model"][k], k
    assert torch.equal(straight["weighting"]["uw.log_var"], again["weighting"]["uw.log_var"])
    assert straight["weighting"]["uw.log_var"].abs().sum() > 0  # it trained
    for i, state in straight["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(state[name], again["optimizer"]["state"][i][name]), (i, name)
