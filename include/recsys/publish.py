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
Lake and Iceberg commit (:mod:`include.recsys.commitlog`):

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
:mod:`include.recsys.storage`): CURRENT is written with ``If-Match`` on the ETag read, so a
stale writer cannot move it behind the log. With ``RECSYS_STORAGE_CONDITIONAL_WRITES=0``
(stores that reject those headers) the log entry is read back after its PUT instead, which
catches most but not all races: concurrent publishers must then be serialised by Airflow
(``max_active_runs=1``, a one-slot pool).
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
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.recsys import commitlog, storage
from include.recsys.commitlog import fsync_dir
from include.recsys.crashpoints import crashpoint
from include.recsys.storage import ObjectStore

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


class PublishError(RuntimeError):
    """Publishing was refused (e.g. an incomplete version, or overwriting the served one)."""


class PublishConflict(PublishError):
    """CURRENT moved since the caller read it (``expected_previous`` did not match)."""


class StaleData(PublishError):
    """The version's data ends before the served version's: not served (``allow_older_data``
    overrides; a rollback is exempt). ``served_end`` / ``run_end``: the two ``data_window.end``."""

    def __init__(self, served_end: str, run_end: str, served: str | None = None, version: str | None = None):
        super().__init__(f"stale: serving data up to {served_end}, this run's data ends at {run_end}; not served")
        self.served_end, self.run_end = served_end, run_end
        self.served_version, self.version = served, version


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


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def file_sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_writable(root: Path, version: str) -> None:
    if read_current(root) == version:
        raise PublishError(f"version {version} is served by CURRENT and cannot be rewritten")


def _sorted_by_user_rank(table: pd.DataFrame, key: str = KEY) -> pd.DataFrame:
    """``table`` sorted by (user_id, rank); a shard's rows usually are already (users in id
    order, ranks ascending), and then the string sort is skipped. ``key``: another table's
    list column instead of user_id."""
    users = table[key]
    if users.is_monotonic_increasing:
        u = users.to_numpy()
        same = u[1:] == u[:-1]
        if (np.diff(table["rank"].to_numpy())[same] > 0).all():
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


