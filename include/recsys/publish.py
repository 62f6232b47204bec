"""Versioned recommendation tables, their manifest, and the atomic CURRENT pointer.

Layout under the recommendations root::

    version=<id>/part-00000.parquet ...   sorted by user_id
    version=<id>/_fallback.parquet         the list served to users the table does not know
    version=<id>/_manifest.json           written last inside the staging folder
    CURRENT                               the served version id (one line)
    _history.jsonl                        append-only log of every CURRENT move

A version is written into a hidden staging folder and renamed into place only when complete,
so ``version=<id>/`` always holds a whole table. CURRENT is replaced with temp file + fsync +
``os.replace`` + fsync of the folder: a reader sees the old or the new id, never a mix. The
served version and its predecessor are never deleted.

Object stores (the root is a URL such as ``s3://bucket/prefix`` or ``memory://name``; see
:mod:`include.recsys.storage`) have no rename, so the same functions write differently there:

* parts and ``_fallback.parquet`` go straight to ``version=<id>/`` and ``_manifest.json`` is
  the LAST object written; a version without a manifest is incomplete: never listed, read
  nor pointed at (a rewrite of an unserved version deletes its manifest first);
* ``CURRENT`` is one small object written last, with one PUT (atomic on S3: a reader gets the
  old or the new id). The PUT is conditional where the store offers it (``If-Match`` on the
  ETag read, ``If-None-Match: *`` for the first publish), which makes ``point_current`` a
  compare-and-swap across hosts: a publisher that lost raises :class:`PublishConflict`.
  With ``RECSYS_STORAGE_CONDITIONAL_WRITES=0`` (stores that reject those headers) or on
  stores without ETags the check is per process only, and concurrent publishers must be
  serialised by Airflow (``max_active_runs=1``, a one-slot pool);
* the publish log cannot be appended to: each CURRENT move is one object
  ``_history/<sequence>.json`` (created with ``If-None-Match: *``), read back in name order.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.recsys import storage
from include.recsys.storage import ObjectStore

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CURRENT = "CURRENT"
HISTORY = "_history.jsonl"
HISTORY_DIR = "_history"  # object stores: one object per CURRENT move
FALLBACK = "_fallback.parquet"
MANIFEST = "_manifest.json"
STAGING_PREFIX = ".staging-"
LOCK = ".publish.lock"
TABLE_COLUMNS = ["user_id", "rank", "item_id", "score", "source", "model_name", "model_version"]


class PublishError(RuntimeError):
    """Publishing was refused (e.g. an incomplete version, or overwriting the served one)."""


class PublishConflict(PublishError):
    """CURRENT moved since the caller read it (``expected_previous`` did not match)."""


#: ``point_current(expected_previous=ANY)``: no compare-and-swap (the default).
ANY: Any = object()


def _store(root: Path | str) -> ObjectStore | None:
    """The object store of a URL root; None for a local folder (the default code path)."""
    return ObjectStore.open(str(storage.normalize(root))) if storage.is_remote(root) else None


def _vrel(version: str) -> str:
    return f"version={version}"


@contextlib.contextmanager
def publish_lock(root: Path | str, timeout: float = 60.0) -> Iterator[None]:
    """Exclusive lock on ``<root>/.publish.lock`` (``fcntl.flock``) around every CURRENT move.

    Serialises publishes and rollbacks from any process or thread on this host (and on shared
    filesystems that honour flock). The kernel drops the lock when the holder dies, even by
    SIGKILL, so a crashed publish never leaves a stale lock. Raises PublishError after
    ``timeout`` seconds.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    raise PublishError(f"could not lock {root / LOCK} within {timeout}s: {exc}") from exc
                time.sleep(0.01)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


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
            if storage.is_remote(root):
                with contextlib.suppress(Exception):
                    discard_staged(root, version)
            else:
                shutil.rmtree(_staging_path(Path(root), version), ignore_errors=True)
            raise

    return wrapper


