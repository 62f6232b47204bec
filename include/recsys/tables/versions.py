"""Versioned recommendation tables, their manifest, and the commit protocol that serves them.

Layout under the recommendations root::

    version=<id>/part-00000.parquet ...   sorted by user_id
    version=<id>/_fallback.parquet         the list served to users the table does not know
    version=<id>/_manifest.json           written last; lists every file with its size and sha256
    _log/<seq: 20 digits>.json            one immutable commit per move of CURRENT: the truth
    CURRENT                               the served version id (one line), kept in step with the log

**Writing** a version: locally into a hidden ``.staging-<id>`` folder renamed into place only
when complete (so ``version=<id>/`` always holds a whole table); on an object store straight
into ``version=<id>/`` with the manifest as the LAST object. A version without a manifest is
incomplete: never listed, verified, served nor rolled back to.

**Serving** a version (:func:`point_current`, :func:`rollback`) is one commit, in the way Delta
Lake and Iceberg commit (:mod:`include.recsys.tables.commitlog`):

1. verify the version (:func:`verify_version`: every file its manifest lists exists with the
   recorded size, and locally the recorded sha256: see ``VERIFY_SHA256_LOCAL``), and refuse
   older data than what is served (:class:`StaleData`);
2. create log entry ``n+1`` exclusively (hard link locally, ``If-None-Match: *`` on S3); it
   names the version, the one it replaces, its parent entry ``n``, the data window, the model
   version, the reason and any override;
3. replace CURRENT (temp + fsync + ``os.replace`` + fsync of the folder; one PUT on S3).

A crash before step 2 leaves the old state, after it the new one: the log is the truth and
CURRENT a cache for fast readers. Whoever finds CURRENT behind the log's newest entry (any
:func:`read_current`, the next publish, rollback or cleanup) rolls it forward, once that
entry's version verifies; an entry whose version does not verify is a failed commit, and the
next writer supersedes it with a new entry back to the last version that does. Locally every
commit runs under :func:`publish_lock`; across hosts the exclusive create of entry ``n+1`` is
the compare-and-swap: two writers cannot both take the same number.

**Retention** (:func:`cleanup`) deletes a version's manifest FIRST (the version turns invisible),
then its files; it protects CURRENT, the rollback target and the last served versions read
from the log, and leaves staging folders (object stores: manifest-less version folders) alone
until nothing was written in them for ``staging_grace_s`` (default 24 h, four times the nightly
DAG's ``dagrun_timeout``): a file's age is the only liveness signal that works for mapped
writers on several hosts of a shared filesystem (a pid or a flock dies with each task).

Object stores (the root is a URL such as ``s3://bucket/prefix`` or ``memory://name``; see
:mod:`include.recsys.tables.storage`): CURRENT is written with ``If-Match`` on the ETag read, so a
stale writer cannot move it behind the log. With ``RECSYS_STORAGE_CONDITIONAL_WRITES=0``
(stores that reject those headers) the log entry is read back after its PUT instead, which
catches most but not all races: concurrent publishers must then be serialised by Airflow
(``max_active_runs=1``, a one-slot pool).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from include.recsys.core.crashpoints import crashpoint
from include.recsys.core.io import atomic_path, file_sha256, fsync_dir, fsync_file
from include.recsys.core.uri import is_remote, normalize
from include.recsys.errors import PublishError
from include.recsys.tables.current import read_current
from include.recsys.tables.layout import (
    FALLBACK,
    KEY,
    MANIFEST,
    STAGING_PREFIX,
    TABLE_COLUMNS,
    _store,
    _vrel,
    version_dir,
)
from include.recsys.tables.manifest import _full_manifest, _manifests
from include.recsys.tables.storage import ObjectStore

log = logging.getLogger(__name__)


def _staging_path(root: Path, version: str) -> Path:
    """Where the parts of an unpublished version are written (shared by all shard writers)."""
    return Path(root) / f"{STAGING_PREFIX}{version}"


def _clean_staging_on_error(fn):
    """Remove this process's staging folder of ``version`` when ``fn`` raises (disk full, a
    bad table, ...), then re-raise. A SIGKILLed writer cannot do this: :func:`cleanup` removes
    its ``.staging-*`` leftovers, and readers never look at them."""

    @functools.wraps(fn)
    def wrapper(root: Path | str, version: str, *args: Any, **kwargs: Any) -> Path:
        try:
            return fn(root, version, *args, **kwargs)
        except BaseException:
            if is_remote(root):
                with contextlib.suppress(Exception):
                    discard_staged(root, version)
            else:
                shutil.rmtree(_staging_path(Path(root), version), ignore_errors=True)
            raise

    return wrapper


def discard_staged(root: Path | str, version: str) -> None:
    """Forget the unpublished parts of ``version`` before it is written again (a fresh plan).

    Locally: the staging folder. On an object store, where parts live in ``version=<id>/``
    itself: the manifest first (the version turns incomplete), then its other objects; the
    served version is never touched.
    """
    store = _store(root)
    if store is None:
        shutil.rmtree(_staging_path(Path(root), version), ignore_errors=True)
        return
    if read_current(root) == version:
        return
    store.delete(f"{_vrel(version)}/{MANIFEST}")
    store.delete(_vrel(version), recursive=True)


def _check_writable(root: Path, version: str) -> None:
    if read_current(root) == version:
        raise PublishError(f"version {version} is served by CURRENT and cannot be rewritten")


def _sorted_by_user_rank(table: pd.DataFrame, key: str = KEY) -> pd.DataFrame:
    """``table`` sorted by (user_id, rank); a shard's rows usually are already (users in id
    order, ranks ascending), and then the string sort is skipped. ``key``: another table's
    list column instead of user_id."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(table)
    if n < 2:
        return table.reset_index(drop=True)
    users = pa.array(table[key])  # zero-copy for Arrow-backed strings
    if users.null_count == 0:
        ranks = pa.array(table["rank"])
        u0, u1 = users.slice(0, n - 1), users.slice(1)
        # each next row: a greater key, or the same key with a greater rank (Arrow compute:
        # no Python string per row)
        step = pc.or_(pc.less(u0, u1), pc.and_(pc.equal(u0, u1), pc.less(ranks.slice(0, n - 1), ranks.slice(1))))
        if pc.all(step).as_py():
            return table.reset_index(drop=True)
    return table.sort_values([key, "rank"], kind="stable", ignore_index=True)