def _full_manifest(
    version: str, parts: list[dict[str, Any]], manifest: dict[str, Any], fallback: dict[str, Any],
    columns: list[str] | None = None,
) -> dict[str, Any]:
    """The manifest: what the caller gave, plus every file with the size and sha256 that
    :func:`verify_version` checks (``fallback``: ``_fallback.parquet``'s own entry)."""
    return {
        **manifest,
        "schema_version": SCHEMA_VERSION,
        "version": version,
        "columns": columns or TABLE_COLUMNS,
        "files": [{k: p[k] for k in ("path", "rows", "sha256", "size") if k in p} for p in parts],
        "fallback": fallback,
        "rows": int(sum(p["rows"] for p in parts)),
        **({"users": int(sum(p["users"] for p in parts))} if all("users" in p for p in parts)
           else {"keys": int(sum(p.get("keys", 0) for p in parts))}),
        "created_at": datetime.now(timezone.utc).isoformat(),
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
    _fsync_file(fb_path)
    fb_meta = {"path": FALLBACK, "size": fb_path.stat().st_size, "sha256": file_sha256(fb_path)}
    manifest = _full_manifest(version, parts, manifest, fb_meta, columns)
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    _fsync_file(staging / MANIFEST)
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
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PublishError(f"version {version} has no manifest: it is incomplete or absent") from None
    except ValueError as exc:
        raise PublishError(f"the manifest of version {version} is corrupt: {exc}") from None


# --- verification ------------------------------------------------------------------------------


def verify_version(root: Path | str, version: str, *, checksum: bool = False) -> dict[str, Any]:
    """The manifest of ``version`` once every file it lists (parts and ``_fallback.parquet``)
    exists with the recorded size, and with ``checksum`` the recorded sha256 too. Raises
    :class:`PublishError` naming the first missing or changed file (or the missing manifest)."""
    manifest = read_manifest(root, version)
    listed = [*manifest.get("files", []), manifest.get("fallback") or {"path": FALLBACK}]
    store = _store(root)
    if store is not None:
        sizes = store.sizes(_vrel(version))
        found = {f["path"]: sizes.get(f["path"]) for f in listed}
    else:
        folder = version_dir(root, version)
        found = {f["path"]: _size_or_none(folder / f["path"]) for f in listed}
    for f in listed:
        size = found[f["path"]]
        if size is None:
            raise PublishError(f"version {version} does not verify: {f['path']} is missing")
        if "size" in f and size != f["size"]:
            raise PublishError(
                f"version {version} does not verify: {f['path']} has {size} bytes, its manifest says {f['size']}"
            )
    if checksum:
        _verify_sha256(root, store, version, [f for f in listed if f.get("sha256")])
    return manifest


def _size_or_none(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _verify_sha256(root: Path | str, store: ObjectStore | None, version: str, listed: list[dict[str, Any]]) -> None:
    for f in listed:
        if store is not None:
            digest = hashlib.sha256(store.read_bytes(f"{_vrel(version)}/{f['path']}")).hexdigest()
        else:
            digest = file_sha256(version_dir(root, version) / f["path"])
        if digest != f["sha256"]:
            raise PublishError(f"version {version} does not verify: the sha256 of {f['path']} differs from its manifest's")


def _verify_problem(root: Path | str, version: str | None) -> str | None:
    """Why ``version`` does not verify, or None when it does."""
    if not version:
        return "no version"
    try:
        verify_version(root, version)
    except (PublishError, storage.StorageError) as exc:
        return str(exc)
    return None


# --- CURRENT and the log -------------------------------------------------------------------


def _read_pointer(root: Path | str, store: ObjectStore | None) -> str | None:
    """What the CURRENT file says (no reconciliation with the log)."""
    try:
        if store is not None:
            return store.read_bytes(CURRENT).decode("utf-8", errors="replace").strip() or None
        return (Path(root) / CURRENT).read_text().strip() or None
    except FileNotFoundError:
        return None


@dataclass
class _State:
    """The table's state read from the log and CURRENT. ``served``: the version that is served;
    ``action``: what a writer must do to make CURRENT and the log agree (None: nothing)."""

    head: dict[str, Any] | None
    taken: int  # the highest log number taken when read: the next commit claims taken + 1
    pointer: str | None
    served: str | None
    action: str | None = None  # "roll_forward" | "supersede"
    problem: str | None = None


def _resolve(root: Path | str, store: ObjectStore | None) -> _State:
    # CURRENT first, the log second: a commit appends before it replaces CURRENT, so the head
    # read now is at least as new as what CURRENT says (never roll CURRENT backwards)
    pointer = _read_pointer(root, store)
    head, taken = commitlog.tip(root)
    if head is None or pointer == head["version"]:  # agreed (or nothing committed yet)
        return _State(head, taken, pointer, pointer if head is None else head["version"])
    problem = _verify_problem(root, head["version"])
    if problem is None:  # a commit whose CURRENT replace did not happen (a crash): roll forward
        return _State(head, taken, pointer, head["version"], "roll_forward")
    # a failed commit: its version does not verify; serve the last one that does
    candidates = [pointer, *[e["version"] for e in reversed(commitlog.read_log(root))]]
    good = next((v for v in dict.fromkeys(candidates) if v and v != head["version"] and _verify_problem(root, v) is None), None)
    if good is None:
        return _State(head, taken, pointer, head["version"], None, problem)
    return _State(head, taken, pointer, good, "supersede", problem)


def _write_pointer(root: Path | str, store: ObjectStore | None, version: str) -> None:
    """Replace CURRENT with ``version`` (local: under the publish lock)."""
    if store is None:
        root = Path(root)
        tmp = root / f".{CURRENT}.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            fh.write(version + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        crashpoint("before_current_replace")
        os.replace(tmp, root / CURRENT)
        fsync_dir(root)
        return
    # no lock across hosts: write the log's newest version, read AFTER CURRENT's ETag, with
    # If-Match on that ETag; a writer that lost reads both again (CURRENT only moves forward)
    for _ in range(10):
        try:
            raw, tag = store.read_tagged(CURRENT)
        except FileNotFoundError:
            raw, tag = None, None
        head = commitlog.head(root)
        data = ((head["version"] if head else version) + "\n").encode()
        if raw == data:
            return
        crashpoint("before_current_replace")
        try:
            store.write_bytes(CURRENT, data, if_absent=raw is None, if_match=tag if raw is not None else None, expect=raw)
            return
        except storage.WriteConflict:
            continue
    raise PublishError(f"CURRENT under {store.url} keeps changing; it will follow the log at the next read")


def _repair(root: Path | str, store: ObjectStore | None, state: _State) -> _State:
    """Make CURRENT agree with the log (writers only; local: under the publish lock)."""
    if state.action == "roll_forward":
        log.warning("CURRENT named %s, the log's newest commit %s: rolled forward", state.pointer, state.served)
        _write_pointer(root, store, state.served)
    elif state.action == "supersede":
        head = state.head
        log.error("commit %s (%s) does not verify (%s): superseded by %s", head["seq"], head["version"], state.problem, state.served)
        entry = _entry(root, state, state.served, head["version"], f"repair: {state.problem}", None, None)
        _append(root, entry)
        _write_pointer(root, store, state.served)
        return _State(entry, entry["seq"], state.served, state.served)
    else:
        return state
    return _State(state.head, state.taken, state.served, state.served)


def _try_roll_forward(root: Path | str, store: ObjectStore | None) -> None:
    """A reader's repair of a commit whose CURRENT replace did not happen: best effort (a
    read-only reader, or a writer holding the lock, leaves it to the writer)."""
    try:
        if store is None:
            with publish_lock(root, timeout=0):
                state = _resolve(root, None)
                if state.action == "roll_forward":
                    _repair(root, None, state)
        else:
            _write_pointer(root, store, _resolve(root, store).served)
    except (PublishError, OSError, storage.StorageError) as exc:
        log.info("CURRENT under %s is behind the log; left to the next writer (%s)", root, exc)


def read_current(root: Path | str) -> str | None:
    """The served version id (the log's newest commit; CURRENT is rolled forward when it lags
    behind), or None before the first publish."""
    store = _store(root)
    state = _resolve(root, store)
    if state.action == "roll_forward":
        _try_roll_forward(root, store)
    return state.served


def history(root: Path | str) -> list[dict[str, Any]]:
    """Every commit (move of CURRENT), oldest first: ``seq``, ``parent``, ``version``,
    ``previous``, ``reason``, ``at``, ``model_version``, ``data_window`` (and ``override``)."""
    return commitlog.read_log(root)


def _sweep_temp(root: Path) -> list[str]:
    """Temp files of killed writers: ``.CURRENT.<pid>.tmp`` and the log's (under the lock)."""
    removed = []
    for p in root.glob(f".{CURRENT}.*.tmp"):
        p.unlink(missing_ok=True)
        removed.append(p.name)
    removed += commitlog.sweep_temp(root)
    if removed:
        log.info("removed temp files of killed publishes: %s", removed)
    return removed


def _entry(
    root: Path | str, state: _State, version: str, previous: str | None, reason: str,
    manifest: dict[str, Any] | None, override: str | None,
) -> dict[str, Any]:
    manifest = manifest if manifest is not None else _manifest_or_empty(root, version)
    entry = {
        "seq": state.taken + 1,
        "parent": state.head["seq"] if state.head else None,
        "version": version,
        "previous": previous,
        "reason": reason,
        "at": datetime.now(timezone.utc).isoformat(),
        "model_version": manifest.get("model_version"),
        "data_window": manifest.get("data_window"),
    }
    if manifest.get("data_interval") is not None:
        entry["data_interval"] = manifest["data_interval"]
    if override:
        entry["override"] = override
    return entry


def _manifest_or_empty(root: Path | str, version: str) -> dict[str, Any]:
    try:
        return read_manifest(root, version)
    except PublishError:
        return {}


def _append(root: Path | str, entry: dict[str, Any]) -> None:
    crashpoint("before_log_append")
    commitlog.append(root, entry)
    crashpoint("after_log_append")


def point_current(
    root: Path | str, version: str, *, reason: str = "publish", expected_previous: Any = ANY,
    allow_older_data: bool = False,
) -> bool:
    """Serve ``version``: one commit (see the module docstring). Returns False if it already
    was served (a rerun).

    Refuses a version that does not verify (:class:`PublishError` naming the file) and, unless
    ``allow_older_data`` or the reason is a rollback, a version whose ``data_window.end`` is
    older than the served one's (:class:`StaleData`). With ``expected_previous`` (a version id,
    or None for "nothing served yet") this is a compare-and-swap: when another version is
    served, or another writer commits first, :class:`PublishConflict` and nothing changes.
    """
    store = _store(root)
    root = root if store else Path(root)
    for _ in range(20):
        try:
            if store is not None:
                return _commit(root, store, version, reason, expected_previous, allow_older_data)
            with publish_lock(root):
                _sweep_temp(root)
                return _commit(root, None, version, reason, expected_previous, allow_older_data)
        except storage.WriteConflict as exc:  # another writer took the log's next number
            if expected_previous is not ANY:
                raise PublishConflict(f"another publish committed first under {root}: {version} not served ({exc})") from exc
            log.info("another publish committed first under %s; reading the log again", root)
    raise PublishConflict(f"the log under {root} keeps moving; {version} not served")


def _commit(
    root: Path | str, store: ObjectStore | None, version: str, reason: str, expected_previous: Any,
    allow_older_data: bool,
) -> bool:
    state = _repair(root, store, _resolve(root, store))
    previous = state.served
    if not _should_move(previous, version, expected_previous):
        return False
    manifest = verify_version(root, version, checksum=VERIFY_SHA256_REMOTE if store else VERIFY_SHA256_LOCAL)
    override = None if _is_rollback(reason) else _check_data_order(root, previous, version, manifest, allow_older_data)
    _append(root, _entry(root, state, version, previous, reason, manifest, override))
    _write_pointer(root, store, version)
    crashpoint("after_current_replace")
    where = f" at {store.url}" if store else ""
    log.info("CURRENT: %s -> %s (%s)%s", previous, version, reason, where)
    return True


def _should_move(previous: str | None, version: str, expected_previous: Any) -> bool:
    """False when ``version`` is already served (a rerun); PublishConflict when the
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


def _is_rollback(reason: str) -> bool:
    return str(reason).startswith("rollback")


def data_end(manifest: dict[str, Any]) -> datetime | None:
    """``data_window.end`` of a manifest as an aware datetime (naive = UTC); None if absent."""
    end = (manifest.get("data_window") or {}).get("end")
    if not end:
        return None
    try:
        dt = datetime.fromisoformat(str(end).replace("Z", "+00:00"))
    except ValueError:
        log.warning("unreadable data_window.end %r in the manifest of %s", end, manifest.get("version"))
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _check_data_order(
    root: Path | str, served: str | None, version: str, manifest: dict[str, Any], allow_older_data: bool
) -> str | None:
    """StaleData when ``version``'s data ends before the served version's; the override flag
    to record when ``allow_older_data`` let it through; None when the data is not older."""
    if served is None:
        return None
    served_m = _manifest_or_empty(root, served)
    served_end, run_end = data_end(served_m), data_end(manifest)
    if served_end is None or run_end is None or run_end >= served_end:
        return None
    if not allow_older_data:
        raise StaleData(served_m["data_window"]["end"], manifest["data_window"]["end"], served, version)
    log.warning(
        "OVERRIDE allow_older_data: serving %s (data up to %s) over %s (data up to %s)",
        version, run_end.isoformat(), served, served_end.isoformat(),
    )
    return "allow_older_data"


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


def cleanup(root: Path | str, keep: int, *, staging_grace_s: float = STAGING_GRACE_S) -> list[str]:
    """Retention: remove expired versions (manifest FIRST, then their files), abandoned staging
    leftovers and temp files of killed publishes; returns the names removed.

    Expired: all complete versions but the newest ``keep`` (by creation), except CURRENT, the
    rollback target and the last ``max(keep, 2)`` versions served according to the log (so
    ``keep=1`` still keeps what a rollback returns to). A staging folder (object stores: a
    version folder without manifest) is removed only when nothing was written in it for
    ``staging_grace_s`` seconds: a younger one may belong to a live run. Also repairs CURRENT
    when it lags behind the log.
    """
    store = _store(root)
    if store is not None:
        return _cleanup_remote(root, store, keep, staging_grace_s)
    root = Path(root)
    if not root.exists():
        return []
    removed: list[str] = []
    with publish_lock(root):
        _sweep_temp(root)
        _repair(root, None, _resolve(root, None))
        for d in root.glob(f"{STAGING_PREFIX}*"):
            if _age_s(d) > staging_grace_s:
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d.name)
            else:
                log.info("kept %s: written to %.0f s ago, maybe by a live run", d.name, _age_s(d))
        for d in root.glob("version=*"):  # locally only a killed retention leaves these
            if not (d / MANIFEST).exists():
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d.name)
        for v in _expired(root, keep):
            _remove_version_dir(version_dir(root, v), retention=True)
            removed.append(_vrel(v))
    if removed:
        log.info("cleanup removed %s", removed)
    return removed


def _age_s(folder: Path) -> float:
    """Seconds since anything in ``folder`` (or the folder itself) was last written."""
    try:
        times = [folder.stat().st_mtime] + [e.stat().st_mtime for e in os.scandir(folder)]
    except FileNotFoundError:
        return 0.0
    return time.time() - max(times)


def _remove_version_dir(folder: Path, *, retention: bool = False) -> None:
    """The manifest first (the version turns invisible at once), then the rest."""
    (folder / MANIFEST).unlink(missing_ok=True)
    fsync_dir(folder)
    if retention:
        crashpoint("mid_retention")
    shutil.rmtree(folder, ignore_errors=True)


def _expired(root: Path | str, keep: int) -> list[str]:
    versions = [v["version"] for v in list_versions(root)]
    protected = _protected(root, keep)
    return [v for v in versions[: max(len(versions) - keep, 0)] if v not in protected]


def _protected(root: Path | str, keep: int) -> set[str]:
    """CURRENT, the rollback target and the last ``max(keep, 2)`` versions served (the log)."""
    entries = history(root)
    served = read_current(root)
    recent = list(dict.fromkeys(e["version"] for e in reversed(entries)))[: max(keep, 2)]
    return {v for v in (served, _rollback_target(entries, served), *recent) if v}


def _cleanup_remote(root: Path | str, store: ObjectStore, keep: int, staging_grace_s: float) -> list[str]:
    removed: list[str] = []
    _repair(root, store, _resolve(root, store))
    folders = [n for n in store.listdir() if n.startswith("version=")]
    complete = set(store.read_many([f"{n}/{MANIFEST}" for n in folders]))
    now = time.time()
    for name in folders:
        if f"{name}/{MANIFEST}" in complete:
            continue
        newest = None if DELETING in store.sizes(name) else store.newest_mtime(name)
        if newest is not None and now - newest <= staging_grace_s:
            log.info("kept %s: written to %.0f s ago, maybe by a live run", store.url_of(name), now - newest)
            continue
        store.delete(name, recursive=True)
        removed.append(name)
    for v in _expired(root, keep):
        store.write_bytes(f"{_vrel(v)}/{DELETING}", b"retention\n")
        store.delete(f"{_vrel(v)}/{MANIFEST}")  # first: the version turns invisible at once
        crashpoint("mid_retention")
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


def _rollback_target(entries: list[dict[str, Any]], served: str | None) -> str | None:
    """The version served before ``served`` (what the commit that last served it replaced);
    repair entries do not count (they replaced a failed commit)."""
    previous = [
        e["previous"] for e in entries
        if e["version"] == served and e.get("previous") and not str(e.get("reason", "")).startswith("repair")
    ]
    return previous[-1] if previous else None


def rollback(root: Path | str, to: str | None = None) -> str:
    """Serve ``to`` again (default: the version served before the current one): a commit with
    reason ``rollback``, exempt from the data-order check, refused when ``to`` does not verify."""
    root = root if storage.is_remote(root) else Path(root)
    if to is None:
        to = _rollback_target(history(root), read_current(root))
        if to is None:
            raise PublishError("no previous version to roll back to")
    point_current(root, to, reason="rollback")
    return to
