"""Storage shared by a cluster's nodes: a local path or a URI such as s3://bucket/sweeps (a sweep's Tune
state and Train checkpoints, the evaluation cache, weights files)."""

from __future__ import annotations

import socket
from pathlib import Path

import pyarrow.fs as pafs

from switchsweep.platform.errors import ConfigError
from switchsweep.platform.files import atomic_write


def is_uri(path: str) -> bool:
    return "://" in path


def storage_fs(path: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of `path` and the path on it, without a trailing slash."""
    fs, base = pafs.FileSystem.from_uri(path) if is_uri(path) else (pafs.LocalFileSystem(), path)
    return fs, base.rstrip("/")


def storage_join(base: str, name: str) -> str:
    """`name` inside the folder `base` (a local folder, ~ expanded, or a URI)."""
    return f"{base.rstrip('/')}/{name}" if is_uri(base) else str(Path(base).expanduser() / name)


def read_bytes(path: str) -> bytes | None:
    """The whole file at `path` (a local path, ~ expanded, or a URI), or None where there is none."""
    fs, where = storage_fs(path if is_uri(path) else str(Path(path).expanduser()))
    if fs.get_file_info(where).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(where) as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    """The file at `path`, whole or not at all: a local file by rename; an object store's put already is."""
    if not is_uri(path):
        atomic_write(Path(path).expanduser(), lambda f: f.write(data))
        return
    fs, where = storage_fs(path)
    fs.create_dir(where.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(where) as f:
        f.write(data)


def list_folders(base: str) -> list[str]:
    """The folders directly in `base` (a local folder or a URI), as paths of the same kind; none if it is missing."""
    fs, where = storage_fs(base if is_uri(base) else str(Path(base).expanduser()))
    infos = fs.get_file_info(pafs.FileSelector(where, allow_not_found=True))
    return sorted(storage_join(base, i.base_name) for i in infos if i.type == pafs.FileType.Directory)


def check_credentials(path: str, field: str) -> None:
    """Refuse, in one line, an s3:// `path` for which this machine has no AWS credentials: each write there
    would fail, the first only once a trial has trained to its first checkpoint. (The S3 client would
    rather go on anonymously, which a private bucket refuses.)"""
    if not path.startswith("s3://"):
        return
    import botocore.session

    if botocore.session.get_session().get_credentials() is None:
        raise ConfigError(
            f"{field}={path}: no AWS credentials on {socket.gethostname()}: give its instance a profile with "
            "the bucket (cluster.yaml's IamInstanceProfile), or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
