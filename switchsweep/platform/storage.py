"""A sweep's storage (Tune state, Train checkpoints): a local path or a URI such as s3://bucket/sweeps."""

from __future__ import annotations

import pyarrow.fs as pafs


def storage_fs(path: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of `path` and the path on it, without a trailing slash."""
    fs, base = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
    return fs, base.rstrip("/")
