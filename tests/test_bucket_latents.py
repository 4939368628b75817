"""Prepared latents in a bucket (an S3 endpoint on 127.0.0.1): a node trains on the same latents as from
the local folder, copies them once, and never reads a damaged or half-copied shard."""

import json

import numpy as np
import pyarrow.fs as pafs
import pytest
import torch

from switchsweep.config.schema import DataConfig
from switchsweep.platform.errors import ConfigError
from switchsweep.trainers.data.bucket import CACHE_ENV, cache_folder, publish, remote_manifest
from switchsweep.trainers.data.latents import (
    FORMAT,
    MANIFEST,
    check_prepared,
    load_latents,
    write_manifest,
    write_shard,
)
from tests.support.s3 import S3
from tests.support.sweep_harness import free_port

CLASSES = 3


def _prepared(out, shards: int = 2, per_shard: int = 5):
    rng = np.random.default_rng(0)
    entries = [
        write_shard(
            out,
            i,
            rng.standard_normal((per_shard, 4, 4, 4)).astype(np.float16),
            rng.integers(0, CLASSES, per_shard),
            CLASSES,
        )
        for i in range(shards)
    ]
    plan = {
        "format": FORMAT,
        "root": "generated",
        "classes": [str(c) for c in range(CLASSES)],
        "resolution": 32,
        "flip": False,
        "seed": 0,
        "latent_shape": [4, 4, 4],
        "scale_factor": 1.0,
        "dtype": "float16",
        "vae": {"path": "", "config_sha256": ""},
    }
    write_manifest(out, plan, entries)
    return out


@pytest.fixture(scope="module")
def bucket():
    s3 = S3(free_port()).start()
    yield s3
    s3.stop()


@pytest.fixture
def node(bucket, tmp_path, monkeypatch):
    """This process as a node: the endpoint's credentials, its own cache; the folder uploaded, manifest last."""
    for key, value in bucket.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    local = _prepared(tmp_path / "prepared")
    uri = f"s3://{bucket.bucket}/{tmp_path.name}/latents"
    fs, base = pafs.FileSystem.from_uri(uri)
    names = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file() and p.name != MANIFEST)
    for name in [*names, MANIFEST]:
        with fs.open_output_stream(f"{base}/{name}") as f:
            f.write((local / name).read_bytes())
    return local, uri, fs, base


def _data(path) -> DataConfig:
    return DataConfig(name="latents", path=str(path), image_size=4, channels=4, num_classes=CLASSES)


def test_a_node_trains_on_the_buckets_latents_as_on_the_local_folder_and_copies_them_once(node):
    local, uri, fs, base = node
    want_latents, want_labels = load_latents(_data(local))
    got_latents, got_labels = load_latents(_data(uri))
    idx = torch.arange(len(want_latents))
    assert torch.equal(got_latents[idx], want_latents[idx]) and torch.equal(got_labels, want_labels)
    copy = cache_folder(uri)
    assert (copy / MANIFEST).read_bytes() == (local / MANIFEST).read_bytes()
    assert not list(copy.rglob("*.part"))
    stamps = {p: p.stat().st_mtime_ns for p in copy.rglob("*.npy")}
    assert len(stamps) == 4
    load_latents(_data(uri))  # the node's next start: its copy serves, nothing is fetched again
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*.npy")} == stamps


def test_a_damaged_shard_in_the_bucket_is_refused_and_nothing_half_copied_is_kept(node):
    local, uri, fs, base = node
    shard = json.loads((local / MANIFEST).read_text())["shards"][1]["latents"]
    with fs.open_output_stream(f"{base}/{shard}") as f:
        f.write(b"not the shard the manifest hashed")
    with pytest.raises(ConfigError, match=r"latents-00001\.npy there does not match its manifest's sha256"):
        load_latents(_data(uri))
    copy = cache_folder(uri)
    assert not (copy / MANIFEST).exists() and not list(copy.rglob("*.part"))
    assert not (copy / shard).exists()
    with fs.open_output_stream(f"{base}/{shard}") as f:  # repaired: the next start completes the copy
        f.write((local / shard).read_bytes())
    assert len(load_latents(_data(uri))[0]) == 10 and (copy / MANIFEST).is_file()


