"""Prepared latents in a bucket (an S3 endpoint on 127.0.0.1): a node trains on the same latents as from
the local folder, copies them once, and never reads a damaged or half-copied shard."""

import json

import numpy as np
import pyarrow.fs as pafs
import pytest
import torch

from switchsweep.config.schema import DataConfig
from switchsweep.platform.errors import ConfigError
from switchsweep.trainers.data.bucket import CACHE_ENV, cache_folder
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


def test_prepare_refuses_a_bucket_as_its_output_before_any_work(tmp_path):
    from switchsweep.trainers.data.prepare import check_inputs

    with pytest.raises(ConfigError, match=r"^out=s3://b/x: prepare writes a folder on a disk"):
        check_inputs(DataConfig(name="latents", root=str(tmp_path)), "s3://b/x")
