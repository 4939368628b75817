import dataclasses
import json
import statistics

import pytest
import torch
from PIL import Image

from switchsweep.cli import main
from switchsweep.config.compose import load_config, load_eval_config
from switchsweep.platform.checkpoint import load_checkpoint, save_checkpoint
from switchsweep.platform.errors import CheckpointError, ConfigError, TrainingError
from switchsweep.trainers.evaluation.evaluate import evaluate_checkpoint
from switchsweep.trainers.loop import trainer as loop
from switchsweep.trainers.loop.trainer import train


@pytest.mark.parametrize("model", ["switch_dit", "dit", "dtr"])
def test_resume_reproduces_the_uninterrupted_run_exactly(tiny_cfg, tmp_path, model):
    tiny_cfg.model.name = model
    straight = train(tiny_cfg)

    first = dataclasses.replace(
        tiny_cfg, train=dataclasses.replace(tiny_cfg.train, steps=3, out_dir=str(tmp_path / "a"))
    )
    part1 = train(first)
    resumed_cfg = dataclasses.replace(
        tiny_cfg, train=dataclasses.replace(tiny_cfg.train, resume=str(part1.checkpoint), out_dir=str(tmp_path / "b"))
    )
    part2 = train(resumed_cfg)
    assert part1.losses + part2.losses == straight.losses  # bit-exact, step by step
    a = load_checkpoint(straight.checkpoint)
    b = load_checkpoint(part2.checkpoint)
    assert a["step"] == b["step"] == 6
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]) if torch.is_tensor(v) else v == b["model"][k], k