def _part_counts(table: pd.DataFrame, key: str) -> dict[str, int]:
    """A part's distinct list owners: ``users`` for the recommendations, ``keys`` otherwise."""
    return {"users" if key == KEY else "keys": int(table[key].nunique())}


def write_part(
    root: Path | str, version: str, index: int, table: pd.DataFrame, *, row_group_rows: int = 16_384,
    columns: list[str] | None = None, key: str = KEY,
) -> dict[str, Any]:
    """Write one part file of an unpublished version (a shard's rows, sorted by user_id).

    Shards write their parts independently (mapped tasks on any worker); a retry overwrites
    its own part. Row groups of ``row_group_rows`` rows keep point lookups by user_id cheap
    (Parquet min/max statistics prune all but one group).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = _store(root)
    root = root if store else Path(root)
    _check_writable(root, version)
    columns = columns or TABLE_COLUMNS
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise PublishError(f"{'recommendation' if key == KEY else key.split('_')[0]} table lacks column(s) {missing}")
    if store is not None:
        return _write_part_remote(store, version, index, table, row_group_rows, columns, key)
    staging = _staging_path(root, version)
    staging.mkdir(parents=True, exist_ok=True)
    table = _sorted_by_user_rank(table[columns], key)
    path = staging / f"part-{index:05d}.parquet"
    with atomic_path(path, fsync=True) as tmp:
        pq.write_table(
            pa.Table.from_pandas(table, preserve_index=False), tmp,
            row_group_size=row_group_rows, compression="zstd",
        )
    out = {"path": path.name, "rows": len(table), **_part_counts(table, key), "sha256": file_sha256(path),
           "size": path.stat().st_size}
    crashpoint("after_first_part")
    return out


def _parquet_bytes(table: pd.DataFrame, **kw: Any) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), buf, **kw)
    return buf.getvalue().to_pybytes()


def _write_part_remote(
    store: ObjectStore, version: str, index: int, table: pd.DataFrame, row_group_rows: int,
    columns: list[str] = TABLE_COLUMNS, key: str = KEY,
) -> dict[str, Any]:
    """A part written in place (no rename on object stores): one PUT of the whole file."""
    vrel = _vrel(version)
    if store.exists(f"{vrel}/{MANIFEST}"):  # rewriting a complete, unserved version
        log.warning("version %s is rewritten: its manifest goes first", store.url_of(vrel))
        store.delete(f"{vrel}/{MANIFEST}")
    table = _sorted_by_user_rank(table[columns], key)
    data = _parquet_bytes(table, row_group_size=row_group_rows, compression="zstd")
    name = f"part-{index:05d}.parquet"
    store.write_bytes(f"{vrel}/{name}", data)
    crashpoint("after_first_part")
    return {
        "path": name, "rows": len(table), **_part_counts(table, key),
        "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
    }


def _finalize_remote(
    root: Path | str, store: ObjectStore, version: str, parts: list[dict[str, Any]],
    fallback: pd.DataFrame, manifest: dict[str, Any], columns: list[str] | None = None,
) -> Path:
    """Object-store twin of :func:`finalize_version`: check the parts (present, same size),
    drop strays, write the fallback list, then the manifest LAST (the version is complete
    from that one PUT on)."""
    vrel = _vrel(version)
    sizes = store.sizes(vrel)
    for part in parts:
        if part["path"] not in sizes or ("size" in part and sizes[part["path"]] != part["size"]):
            raise PublishError(f"part {part['path']} of version {version} is missing or changed")
    names = {p["path"] for p in parts}
    for name in sizes:
        if name.startswith("part-") and name.endswith(".parquet") and name not in names:
            store.delete(f"{vrel}/{name}")  # e.g. from an earlier attempt with more shards
    fb = _parquet_bytes(fallback)
    store.write_bytes(f"{vrel}/{FALLBACK}", fb)
    fb_meta = {"path": FALLBACK, "size": len(fb), "sha256": hashlib.sha256(fb).hexdigest()}
    manifest = _full_manifest(version, parts, manifest, fb_meta, columns)
    store.write_bytes(f"{vrel}/{MANIFEST}", json.dumps(manifest, indent=2, default=str).encode())
    crashpoint("after_staged_manifest")
    log.info(
        "version %s complete: %d rows for %d lists in %d part(s)",
        store.url_of(vrel), manifest["rows"], manifest.get("users", manifest.get("keys")), len(parts),
    )
    return version_dir(root, version)


def finalize_version(
    root: Path | str,
    version: str,
    parts: list[dict[str, Any]],
    fallback: pd.DataFrame,
    manifest: dict[str, Any],
    *,
    columns: list[str] | None = None,
) -> Path:
    """Complete a staged version: fallback list + manifest (written last), then rename it
    into ``version=<id>/`` in one step. Refuses when a part named in ``parts`` is missing or
    differs from what its writer reported. ``columns``: the table's, for its manifest."""
    store = _store(root)
    root = root if store else Path(root)
    _check_writable(root, version)
    parts = sorted(parts, key=lambda p: p["path"])
    if store is not None:
        return _finalize_remote(root, store, version, parts, fallback, manifest, columns)
    staging = _staging_path(root, version)
    for part in parts:
        path = staging / part["path"]
        if not path.exists() or file_sha256(path) != part["sha256"]:
            raise PublishError(f"part {part['path']} of version {version} is missing or changed")
    stray = {p.name for p in staging.glob("part-*.parquet")} - {p["path"] for p in parts}
    for name in stray:  # e.g. from an earlier attempt with more shards
        (staging / name).unlink()
    fb_path = staging / FALLBACK
    fallback.to_parquet(fb_path, index=False)
    fsync_file(fb_path)
    fb_meta = {"path": FALLBACK, "size": fb_path.stat().st_size, "sha256": file_sha256(fb_path)}
    manifest = _full_manifest(version, parts, manifest, fb_meta, columns)
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    fsync_file(staging / MANIFEST)
    fsync_dir(staging)
    crashpoint("after_staged_manifest")
    target = version_dir(root, version)
    if target.exists():
        log.warning("replacing unpublished version folder %s (a previous attempt)", target)
        _remove_version_dir(target)
    os.replace(staging, target)
    fsync_dir(root)
    log.info(
        "version %s complete: %d rows for %d lists in %d part(s)",
        version, manifest["rows"], manifest.get("users", manifest.get("keys")), len(parts),
    )
    return target