def test_a_bucket_folder_without_a_manifest_is_one_line(node, bucket):
    _, uri, _, _ = node
    with pytest.raises(ConfigError, match=r"^data\.path=s3://.*/nowhere: no manifest\.json"):
        check_prepared(_data(uri.replace("/latents", "/nowhere")))


def test_a_published_folder_reads_back_and_a_republish_sends_only_what_changed(bucket, tmp_path, monkeypatch):
    for key, value in bucket.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    local = _prepared(tmp_path / "prepared", shards=3)
    uri = f"s3://{bucket.bucket}/{tmp_path.name}/published"
    assert publish(local, uri) == 3 * 2 + 1  # every shard's two files, then the manifest
    want_latents, want_labels = load_latents(_data(local))
    got_latents, got_labels = load_latents(_data(uri))
    idx = torch.arange(len(want_latents))
    assert torch.equal(got_latents[idx], want_latents[idx]) and torch.equal(got_labels, want_labels)
    # The same folder again: nothing but the manifest; one shard redone: its two files and the manifest.
    assert publish(local, uri) == 1
    entries = [json.loads(p.read_text()) for p in sorted((local / "shards").glob("*.json"))]
    rng = np.random.default_rng(1)
    entries[2] = write_shard(local, 2, rng.standard_normal((5, 4, 4, 4)).astype(np.float16), np.arange(5) % 3, 3)
    write_manifest(local, {**json.loads((local / MANIFEST).read_text()), "format": FORMAT}, entries)
    assert publish(local, uri) == 2 + 1
    assert remote_manifest(uri) == json.loads((local / MANIFEST).read_text())


def test_an_interrupted_publish_leaves_no_manifest_for_a_node_to_trust(bucket, tmp_path, monkeypatch):
    from switchsweep.trainers.data import bucket as bucket_module

    for key, value in bucket.env.items():
        monkeypatch.setenv(key, value)
    local = _prepared(tmp_path / "prepared")
    uri = f"s3://{bucket.bucket}/{tmp_path.name}/cut"
    publish(local, uri)
    entries = [json.loads(p.read_text()) for p in sorted((local / "shards").glob("*.json"))]
    entries[1] = write_shard(local, 1, np.ones((5, 4, 4, 4), np.float16), np.arange(5) % 3, 3)
    write_manifest(local, json.loads((local / MANIFEST).read_text()), entries)
    real_put = bucket_module._put

    def cut(src, fs, dst):
        if dst.endswith(MANIFEST):
            raise OSError("connection lost")
        real_put(src, fs, dst)

    monkeypatch.setattr(bucket_module, "_put", cut)
    with pytest.raises(OSError):
        publish(local, uri)
    with pytest.raises(ConfigError, match=r"^data\.path=s3://.*/cut: no manifest\.json"):
        check_prepared(_data(uri))


def test_prepare_into_a_bucket_refuses_one_that_holds_other_latents_before_any_work(bucket, tmp_path, monkeypatch):
    from switchsweep.trainers.data.prepare import check_inputs
    from tests.support.latent_data import image_folder, tiny_vae

    for key, value in bucket.env.items():
        monkeypatch.setenv(key, value)
    uri = f"s3://{bucket.bucket}/{tmp_path.name}/taken"
    publish(_prepared(tmp_path / "prepared"), uri)  # root "generated", resolution 32
    root = image_folder(tmp_path / "imgs", per_class=1)
    data = DataConfig(name="latents", root=str(root), vae=str(tiny_vae(tmp_path / "vae")), resolution=16)
    with pytest.raises(ConfigError, match=r"^out=s3://.*/taken already holds latents prepared with other root"):
        check_inputs(data, uri)


def test_prepare_into_a_bucket_without_credentials_is_one_line(tmp_path, monkeypatch):
    from switchsweep.trainers.data.prepare import check_inputs

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    data = DataConfig(name="latents", root=str(tmp_path), vae=str(tmp_path), resolution=16)
    with pytest.raises(ConfigError, match=r"^out=s3://b/x: no AWS credentials"):
        check_inputs(data, "s3://b/x")