@pytest.mark.slow
def test_compiled_blocks_train_like_eager_ones_and_keep_the_checkpoint_format(tiny_cfg, tmp_path):
    eager = train(tiny_cfg)
    compiled_cfg = dataclasses.replace(
        tiny_cfg, train=dataclasses.replace(tiny_cfg.train, compile=True, out_dir=str(tmp_path / "compiled"))
    )
    compiled = train(compiled_cfg)
    # Inductor fuses elementwise work, so float sums may round differently; the run is the same.
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-4, abs=1e-5)
    a, b = load_checkpoint(eager.checkpoint)["model"], load_checkpoint(compiled.checkpoint)["model"]
    assert a.keys() == b.keys()
    for k, v in a.items():
        if torch.is_tensor(v) and v.is_floating_point():
            torch.testing.assert_close(b[k], v, rtol=1e-3, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def test_compile_without_a_cpp_compiler_is_one_line_before_any_work(tiny_cfg, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    tiny_cfg.train.compile = True
    with pytest.raises(
        ConfigError, match="train.compile=true on a CPU needs a C\\+\\+ compiler and no-such-compiler-here"
    ):
        loop.Trainer(tiny_cfg)


def test_only_blocks_with_data_independent_shapes_are_compiled():
    from switchsweep.config.schema import Config
    from switchsweep.models import build_model

    cfg = Config()
    for name, blocks in (("switch_dit", 6), ("dit_moe", 0)):
        cfg.model.name = name
        model = build_model(cfg.model, cfg.data, cfg.diffusion.num_timesteps)
        assert loop.compile_blocks(model) == blocks  # compiling is lazy: nothing runs until the first call
        compiled = [m for m in model.modules() if getattr(m, "_compiled_call_impl", None) is not None]
        assert len(compiled) == blocks


def test_checkpoint_holds_the_run_and_loads_weights_only(tiny_cfg):
    result = train(tiny_cfg)
    payload = torch.load(result.checkpoint, weights_only=True)
    assert {"model", "ema", "optimizer", "step", "rng", "config"} <= set(payload)
    assert payload["config"]["model"]["name"] == "switch_dit" and payload["step"] == 6
    assert payload["model"]["_extra_state"] == {"matchings": 6}  # tie-breaking stream position
    assert not list(result.checkpoint.parent.glob(".*tmp*"))  # the atomic write left no temp file


def test_corrupt_or_foreign_checkpoint_is_a_clear_error(tiny_cfg, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    good = train(tiny_cfg).checkpoint
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    assert main(["train", f"train.resume={truncated}"]) == 2
    assert "corrupt" in capsys.readouterr().err
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a switchsweep checkpoint"):
        load_checkpoint(foreign)
    other = tmp_path / "other.pt"
    payload = load_checkpoint(good)
    payload["config"]["model"]["num_experts"] = 5
    save_checkpoint({k: v for k, v in payload.items() if k != "format"}, other)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        train(load_config([f"train.resume={other}", "train.steps=9", "train.progress=false"]))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_cfg, monkeypatch):
    tiny_cfg.train.ckpt_every = 2
    tiny_cfg.train.steps = 4
    good = train(tiny_cfg).checkpoint

    real = loop.load_dataset

    def poisoned(cfg):
        images, labels = real(cfg)
        return images * float("nan"), labels

    monkeypatch.setattr(loop, "load_dataset", poisoned)
    tiny_cfg.train.steps = 8
    tiny_cfg.train.resume = str(good)
    with pytest.raises(TrainingError, match=r"non-finite loss .* at step 5; last good checkpoint kept"):
        train(tiny_cfg)
    assert load_checkpoint(good)["step"] == 4


def test_resume_that_is_already_done_says_so(tiny_cfg):
    done = train(tiny_cfg).checkpoint
    tiny_cfg.train.resume = str(done)
    with pytest.raises(TrainingError, match="raise train.steps"):
        train(tiny_cfg)


def test_cli_train_writes_checkpoint_and_sample_grid(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(
        [
            "train",
            "model=dit",
            "train.steps=4",
            "data.batch_size=8",
            f"train.out_dir={out}",
            "sample.steps=3",
            "sample.per_class=2",
            "train.device=cpu",
            "train.progress=false",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "checkpoint:" in capsys.readouterr().out and (out / "ckpt.pt").is_file()
    grid = Image.open(out / "samples.png")
    assert grid.size == ((10 * 9 + 1) * 4, (2 * 9 + 1) * 4)  # 10 classes x 2 rows of 8x8 + 1px gaps, x4


@pytest.mark.slow
def test_150_steps_of_switch_dit_tiny_on_digits_lower_the_loss(tmp_path):
    cfg = load_config(
        [
            "model=switch_dit",
            "model.size=tiny",
            "data=digits",
            "train.steps=150",
            f"train.out_dir={tmp_path}",
            "train.progress=false",
            "sample.per_class=1",
            "train.device=cpu",
        ]
    )
    result = train(cfg)
    first, last = statistics.mean(result.losses[:30]), statistics.mean(result.losses[-30:])
    assert len(result.losses) == 150
    assert last < 0.4 * first, (first, last)  # measured: about 1.08 -> 0.26
    assert result.last_metrics["loss_prior"] > 0 and result.samples.is_file()


def test_evaluate_cli_scores_a_checkpoint_and_writes_json(tiny_cfg, tmp_path, digits_net, capsys):
    ckpt = train(tiny_cfg).checkpoint
    out = tmp_path / "eval.json"
    (tmp_path / "cache").mkdir()  # the session's feature network; the reference features are computed here
    classifier = next(digits_net[2].glob("digits-cnn-*.pt"))
    (tmp_path / "cache" / classifier.name).write_bytes(classifier.read_bytes())
    code = main(
        [
            "evaluate",
            f"checkpoint={ckpt}",
            "eval.num_samples=24",
            "eval.batch_size=10",
            "eval.sampler=ddim",
            "eval.steps=3",
            "eval.cfg_scale=1.5",
            "eval.kid_subsets=5",
            f"eval.cache_dir={tmp_path / 'cache'}",
            f"eval.out={out}",
            "eval.device=cpu",
        ]
    )
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["step"] == 6 and result["num_samples"] == 24
    assert set(result["metrics"]) >= {
        "fid",
        "fid_se",
        "kid_x1e3",
        "kid_x1e3_se",
        "kid_x1e3_subset_sd",
        "inception_score",
        "precision",
        "recall",
        "class_accuracy",
        "class_accuracy_se",
    }
    assert "not learned: " in capsys.readouterr().out  # six steps draw no digits
    assert (tmp_path / "cache" / f"ref-digits-8-{classifier.stem}.pt").is_file()
    # The same settings score the same samples again; eval.seed draws other samples (and labels).
    again = [
        f"checkpoint={ckpt}",
        "eval.num_samples=24",
        "eval.batch_size=10",
        "eval.steps=3",
        "eval.kid_subsets=5",
        f"eval.cache_dir={tmp_path / 'cache'}",
        f"eval.out={tmp_path / 'again.json'}",
        "eval.device=cpu",
    ]
    quality = ("fid", "kid_x1e3", "inception_score", "precision", "recall")
    same = evaluate_checkpoint(load_eval_config(again), progress=False)["metrics"]
    assert {k: same[k] for k in quality} == {k: result["metrics"][k] for k in quality}
    other = evaluate_checkpoint(load_eval_config([*again, "eval.seed=1"]), progress=False)["metrics"]
    assert other["fid"] != same["fid"]