@_clean_staging_on_error
def write_version(
    root: Path | str,
    version: str,
    table: pd.DataFrame,
    fallback: pd.DataFrame,
    manifest: dict[str, Any],
    *,
    rows_per_part: int = 2_000_000,
    row_group_rows: int = 16_384,
    columns: list[str] | None = None,
    key: str = KEY,
) -> Path:
    """Write a complete version (parts, fallback, manifest) from one process and return it.

    ``columns`` / ``key``: another table's columns and list column (default: the
    recommendations', lists per ``user_id``).

    Re-writing a version that exists but is not served replaces it (a task retry); re-writing
    the served version is refused. On any error the staging folder is removed.
    """
    if is_remote(root):
        _check_writable(root, version)
        t0 = time.perf_counter()
        discard_staged(root, version)
    else:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        _check_writable(root, version)
        t0 = time.perf_counter()
        shutil.rmtree(_staging_path(root, version), ignore_errors=True)
    table = table.sort_values([key, "rank"], kind="stable", ignore_index=True)
    # parts split at user boundaries so each part holds whole users
    cuts = list(range(0, max(len(table), 1), rows_per_part)) + [len(table)]
    bounds = [0]
    users = table[key].to_numpy()
    for c in cuts[1:-1]:
        while 0 < c < len(table) and users[c] == users[c - 1]:
            c += 1
        if c > bounds[-1]:
            bounds.append(c)
    bounds.append(len(table))
    bounds = sorted(set(bounds))
    if len(bounds) == 1:
        bounds.append(0)
    parts = [
        write_part(root, version, i, table.iloc[lo:hi], row_group_rows=row_group_rows, columns=columns, key=key)
        for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))
    ]
    target = finalize_version(root, version, parts, fallback, manifest, columns=columns)
    log.info("wrote version %s in %.2fs", version, time.perf_counter() - t0)
    return target


