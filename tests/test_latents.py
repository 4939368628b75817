"""The latents path: ImageFolder reading, the prepared folder's reader, the VAE, reference statistics
(fast, on hand-made folders), and `prepare` -> train -> evaluate through local Ray Data (slow)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from switchsweep.config.compose import load_config, load_eval_config
from switchsweep.config.schema import DataConfig
from switchsweep.platform.errors import ConfigError
from switchsweep.trainers.data.batches import BatchStream, load_dataset
from switchsweep.trainers.data.imagefolder import centre_crop, scan
from switchsweep.trainers.data.latents import (
    MANIFEST,
    check_against,
    latent_decoder,
    load_vae,
    read_manifest,
    vae_config,
    vae_config_hash,
)
from switchsweep.trainers.evaluation.metrics import all_metrics, feature_statistics, frechet_distance
from tests.support.latent_data import CLASSES, image_folder, inception_weights, tiny_vae


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    return tiny_vae(tmp_path_factory.mktemp("vae") / "vae")


def _hand_made(folder: Path, vae: Path, sizes=(5, 7, 3), shape=(4, 8, 8), classes=3, seed=0):
    """A prepared folder in the documented format, written here (not by prepare): float16 shards."""
    rng = np.random.default_rng(seed)
    (folder / "shards").mkdir(parents=True)
    shards, all_lat, all_lab = [], [], []
    for i, n in enumerate(sizes):
        lat = rng.standard_normal((n, *shape)).astype(np.float16)
        lab = rng.integers(0, classes, n).astype(np.int64)
        np.save(folder / f"shards/latents-{i:05d}.npy", lat)
        np.save(folder / f"shards/labels-{i:05d}.npy", lab)
        shards.append({"latents": f"shards/latents-{i:05d}.npy", "labels": f"shards/labels-{i:05d}.npy", "count": n})
        all_lat.append(lat)
        all_lab.append(lab)
    manifest = {
        "format": 1,
        "root": str(folder / "images"),
        "classes": [str(c) for c in range(classes)],
        "resolution": 16,
        "flip": False,
        "seed": 0,
        "latent_shape": list(shape),
        "scale_factor": 0.18215,
        "dtype": "float16",
        "vae": {"path": str(vae), "config_sha256": vae_config_hash(vae_config(vae))},
        "num_images": sum(sizes),
        "class_counts": [],
        "shards": shards,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return np.concatenate(all_lat).astype(np.float32), np.concatenate(all_lab)


def _data(folder: Path, **kw) -> DataConfig:
    return DataConfig(
        **{"name": "latents", "path": str(folder), "image_size": 8, "channels": 4, "num_classes": 3, **kw}
    )


# -- ImageFolder -------------------------------------------------------------------------------
def test_centre_crop_keeps_the_middle_and_leaves_a_fitting_image_alone():
    # 128 wide, 64 high: red | green (the middle half) | blue. Halved once to 64x32, the centre 32 is all green.
    band = np.zeros((64, 128, 3), dtype=np.uint8)
    band[:, :32, 0], band[:, 32:96, 1], band[:, 96:, 2] = 255, 255, 255
    out = centre_crop(Image.fromarray(band), 32)
    assert out.shape == (32, 32, 3) and (out[..., 1] == 255).all() and (out[..., [0, 2]] == 0).all()
    exact = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(centre_crop(Image.fromarray(exact), 16), exact)  # no resampling at size
    grey = Image.fromarray(np.full((40, 30), 77, dtype=np.uint8))  # grey is made RGB
    assert centre_crop(grey, 16).shape == (16, 16, 3) and (centre_crop(grey, 16) == 77).all()


def test_scan_lists_classes_and_images_in_a_fixed_order(tmp_path):
    image_folder(tmp_path / "imgs", per_class=3)
    (tmp_path / "imgs" / "cat" / "notes.txt").write_text("not an image")
    classes, items = scan(tmp_path / "imgs")
    assert classes == list(CLASSES) and len(items) == 9
    assert [c for _, c in items] == [0, 0, 0, 1, 1, 1, 2, 2, 2] and items == sorted(items, key=lambda x: (x[1], x[0]))
    flat = tmp_path / "flat"  # images with no class folders: one class (unconditional)
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "a.png")
    assert scan(flat) == ([""], [(str(flat / "a.png"), 0)])
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ConfigError, match="data.root=.*empty: no images"):
        scan(tmp_path / "empty")
    with pytest.raises(ConfigError, match="data.root=.*missing: no such folder"):
        scan(tmp_path / "missing")


# -- the VAE -----------------------------------------------------------------------------------
def test_vae_folder_errors_name_the_setting(tmp_path, vae_dir):
    with pytest.raises(ConfigError, match="data.vae=.*nope: no such folder"):
        vae_config(tmp_path / "nope")
    other = tmp_path / "unet"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ConfigError, match="'UNet2DModel', not an AutoencoderKL"):
        vae_config(other)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((vae_dir / "config.json").read_text())
    with pytest.raises(ConfigError, match="no diffusion_pytorch_model.safetensors"):
        vae_config(bare)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((vae_dir / "config.json").read_text())
    (broken / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ConfigError, match="the VAE does not load"):
        load_vae(broken)


def test_the_decoder_is_the_vae_that_made_the_latents(tmp_path, vae_dir):
    latents, _ = _hand_made(tmp_path / "lat", vae_dir)
    z = torch.from_numpy(latents[:4])
    want = load_vae(vae_dir).decode(z / 0.18215).sample.clamp(-1, 1)  # diffusers directly
    got = latent_decoder(_data(tmp_path / "lat"), torch.device("cpu"))(z, batch_size=3)
    assert got.shape == (4, 3, 16, 16)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    other = tiny_vae(tmp_path / "other", seed=1)  # same architecture, other weights: accepted (config matches)
    latent_decoder(_data(tmp_path / "lat", vae=str(other)), torch.device("cpu"))
    cfg = json.loads((other / "config.json").read_text())
    cfg["latent_channels"] = 8
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="data.vae=.*differs from the VAE the latents"):
        latent_decoder(_data(tmp_path / "lat", vae=str(other)), torch.device("cpu"))


# -- the prepared folder -----------------------------------------------------------------------
def test_sharded_latents_read_back_exactly_and_batch_like_tensors(tmp_path, vae_dir):
    latents, labels = _hand_made(tmp_path / "lat", vae_dir)
    mapped, got_labels = load_dataset(_data(tmp_path / "lat"))
    assert len(mapped) == 15 and mapped.shape == (15, 4, 8, 8)
    np.testing.assert_array_equal(got_labels.numpy(), labels)
    idx = torch.tensor([14, 0, 6, 5, 11, 4])  # across all three shards, out of order
    np.testing.assert_array_equal(mapped[idx].numpy(), latents[idx.numpy()])
    # Batches from the memory-mapped shards are those of the same data held in memory, on every rank.
    for rank in (0, 1):
        a = BatchStream(mapped, got_labels, 6, seed=3, rank=rank, world_size=2)
        b = BatchStream(torch.from_numpy(latents), got_labels, 6, seed=3, rank=rank, world_size=2)
        for step in (0, 1, 2, 5):
            (xa, ya), (xb, yb) = a.batch(step), b.batch(step)
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_a_folder_that_does_not_match_is_refused_in_one_line(tmp_path, vae_dir):
    _hand_made(tmp_path / "lat", vae_dir)
    manifest = read_manifest(tmp_path / "lat")
    for field, value, want in (
        ("channels", 3, "data.channels=3: .* have channels 4: set data.channels=4"),
        ("image_size", 32, "data.image_size=32: .* image_size 8"),
        ("num_classes", 10, "data.num_classes=10: .* num_classes 3"),
    ):
        with pytest.raises(ConfigError, match=want):
            check_against(manifest, _data(tmp_path / "lat", **{field: value}))
    with pytest.raises(ConfigError, match="no manifest.json"):
        read_manifest(tmp_path)
    shard = tmp_path / "lat" / "shards" / "latents-00001.npy"
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    with pytest.raises(ConfigError, match="shard shards/latents-00001.npy is unreadable"):
        load_dataset(_data(tmp_path / "lat"))
    np.save(shard, np.zeros((2, 4, 8, 8), np.float16))  # whole, but not what the manifest lists
    with pytest.raises(ConfigError, match="holds 2 latents, the manifest says 7"):
        load_dataset(_data(tmp_path / "lat"))


# -- reference statistics ----------------------------------------------------------------------
def test_an_adm_reference_batch_gives_fid_from_its_own_statistics():
    rng = np.random.default_rng(0)
    real, fake = rng.standard_normal((60, 5)), rng.standard_normal((50, 5)) + 0.5
    probs = np.full((50, 4), 0.25)
    mu, sigma = real.mean(0) + 1.0, np.eye(5) * 2.0  # not the features': FID must use these
    with_stats, _ = all_metrics(real, fake, probs, kid_subset_size=20, kid_subsets=3, real_statistics=(mu, sigma))
    assert with_stats["fid"] == pytest.approx(frechet_distance(mu, sigma, *feature_statistics(fake)))
    assert with_stats["kid_x1e3"] == all_metrics(real, fake, probs, kid_subset_size=20, kid_subsets=3)[0]["kid_x1e3"]
    only_stats, _ = all_metrics(None, fake, probs, real_statistics=(mu, sigma))  # a batch without arr_0 images
    assert (
        only_stats["fid"] == with_stats["fid"]
        and np.isnan(only_stats["kid_x1e3"])
        and np.isnan(only_stats["precision"])
    )


def test_reference_features_come_from_the_ref_batch_images(tmp_path, vae_dir):
    from switchsweep.trainers.evaluation.features import reference_batch, reference_features, reference_statistics
    from switchsweep.trainers.evaluation.inception import load_fid_inception

    _hand_made(tmp_path / "lat", vae_dir)
    images = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", arr_0=images, mu=np.zeros(2048), sigma=np.eye(2048))
    net = load_fid_inception(inception_weights(tmp_path / "inc.pt"))
    data = _data(tmp_path / "lat", ref_batch=str(tmp_path / "ref.npz"))
    feats = reference_features(data, net, tmp_path / "cache")
    want, _ = net.embed(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1)
    torch.testing.assert_close(feats, want)
    assert reference_statistics(data)[0].shape == (2048,)
    np.savez(tmp_path / "bad.npz", arr_0=images.astype(np.float32))
    with pytest.raises(ConfigError, match="data.ref_batch=.*not \\[N, H, W, 3\\] uint8"):
        reference_batch(tmp_path / "bad.npz")
    np.savez(tmp_path / "none.npz", other=images)
    with pytest.raises(ConfigError, match="neither arr_0 images nor mu and sigma"):
        reference_batch(tmp_path / "none.npz")


def test_the_dataset_presets_compose_to_the_papers_settings():
    for preset, classes, guidance in (("imagenet256", 1000, 1.5), ("ffhq256", 1, 1.0), ("celebahq256", 1, 1.0)):
        cfg = load_config([f"data={preset}", "data.path=/data/x", "eval.inception_weights=/w.pt"])
        d = cfg.data
        assert (d.name, d.image_size, d.channels, d.num_classes, d.resolution, d.batch_size) == (
            "latents",
            32,
            4,
            classes,
            256,
            256,
        )
        assert (cfg.model.patch_size, cfg.train.steps, cfg.train.lr, cfg.diffusion.schedule) == (
            2,
            400000,
            1e-4,
            "cosine",
        )
        assert cfg.eval.feature_net == "inception" and cfg.eval.cfg_scale == guidance


# -- prepare, train, evaluate (Ray Data on this machine) ---------------------------------------
@pytest.fixture(scope="module")
def local_ray():
    import ray

    from switchsweep.config.sweep_schema import RayConfig
    from switchsweep.sweeps.runtime import start_ray

    start_ray(RayConfig(num_cpus=2))  # as `switchsweep prepare` starts it: on 127.0.0.1
    yield
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_prepare_resumes_trains_and_evaluates_on_decoded_samples(local_ray, tmp_path, vae_dir):
    from switchsweep.trainers.data.imagefolder import read_image, to_unit_range
    from switchsweep.trainers.data.latents import file_sha256
    from switchsweep.trainers.data.prepare import prepare
    from switchsweep.trainers.diffusion.gaussian import GaussianDiffusion  # noqa: F401  (import cost outside the timings)
    from switchsweep.trainers.evaluation.evaluate import evaluate_checkpoint
    from switchsweep.trainers.loop.trainer import train

    root = image_folder(tmp_path / "imgs", per_class=5)
    data = DataConfig(
        name="latents",
        image_size=8,
        channels=4,
        num_classes=3,
        root=str(root),
        vae=str(vae_dir),
        resolution=16,
        flip=True,
        shard_size=4,
    )
    out = tmp_path / "lat"
    done = prepare(data, out, seed=7, progress=False)
    assert (done.images, done.shards, done.redone) == (30, 4, 4)  # 15 images and their mirrors, 4 images a shard
    manifest = read_manifest(out)
    assert manifest["classes"] == list(CLASSES) and manifest["class_counts"] == [10, 10, 10]
    assert manifest["latent_shape"] == [4, 8, 8] and manifest["scale_factor"] == pytest.approx(0.18215)
    # A shard is the VAE's posterior sample of its images then their mirrors, seeded by (seed, shard), times the scale.
    _, items = scan(root)
    vae = load_vae(vae_dir)
    images = np.stack([read_image(p, 16) for p, _ in items[4:8]])
    x = torch.from_numpy(to_unit_range(np.concatenate([images, images[:, :, ::-1]])))
    want = vae.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(7 * 1_000_003 + 1)) * 0.18215
    got = np.load(out / "shards" / "latents-00001.npy")
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want.numpy(), atol=2e-3, rtol=2e-3)
    np.testing.assert_array_equal(np.load(out / "shards" / "labels-00001.npy"), [c for _, c in items[4:8]] * 2)

    # Resume: a lost and a damaged shard are redone, the others kept; the result is the same bytes.
    sums = {s["latents"]: s["latents_sha256"] for s in manifest["shards"]}
    (out / "shards" / "latents-00002.npy").unlink()
    damaged = out / "shards" / "latents-00003.npy"
    damaged.write_bytes(damaged.read_bytes()[:-8] + b"\x00" * 8)
    again = prepare(data, out, seed=7, progress=False)
    assert again.redone == 2 and {s["latents"]: s["latents_sha256"] for s in read_manifest(out)["shards"]} == sums
    assert file_sha256(damaged) == sums["shards/latents-00003.npy"]
    with pytest.raises(ConfigError, match="out=.* was prepared with other resolution"):
        prepare(DataConfig(**{**data.__dict__, "resolution": 32}), out, seed=7, progress=False)

    # An unreadable image stops prepare in one line, and the folder has no manifest for training to accept.
    bad_root = image_folder(tmp_path / "bad", per_class=2)
    (bad_root / "dog" / "001.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="data.root: .*dog/001.png is not a readable image"):
        prepare(DataConfig(**{**data.__dict__, "root": str(bad_root)}), tmp_path / "bad_lat", progress=False)
    with pytest.raises(ConfigError, match="no manifest.json"):
        read_manifest(tmp_path / "bad_lat")

    # Train tiny Switch-DiT on the latents, then evaluate: samples are decoded before the feature network.
    weights = inception_weights(tmp_path / "inception.pt")
    cfg = load_config(
        [
            "data=latents",
            f"data.path={out}",
            "data.image_size=8",
            "data.num_classes=3",
            "data.batch_size=6",
            "model.size=tiny",
            "train.steps=3",
            "train.log_every=1",
            f"train.out_dir={tmp_path / 'run'}",
            "train.progress=false",
            "sample.per_class=1",
            "sample.steps=2",
            f"eval.inception_weights={weights}",
        ]
    )
    result = train(cfg)
    assert result.step == 3
    with Image.open(result.samples) as grid:
        assert grid.size == ((3 * 17 + 1) * 2, (17 + 1) * 2) and grid.mode == "RGB"  # 3 decoded 16 px images, scaled 2x
    ev = load_eval_config(
        [
            f"checkpoint={result.checkpoint}",
            "eval.num_samples=8",
            "eval.batch_size=4",
            "eval.steps=2",
            "eval.kid_subset_size=4",
            "eval.kid_subsets=2",
            "eval.pr_k=2",
            f"eval.cache_dir={tmp_path / 'cache'}",
        ]
    )
    assert ev.eval.feature_net == "inception" and ev.eval.inception_weights == str(weights)  # from the checkpoint
    metrics = evaluate_checkpoint(ev, progress=False)["metrics"]
    assert all(np.isfinite(metrics[k]) for k in ("fid", "kid_x1e3", "inception_score"))
    cached = list((tmp_path / "cache").glob("ref-latents-*.pt"))
    assert len(cached) == 1 and torch.load(cached[0], weights_only=True)["features"].shape == (
        15,
        2048,
    )  # the 15 real images


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_sweep_on_latents_scores_decoded_samples_and_logs_decoded_grids(ray_head, tmp_path, vae_dir):
    import subprocess

    from mlflow.tracking import MlflowClient

    from tests.support.sweep_harness import BIN, ENV

    _hand_made(tmp_path / "lat", vae_dir, sizes=(16, 16))
    image_folder(tmp_path / "lat" / "images", per_class=4)  # the manifest's root: the real side of KID
    weights = inception_weights(tmp_path / "inception.pt")
    root = tmp_path / "runs"
    done = subprocess.run(
        [
            str(BIN / "switchsweep"),
            "sweep",
            "sweep=design_space",
            f"sweep.root={root}",
            f"sweep.ray.address={ray_head}",
            "data=latents",
            f"data.path={tmp_path / 'lat'}",
            "data.image_size=8",
            "data.num_classes=3",
            "data.batch_size=8",
            f"eval.inception_weights={weights}",
            f"eval.cache_dir={tmp_path / 'cache'}",
            "sweep.num_trials=1",
            "sweep.baseline=none",
            "train.steps=4",
            "sweep.eval_every=2",
            "eval.num_samples=6",
            "eval.batch_size=6",
            "eval.steps=2",
            "eval.kid_subset_size=3",
            "eval.kid_subsets=2",
            "eval.pr_k=2",
            "sample.per_class=1",
            "sample.steps=2",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=380,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("design_space")
    (trial,) = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("switchsweep.role") != "sweep"]
    assert trial.info.status == "FINISHED" and trial.data.params["data.name"] == "latents"
    assert [m.step for m in client.get_metric_history(trial.info.run_id, "kid_x1e3")] == [2, 4]
    grid = next(
        a.path
        for a in client.list_artifacts(trial.info.run_id, "images")
        if a.path.startswith("images/samples") and a.path.endswith(".png")
    )
    with Image.open(client.download_artifacts(trial.info.run_id, grid, str(tmp_path / "dl"))) as im:
        assert im.mode == "RGB" and im.size == ((3 * 17 + 1) * 2, (17 + 1) * 2)  # 3 decoded 16 px images, 2x
    (cached,) = (tmp_path / "cache").glob("ref-latents-*.pt")  # warmed once by the driver, from the 12 real images
    assert torch.load(cached, weights_only=True)["features"].shape == (12, 2048)
