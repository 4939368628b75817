"""What an MLflow tracking URI points at, and how to print one: light (no MLflow import), so that config
checks and the processes that only carry a URI can use it."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

from switchsweep.platform.errors import ConfigError


def is_local_store(uri: str) -> bool:
    """A store on this machine's disk (SQLite or a file path), as opposed to a tracking server."""
    return urlparse(uri).scheme in ("", "file", "sqlite")


DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")  # MLflow's SQLAlchemy stores besides SQLite


def is_database(uri: str) -> bool:
    """A database server MLflow's tracking store writes to directly (postgresql://, postgresql+psycopg://,
    mysql+pymysql://, ...): every node that reaches it shares it, and the artifacts go where the experiment says."""
    return urlparse(uri).scheme.split("+")[0] in DATABASE_SCHEMES


def is_server(uri: str) -> bool:
    """An MLflow tracking server, which keeps (or serves) its experiments' artifacts itself."""
    return uri == "databricks" or urlparse(uri).scheme in ("http", "https", "databricks")


def require_store(uri: str) -> str:
    """`uri`, once a local SQLite store is known to exist: reading must not create an empty one."""
    local = uri.removeprefix("sqlite:///")
    if local != uri and not Path(local).is_file():
        raise ConfigError(
            f"no MLflow store at {local}: run `switchsweep sweep` first, or set sweep.root to the folder "
            "a sweep used (sweep.root=DIR)"
        )
    return uri


_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&][^=&\s]*(?:secret|token|password|passwd|key|signature|credential|auth)[^=&\s]*=)[^&\s]*",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """`text` with URI credentials masked: `user:token@` and secret-looking query values become ***."""
    return _SECRET_QUERY.sub(r"\g<key>***", _USERINFO.sub(r"\g<scheme>***@", text))
