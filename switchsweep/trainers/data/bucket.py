"""Prepared latents in a bucket (`data.path=s3://...`, any URI pyarrow reads): each node copies the folder
to its own disk once, every shard checked against the manifest's sha256, then memory-maps the copy as it
would a local folder. A copy is complete only once its manifest is there, which is written last, and a
shard is renamed into place only once its hash is right: an interrupted or damaged copy is never read.
`prepare out=s3://...` writes the folder where a node's copy would be, then publishes it to the bucket
the same way round: the manifest removed first and put back last."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path

from switchsweep.platform.errors import ConfigError
from switchsweep.platform.files import atomic_write
from switchsweep.platform.storage import read_bytes, storage_fs, storage_join

MANIFEST = "manifest.json"
CACHE_ENV = "SWITCHSWEEP_LATENT_CACHE"  # where the copies go; default below, on the node's own disk
DEFAULT_CACHE = "~/.cache/switchsweep/latents"
CHUNK = 8 << 20


def cache_folder(uri: str) -> Path:
    """This node's copy of the prepared folder at `uri`."""
    root = Path(os.environ.get(CACHE_ENV, DEFAULT_CACHE)).expanduser()
    return root / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]


def local_copy(uri: str, manifest: dict, raw: bytes) -> Path:
    """The folder at `uri` on this node's disk, copied once (the node's other workers wait for it and
    reuse it); `manifest` and `raw` are its manifest, parsed and as stored."""
    folder = cache_folder(uri)
    if _complete(folder, raw):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _complete(folder, raw):
            return folder
        (folder / MANIFEST).unlink(missing_ok=True)  # an older copy: incomplete until its new manifest is back
        fs, base = storage_fs(uri)
        for shard in manifest["shards"]:
            for key in ("latents", "labels"):
                _fetch(fs, f"{base}/{shard[key]}", folder / shard[key], shard[f"{key}_sha256"], uri)
        atomic_write(folder / MANIFEST, lambda f: f.write(raw))
    return folder


def _complete(folder: Path, raw: bytes) -> bool:
    path = folder / MANIFEST
    return path.is_file() and path.read_bytes() == raw


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(fs, src: str, dst: Path, sha256: str, uri: str) -> None:
    """`src` to `dst` through a .part file, renamed into place once its sha256 is the manifest's."""
    if dst.is_file() and _sha256(dst) == sha256:  # copied before an interruption
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    part = dst.with_name(dst.name + ".part")
    digest = hashlib.sha256()
    try:
        with fs.open_input_stream(src) as remote, open(part, "wb") as local:
            while chunk := remote.read(CHUNK):
                digest.update(chunk)
                local.write(chunk)
    except OSError as e:
        part.unlink(missing_ok=True)
        raise ConfigError(
            f"data.path={uri}: {dst.name} cannot be read there ({type(e).__name__}): rerun `switchsweep prepare` "
            "into it, or copy the shard again"
        ) from None
    if digest.hexdigest() != sha256:
        part.unlink()
        raise ConfigError(
            f"data.path={uri}: {dst.name} there does not match its manifest's sha256 (damaged or from another "
            "prepare): rerun `switchsweep prepare` into it, or copy the whole prepared folder again"
        )
    os.replace(part, dst)


def remote_manifest(uri: str) -> dict | None:
    """The manifest published at `uri`, or None where there is none (or it is unreadable: it is replaced)."""
    raw = read_bytes(storage_join(uri, MANIFEST))
    try:
        return json.loads(raw) if raw is not None else None
    except ValueError:
        return None


def publish(folder: Path, uri: str) -> int:
    """The prepared `folder` (its manifest written) into `uri`: the manifest there removed first, so no node
    copies a half-updated folder, each shard uploaded unless the manifest there already had it with the same
    hash, the manifest last. Returns how many files went up."""
    fs, base = storage_fs(uri)
    before = {s["latents"]: s for s in (remote_manifest(uri) or {}).get("shards", [])}
    if _exists(fs, f"{base}/{MANIFEST}"):
        fs.delete_file(f"{base}/{MANIFEST}")
    manifest = json.loads((folder / MANIFEST).read_bytes())
    sent = 0
    for shard in manifest["shards"]:
        old = before.get(shard["latents"], {})
        for key in ("latents", "labels"):
            if old.get(f"{key}_sha256") != shard[f"{key}_sha256"] or not _exists(fs, f"{base}/{shard[key]}"):
                _put(folder / shard[key], fs, f"{base}/{shard[key]}")
                sent += 1
    _put(folder / MANIFEST, fs, f"{base}/{MANIFEST}")
    return sent + 1


def _exists(fs, path: str) -> bool:
    from pyarrow.fs import FileType

    return fs.get_file_info(path).type == FileType.File


def _put(src: Path, fs, dst: str) -> None:
    fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
    with open(src, "rb") as local, fs.open_output_stream(dst) as remote:
        while chunk := local.read(CHUNK):
            remote.write(chunk)