def list_versions(root: Path | str) -> list[dict[str, Any]]:
    """Complete versions (with a manifest), oldest first, with a ``current`` flag."""
    current = read_current(root)
    out = []
    for info in _manifests(root):
        out.append(
            {
                "version": info["version"],
                "created_at": info.get("created_at"),
                "rows": info.get("rows"),
                "users": info.get("users"),
                "model_version": info.get("model_version"),
                "current": info["version"] == current,
            }
        )
    out.sort(key=lambda v: v["created_at"] or "")
    return out


def _remove_version_dir(folder: Path, *, retention: bool = False) -> None:
    """The manifest first (the version turns invisible at once), then the rest."""
    (folder / MANIFEST).unlink(missing_ok=True)
    fsync_dir(folder)
    if retention:
        crashpoint("mid_retention")
    shutil.rmtree(folder, ignore_errors=True)


def read_version_table(folder: Path | str, columns: list[str] | None = None) -> pd.DataFrame:
    """The rows of a version folder (a path, or the URL ``str(version_dir(...))``) as one
    DataFrame in part order; ``_``-prefixed files (manifest, fallback) are not rows."""
    if not is_remote(folder):
        return pd.read_parquet(Path(folder), columns=columns)
    url = str(normalize(folder))
    store = ObjectStore.open(url)
    names = [n for n in store.listdir() if n.startswith("part-") and n.endswith(".parquet")]
    if not names:
        raise PublishError(f"{url} holds no part files")
    return read_parts(store, names, columns).to_pandas()


def read_parts(store: ObjectStore, rels: list[str], columns: list[str] | None = None):
    """Parquet objects under ``store`` concatenated into one pyarrow Table (read in parallel)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = store.read_many(rels, missing_ok=False)
    return pa.concat_tables([pq.read_table(pa.BufferReader(raw[r]), columns=columns) for r in rels])
