"""Every command refuses bad input the same way: exit code 2, one line naming the setting and the fix,
and nothing made: no sweep folder, no MLflow store or run, no Ray process."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from switchsweep.cli import main
from switchsweep.config.schema import Config
from switchsweep.platform.checkpoint import FORMAT as CHECKPOINT_FORMAT
from tests.support.latent_data import image_folder, tiny_vae
from tests.support.sweep_harness import pids

# (command line, words the one line must hold). {tmp} is the test's folder, holding the files below.
CASES = [
    ("train model.top_k=5", "model.top_k=5"),
    ("train model.name=unet", "model.name='unet'"),
    ("train model=unet", "model"),
    ("train train.steps=0", "train.steps=0"),
    ("train data.batch_size=0", "data.batch_size"),
    ("train train.lr=-1", "train.lr"),
    ("train model.size=XXL", "model.size='XXL'"),
    ("train train.precision=fp16", "train.precision='fp16'"),
    ("train no_such_setting=1", "no_such_setting"),
    ("train --config {tmp}/missing.yaml", "no such file"),
    ("train --config /etc/passwd", "not a switchsweep config"),
    ("train --config {tmp}/broken.yaml", "not valid YAML at line 3, column 1"),
    ("train train.resume={tmp}/missing.pt", "train.resume="),
    ("train train.resume={tmp}/corrupt.pt", "corrupt or not a checkpoint"),
    ("evaluate", "checkpoint is not set"),
    ("evaluate checkpoint={tmp}/missing.pt", "no such checkpoint file"),
    ("evaluate checkpoint={tmp}/corrupt.pt", "corrupt or not a checkpoint"),
    ("evaluate checkpoint={tmp}/corrupt.pt eval.num_samples=0", "eval.num_samples"),
    ("evaluate checkpoint={tmp}/corrupt.pt eval.sampler=euler", "eval.sampler"),
    ("sweep sweep=no_such_sweep", "sweep"),
    ("sweep sweep.search=bayes", "sweep.search='bayes'"),
    ("sweep sweep.id=../../etc", "sweep.id='../../etc'"),
    ("sweep sweep.id=a'b", "sweep.id="),
    ("sweep sweep.name=a/b", "sweep.name='a/b'"),
    ("sweep sweep.metric=accuracy", "sweep.metric='accuracy'"),
    ("sweep sweep.mode=max", "sweep.mode='max'"),
    ("sweep sweep.num_trials=0", "sweep.num_trials=0"),
    ("sweep sweep.seeds=0", "sweep.seeds=0"),
    ("sweep sweep.eval_every=100000", "sweep.eval_every=100000"),
    ("sweep platform=cluster", "SWITCHSWEEP_"),
    ("sweep sweep.ray.address=auto", "sweep.ray.storage_path=null with sweep.ray.address=auto"),
    (
        "sweep sweep.ray.address=auto sweep.ray.storage_path=s3://b/s",
        "sweep.tracking_uri=null with sweep.ray.address=auto",
    ),
    ("sweep sweep.ray.driver_resource=CPU", "sweep.ray.driver_resource=CPU"),
    ("sweep +sweep.ray.worker_resources={GPU:1}", "sweep.ray.worker_resources="),
    ("sweep sweep.ray.one_gpu_resource=GPU", "sweep.ray.one_gpu_resource=GPU"),
    ("sweep sweep.log_checkpoints=sometimes", "sweep.log_checkpoints='sometimes'"),
    ("sweep sweep.ray.num_workers=3", "not divisible by sweep.ray.num_workers=3"),
    ("sweep sweep.ray.trainable_cpus=0", "sweep.ray.trainable_cpus=0"),
    ("sweep sweep.asha=true sweep.objectives=[kid_x1e3,gflops]", "sweep.asha=true"),
    ("sweep sweep.search=grid", "sweep.grid is empty"),
    ("sweep sweep=table1 model.top_k=9", "model.top_k=9"),
    ("sweep --resume", "no interrupted design_space sweep"),
    ("sweep --resume sweep.id=design_space-1", "sweep.id=design_space-1: no such sweep"),
    ("sweep --extend 0", "--extend 0"),
    ("export", "no MLflow store"),
    ("export top=many", "top=many"),
    ("export sweep.id=../x", "sweep.id='../x'"),
    ("report", "no MLflow store"),
    ("report sweep.search=bayes", "sweep.search='bayes'"),
    ("prepare out=lat", "prepare needs data.root="),
    (
        "prepare data=imagenet256 data.vae={tmp}/vae out=lat",
        "prepare needs data.root=",
    ),  # a preset's training needs wait
    ("prepare data.shard_size=x out=lat", "data.shard_size=x"),
    ("prepare data.root={tmp}/images data.vae={tmp}/vae out={tmp}/corrupt.pt", "is a file, not a folder"),
    ("prepare data.root={tmp}/images data.vae={tmp}/vae", "prepare needs out="),
    ("prepare data.root={tmp}/empty data.vae={tmp}/vae out=lat", "data.root={tmp}/empty: no images"),
    ("prepare data.root={tmp}/images data.vae={tmp}/missing out=lat", "data.vae={tmp}/missing: no such folder"),
    ("prepare data.root={tmp}/images data.vae={tmp}/images out=lat", "config.json is missing"),
    (
        "prepare data.root={tmp}/images data.vae={tmp}/vae out=lat data.resolution=15",
        "data.resolution=15 is not a multiple",
    ),
    ("prepare data.root={tmp}/images data.vae={tmp}/vae out=lat seed=x", "seed=x"),
    ("prepare data.root={tmp}/images data.vae={tmp}/vae out=lat encoders=0", "encoders=0"),
    (
        "prepare data.root={tmp}/images data.vae={tmp}/vae out=lat data.image_size=32",
        "data.image_size is not used by prepare: the latent size follows from data.resolution (pixels / 8 with an SD "
        "VAE): "
        "set data.resolution",
    ),
    (
        "prepare data.root={tmp}/images data.vae={tmp}/vae out=lat train.steps=5",
        "train.steps is not used by prepare: prepare reads only data.root, data.vae, data.resolution, data.flip, "
        "data.shard_size",
    ),
    ("train data=latents", "data=latents needs data.path="),
    # A training run scores nothing: it asks for no evaluation settings, sweeps and evaluate do.
    ("train data=latents data.path={tmp}", "no manifest.json"),
    (
        "sweep data=latents data.path={tmp}/latents data.image_size=8 eval.feature_net=digits",
        "set eval.feature_net=inception",
    ),
    (
        "sweep data=latents data.path={tmp}/latents data.image_size=8",
        "eval.feature_net=inception needs eval.inception_weights=<.pt file of FID InceptionV3 weights>",
    ),
    ("evaluate checkpoint={tmp}/latent-ckpt.pt", "eval.feature_net=inception needs eval.inception_weights="),
    ("train data=latents data.path={tmp}/latents", "data.image_size=32: the latents in"),
    (
        "train data=latents data.path={tmp}/latents data.image_size=8 data.num_classes=3",
        "shard shards/latents-00000.npy is unreadable",
    ),
    ("sweep data=latents data.path={tmp} eval.inception_weights=w.pt", "no manifest.json"),
    ("ui port=99999", "port=99999"),
    ("optuna-ui port=http", "port=http"),
    ("optuna-ui", "no design_space sweep"),
]


def _ray_processes() -> set[int]:
    return set(pids(lambda cmd: b"raylet" in cmd or b"gcs_server" in cmd))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "broken.yaml").write_text("model:\n  top_k: [2\n")
    (tmp / "corrupt.pt").write_bytes(b"not a checkpoint at all")
    image_folder(tmp / "images", per_class=1)
    tiny_vae(tmp / "vae")
    (tmp / "empty" / "class").mkdir(parents=True)
    # A prepared folder whose one shard is damaged: 4x8x8 latents of 3 classes.
    (tmp / "latents" / "shards").mkdir(parents=True)
    (tmp / "latents" / "shards" / "latents-00000.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(tmp / "latents" / "shards" / "labels-00000.npy", np.zeros(2, np.int64))
    (tmp / "latents" / "manifest.json").write_text(
        json.dumps(
            {
                "format": 1,
                "root": str(tmp / "images"),
                "classes": ["a", "b", "c"],
                "resolution": 16,
                "latent_shape": [4, 8, 8],
                "scale_factor": 0.18215,
                "vae": {"path": str(tmp / "vae"), "config_sha256": ""},
                "shards": [{"latents": "shards/latents-00000.npy", "labels": "shards/labels-00000.npy", "count": 2}],
            }
        )
    )
    # A checkpoint of a run trained on latents without evaluation weights (only its config is read before the refusal).
    cfg = Config()
    cfg.data.name, cfg.data.path, cfg.eval.feature_net = "latents", str(tmp / "latents"), "inception"
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "step": 0,
            "model": {},
            "ema": {},
            "optimizer": {},
            "rng": {},
            "config": OmegaConf.to_container(OmegaConf.structured(cfg)),
        },
        tmp / "latent-ckpt.pt",
    )
    return tmp


def test_the_table_covers_every_command():
    assert len(CASES) >= 30
    assert {c.split()[0] for c, _ in CASES} == {
        "train",
        "evaluate",
        "sweep",
        "prepare",
        "export",
        "report",
        "ui",
        "optuna-ui",
    }


@pytest.mark.parametrize("line,words", CASES, ids=[c for c, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_makes_nothing(line, words, files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default sweep.root (runs/) and store land here, if anywhere
    for name in ("SWITCHSWEEP_STORAGE", "SWITCHSWEEP_TRACKING_URI"):  # what a cluster's head sets
        monkeypatch.delenv(name, raising=False)
    before = _ray_processes()
    argv = [a.replace("{tmp}", str(files)) for a in line.split()]
    if argv[0] in ("sweep", "export", "report", "ui", "optuna-ui"):
        argv.append(f"sweep.root={tmp_path / 'runs'}")
    assert main(argv) == 2
    out = capsys.readouterr()
    lines = [x for x in out.err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"switchsweep {argv[0]}: error: "), out.err
    assert words.replace("{tmp}", str(files)) in lines[0]
    assert "Traceback" not in out.err and "root:x:0" not in out.err  # never a file's contents
    assert list(tmp_path.iterdir()) == []  # no sweep folder, no mlflow.db, no artifacts
    assert _ray_processes() <= before
