"""The names every table module shares: file and folder names of a table root, the table's
columns, verification settings, and where a version lives (a local folder or an object-store
URL)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from include.recsys.core.uri import is_remote, normalize
from include.recsys.tables import commitlog
from include.recsys.tables.storage import ObjectStore, storage_options

log = logging.getLogger(__name__)


SCHEMA_VERSION = 1

CURRENT = "CURRENT"

LOG_DIR = commitlog.LOG_DIR

FALLBACK = "_fallback.parquet"

MANIFEST = "_manifest.json"

STAGING_PREFIX = ".staging-"

#: object stores: retention marks a version before it deletes the manifest, so a manifest-less
#: folder tells "half deleted" (marked: remove at once) from "a live writer's" (grace period)
DELETING = "_deleting"

LOCK = ".publish.lock"

#: staging folders (object stores: manifest-less version folders) untouched this long are
#: abandoned; younger ones may belong to a live run and are never removed
STAGING_GRACE_S = 24 * 3600.0

#: what point_current / rollback check before a commit. Measured on a preset-l-shaped table
#: (2.8M rows, 3 files, 27 MB; ``python -m bench.verify --s3``): sizes 0.07 ms and sha256 22 ms
#: locally (page cache warm); on S3 sizes are one LIST (15 ms on moto) but sha256 downloads the
#: whole table (280 ms on moto, seconds and egress on real S3). So: sha256 on local disk, sizes
#: on object stores (their PUTs are integrity-checked; ``verify --checksum`` on demand).
VERIFY_SHA256_LOCAL = True

VERIFY_SHA256_REMOTE = False

TABLE_COLUMNS = ["user_id", "rank", "item_id", "score", "source", "model_name", "model_version"]

#: other tables under the same protocol (e.g. ``similar_items``: item_id, rank, similar_item_id,
#: score) pass ``columns=`` and ``key=`` (the column each list belongs to, sorted by) to
#: write_part / finalize_version / write_version; the defaults are the recommendations'.
KEY = "user_id"

#: ``point_current(expected_previous=ANY)``: no compare-and-swap (the default).
ANY: Any = object()


def _store(root: Path | str) -> ObjectStore | None:
    """The object store of a URL root; None for a local folder (the default code path)."""
    return ObjectStore.open(str(normalize(root))) if is_remote(root) else None


def _vrel(version: str) -> str:
    return f"version={version}"


def version_dir(root: Path | str, version: str) -> Path:
    """The folder of a version: a ``Path`` locally, a pathlib-like ``UPath`` on an object store
    (``str()`` of it is the URL)."""
    if is_remote(root):
        from upath import UPath

        return UPath(f"{normalize(root)}/{_vrel(version)}", **storage_options())
    return Path(root) / _vrel(version)