def version_dir(root: Path | str, version: str) -> Path:
    """The folder of a version: a ``Path`` locally, a pathlib-like ``UPath`` on an object store
    (``str()`` of it is the URL)."""
    if storage.is_remote(root):
        from upath import UPath

        return UPath(f"{storage.normalize(root)}/{_vrel(version)}", **storage.storage_options())
    return Path(root) / f"version={version}"


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def file_sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_current(root: Path | str) -> str | None:
    """The served version id, or None before the first publish."""
    store = _store(root)
    if store is not None:
        try:
            return store.read_bytes(CURRENT).decode("utf-8", errors="replace").strip() or None
        except FileNotFoundError:
            return None
    try:
        return (Path(root) / CURRENT).read_text().strip() or None
    except FileNotFoundError:
        return None


def _check_writable(root: Path, version: str) -> None:
    if read_current(root) == version:
        raise PublishError(f"version {version} is served by CURRENT and cannot be rewritten")


def _sorted_by_user_rank(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` sorted by (user_id, rank); a shard's rows usually are already (users in id
    order, ranks ascending), and then the string sort is skipped."""
    users = table["user_id"]
    if users.is_monotonic_increasing:
        u = users.to_numpy()
        same = u[1:] == u[:-1]
        if (np.diff(table["rank"].to_numpy())[same] > 0).all():
            return table.reset_index(drop=True)
    return table.sort_values(["user_id", "rank"], kind="stable", ignore_index=True)


def write_part(
    root: Path | str, version: str, index: int, table: pd.DataFrame, *, row_group_rows: int = 16_384
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
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise PublishError(f"recommendation table lacks column(s) {missing}")
    if store is not None:
        return _write_part_remote(store, version, index, table, row_group_rows)
    staging = _staging_path(root, version)
    staging.mkdir(parents=True, exist_ok=True)
    table = _sorted_by_user_rank(table[TABLE_COLUMNS])
    path = staging / f"part-{index:05d}.parquet"
    tmp = staging / f".part-{index:05d}.parquet.tmp"
    try:
        pq.write_table(
            pa.Table.from_pandas(table, preserve_index=False), tmp,
            row_group_size=row_group_rows, compression="zstd",
        )
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    users = int(table["user_id"].nunique())
    return {"path": path.name, "rows": len(table), "users": users, "sha256": file_sha256(path)}


def _parquet_bytes(table: pd.DataFrame, **kw: Any) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), buf, **kw)
    return buf.getvalue().to_pybytes()


def _write_part_remote(
    store: ObjectStore, version: str, index: int, table: pd.DataFrame, row_group_rows: int
) -> dict[str, Any]:
    """A part written in place (no rename on object stores): one PUT of the whole file."""
    vrel = _vrel(version)
    if store.exists(f"{vrel}/{MANIFEST}"):  # rewriting a complete, unserved version
        log.warning("version %s is rewritten: its manifest goes first", store.url_of(vrel))
        store.delete(f"{vrel}/{MANIFEST}")
    table = _sorted_by_user_rank(table[TABLE_COLUMNS])
    data = _parquet_bytes(table, row_group_size=row_group_rows, compression="zstd")
    name = f"part-{index:05d}.parquet"
    store.write_bytes(f"{vrel}/{name}", data)
    return {
        "path": name, "rows": len(table), "users": int(table["user_id"].nunique()),
        "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
    }


def _full_manifest(version: str, parts: list[dict[str, Any]], manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        **manifest,
        "schema_version": SCHEMA_VERSION,
        "version": version,
        "columns": TABLE_COLUMNS,
        "files": [{k: p[k] for k in ("path", "rows", "sha256")} for p in parts],
        "rows": int(sum(p["rows"] for p in parts)),
        "users": int(sum(p["users"] for p in parts)),
        "created_at": datetime.now(timezone.utc).isoformat(),
    }


def _finalize_remote(
    root: Path | str, store: ObjectStore, version: str, parts: list[dict[str, Any]],
    fallback: pd.DataFrame, manifest: dict[str, Any],
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
    store.write_bytes(f"{vrel}/{FALLBACK}", _parquet_bytes(fallback))
    manifest = _full_manifest(version, parts, manifest)
    store.write_bytes(f"{vrel}/{MANIFEST}", json.dumps(manifest, indent=2, default=str).encode())
    log.info(
        "version %s complete: %d rows for %d users in %d part(s)",
        store.url_of(vrel), manifest["rows"], manifest["users"], len(parts),
    )
    return version_dir(root, version)


def finalize_version(
    root: Path | str,
    version: str,
    parts: list[dict[str, Any]],
    fallback: pd.DataFrame,
    manifest: dict[str, Any],
) -> Path:
    """Complete a staged version: fallback list + manifest (written last), then rename it
    into ``version=<id>/`` in one step. Refuses when a part named in ``parts`` is missing or
    differs from what its writer reported."""
    store = _store(root)
    root = root if store else Path(root)
    _check_writable(root, version)
    parts = sorted(parts, key=lambda p: p["path"])
    if store is not None:
        return _finalize_remote(root, store, version, parts, fallback, manifest)
    staging = _staging_path(root, version)
    for part in parts:
        path = staging / part["path"]
        if not path.exists() or file_sha256(path) != part["sha256"]:
            raise PublishError(f"part {part['path']} of version {version} is missing or changed")
    stray = {p.name for p in staging.glob("part-*.parquet")} - {p["path"] for p in parts}
    for name in stray:  # e.g. from an earlier attempt with more shards
        (staging / name).unlink()
    fb_path = staging / "_fallback.parquet"
    fallback.to_parquet(fb_path, index=False)
    _fsync_file(fb_path)
    manifest = _full_manifest(version, parts, manifest)
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    _fsync_file(staging / MANIFEST)
    _fsync_dir(staging)
    target = version_dir(root, version)
    if target.exists():
        log.warning("replacing unpublished version folder %s (a previous attempt)", target)
        shutil.rmtree(target)
    os.replace(staging, target)
    _fsync_dir(root)
    log.info(
        "version %s complete: %d rows for %d users in %d part(s)",
        version, manifest["rows"], manifest["users"], len(parts),
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
) -> Path:
    """Write a complete version (parts, fallback, manifest) from one process and return it.

    Re-writing a version that exists but is not served replaces it (a task retry); re-writing
    the served version is refused. On any error the staging folder is removed.
    """
    if storage.is_remote(root):
        _check_writable(root, version)
        t0 = time.perf_counter()
        discard_staged(root, version)
    else:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        _check_writable(root, version)
        t0 = time.perf_counter()
        shutil.rmtree(_staging_path(root, version), ignore_errors=True)
    table = table.sort_values(["user_id", "rank"], kind="stable", ignore_index=True)
    # parts split at user boundaries so each part holds whole users
    cuts = list(range(0, max(len(table), 1), rows_per_part)) + [len(table)]
    bounds = [0]
    users = table["user_id"].to_numpy()
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
        write_part(root, version, i, table.iloc[lo:hi], row_group_rows=row_group_rows)
        for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))
    ]
    target = finalize_version(root, version, parts, fallback, manifest)
    log.info("wrote version %s in %.2fs", version, time.perf_counter() - t0)
    return target


def read_manifest(root: Path | str, version: str) -> dict[str, Any]:
    """The manifest of a complete version; PublishError when it has none (incomplete/absent)."""
    store = _store(root)
    if store is not None:
        try:
            raw = store.read_bytes(f"{_vrel(version)}/{MANIFEST}")
        except FileNotFoundError:
            raise PublishError(f"version {version} has no manifest: it is incomplete or absent") from None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise PublishError(f"the manifest of version {version} is corrupt: {exc}") from None
    path = version_dir(root, version) / MANIFEST
    if not path.exists():
        raise PublishError(f"version {version} has no manifest: it is incomplete or absent")
    return json.loads(path.read_text())


def _append_history(root: Path, entry: dict[str, Any]) -> None:
    with open(root / HISTORY, "a") as fh:
        fh.write(json.dumps(entry, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _history_remote(store: ObjectStore) -> list[tuple[str, dict[str, Any]]]:
    names = [n for n in store.listdir(HISTORY_DIR) if n.endswith(".json")]
    raw = store.read_many([f"{HISTORY_DIR}/{n}" for n in names])
    return [(n, json.loads(raw[f"{HISTORY_DIR}/{n}"])) for n in names if f"{HISTORY_DIR}/{n}" in raw]


def _append_history_remote(store: ObjectStore, entry: dict[str, Any]) -> None:
    """One object per CURRENT move, named by a sequence number one past the last; created with
    If-None-Match so two writers can never take the same number."""
    names = [n for n in store.listdir(HISTORY_DIR) if n.endswith(".json")]
    seq = int(names[-1].split(".")[0]) + 1 if names else 1
    for attempt in range(20):
        try:
            store.write_bytes(
                f"{HISTORY_DIR}/{seq + attempt:010d}.json",
                json.dumps(entry, default=str).encode(), if_absent=True,
            )
            return
        except storage.WriteConflict:
            continue
    raise PublishError(f"could not append to the publish log {store.url_of(HISTORY_DIR)}")


def history(root: Path | str) -> list[dict[str, Any]]:
    """Every CURRENT move, oldest first (``at``, ``version``, ``previous``, ``reason``, ...)."""
    store = _store(root)
    if store is not None:
        return [entry for _, entry in _history_remote(store)]
    path = Path(root) / HISTORY
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def point_current(
    root: Path | str, version: str, *, reason: str = "publish", expected_previous: Any = ANY
) -> bool:
    """Atomically make ``version`` the served one. Returns False if it already was.

    The read-compare-replace-append sequence runs under :func:`publish_lock`, so two racing
    publishes are serialised and ``_history.jsonl`` stays one chain (each entry's ``previous``
    is the entry before it). With ``expected_previous`` (a version id, or None for "nothing
    served yet") this is a compare-and-swap: if CURRENT names something else,
    :class:`PublishConflict` is raised and nothing changes, so exactly one of several
    publishers that read the same CURRENT wins.
    """
    store = _store(root)
    if store is not None:
        return _point_current_remote(root, store, version, reason, expected_previous)
    root = Path(root)
    manifest = read_manifest(root, version)  # refuses incomplete versions
    with publish_lock(root):
        previous = read_current(root)
        if not _should_move(previous, version, expected_previous):
            return False
        tmp = root / f".{CURRENT}.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            fh.write(version + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, root / CURRENT)
        _fsync_dir(root)
        _append_history(
            root,
            {
                "at": datetime.now(timezone.utc).isoformat(),
                "version": version,
                "previous": previous,
                "reason": reason,
                "model_version": manifest.get("model_version"),
            },
        )
    log.info("CURRENT: %s -> %s (%s)", previous, version, reason)
    return True


def _should_move(previous: str | None, version: str, expected_previous: Any) -> bool:
    """False when CURRENT already names ``version`` (a rerun); PublishConflict when the
    compare-and-swap expectation does not hold; else True."""
    if previous == version:
        log.info("CURRENT already names %s; nothing to do", version)
        return False
    if expected_previous is not ANY and previous != expected_previous:
        raise PublishConflict(
            f"CURRENT is {previous!r}, expected {expected_previous!r}: another publish won; "
            f"{version} not served"
        )
    return True


def _point_current_remote(
    root: Path | str, store: ObjectStore, version: str, reason: str, expected_previous: Any
) -> bool:
    """CURRENT on an object store: read it with its ETag, check, then ONE conditional PUT
    (If-Match on that ETag, or If-None-Match for the first publish). A concurrent move
    between the read and the PUT makes the PUT fail: PublishConflict, nothing changed."""
    manifest = read_manifest(root, version)  # refuses incomplete versions
    try:
        raw, tag = store.read_tagged(CURRENT)
    except FileNotFoundError:
        raw, tag = None, None
    previous = raw.decode("utf-8", errors="replace").strip() or None if raw is not None else None
    if not _should_move(previous, version, expected_previous):
        return False
    try:
        store.write_bytes(
            CURRENT, (version + "\n").encode(),
            if_absent=raw is None, if_match=tag if raw is not None else None, expect=raw,
        )
    except storage.WriteConflict as exc:
        raise PublishConflict(
            f"CURRENT under {store.url} moved while {version} was being published (it was "
            f"{previous!r}): another publish won; {version} not served"
        ) from exc
    _append_history_remote(
        store,
        {
            "at": datetime.now(timezone.utc).isoformat(),
            "version": version,
            "previous": previous,
            "reason": reason,
            "model_version": manifest.get("model_version"),
        },
    )
    log.info("CURRENT: %s -> %s (%s) at %s", previous, version, reason, store.url)
    return True


def _manifests(root: Path | str) -> list[dict[str, Any]]:
    """The manifests of the complete versions under ``root`` (any order)."""
    store = _store(root)
    if store is not None:
        rels = [f"{n}/{MANIFEST}" for n in store.listdir() if n.startswith("version=")]
        out = []
        for rel, raw in sorted(store.read_many(rels).items()):
            try:
                out.append(json.loads(raw))
            except ValueError:
                log.warning("skipping %s: corrupt manifest", store.url_of(rel))
        return out
    return [
        json.loads((d / MANIFEST).read_text())
        for d in sorted(Path(root).glob("version=*"))
        if (d / MANIFEST).exists()
    ]


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


def cleanup(root: Path | str, keep: int) -> list[str]:
    """Remove staging leftovers, incomplete folders and all but the newest ``keep`` versions.

    CURRENT and the version before it (the rollback target) are always kept. On an object
    store there is no staging folder; a version folder without a manifest is an incomplete
    write and removed (runs are serialised by ``max_active_runs=1``), and an old version
    loses its manifest first, so it is never seen half deleted.
    """
    store = _store(root)
    if store is not None:
        return _cleanup_remote(root, store, keep)
    root = Path(root)
    removed: list[str] = []
    for d in root.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d.name)
    for d in root.glob("version=*"):
        if not (d / MANIFEST).exists():
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    protected = _protected(root)
    versions = [v["version"] for v in list_versions(root)]
    for v in versions[: max(len(versions) - keep, 0)]:
        if v not in protected:
            shutil.rmtree(version_dir(root, v), ignore_errors=True)
            removed.append(f"version={v}")
    if removed:
        log.info("cleanup removed %s", removed)
    return removed


def _protected(root: Path | str) -> set[str | None]:
    """The versions retention never deletes: the served one and the one served before it."""
    protected = {read_current(root)}
    hist = history(root)
    if hist:
        protected.add(hist[-1].get("previous"))
    return protected


def _cleanup_remote(root: Path | str, store: ObjectStore, keep: int) -> list[str]:
    removed: list[str] = []
    folders = [n for n in store.listdir() if n.startswith("version=")]
    complete = set(store.read_many([f"{n}/{MANIFEST}" for n in folders]))
    for name in folders:
        if f"{name}/{MANIFEST}" not in complete:
            store.delete(name, recursive=True)
            removed.append(name)
    protected = _protected(root)
    versions = [v["version"] for v in list_versions(root)]
    for v in versions[: max(len(versions) - keep, 0)]:
        if v not in protected:
            store.delete(f"{_vrel(v)}/{MANIFEST}")
            store.delete(_vrel(v), recursive=True)
            removed.append(_vrel(v))
    if removed:
        log.info("cleanup of %s removed %s", store.url, removed)
    return removed


def read_version_table(folder: Path | str, columns: list[str] | None = None) -> pd.DataFrame:
    """The rows of a version folder (a path, or the URL ``str(version_dir(...))``) as one
    DataFrame in part order; ``_``-prefixed files (manifest, fallback) are not rows."""
    if not storage.is_remote(folder):
        return pd.read_parquet(Path(folder), columns=columns)
    url = str(storage.normalize(folder))
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


def rollback(root: Path | str, to: str | None = None) -> str:
    """Point CURRENT back to ``to`` (default: the version served before the current one)."""
    root = root if storage.is_remote(root) else Path(root)
    if to is None:
        current = read_current(root)
        previous = [h["previous"] for h in history(root) if h["version"] == current and h["previous"]]
        if not previous:
            raise PublishError("no previous version to roll back to")
        to = previous[-1]
    point_current(root, to, reason="rollback")
    return to
