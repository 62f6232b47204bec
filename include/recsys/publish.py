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

import pandas as pd

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CURRENT = "CURRENT"
HISTORY = "_history.jsonl"
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
            shutil.rmtree(_staging_path(Path(root), version), ignore_errors=True)
            raise

    return wrapper


def version_dir(root: Path | str, version: str) -> Path:
    return Path(root) / f"version={version}"


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
    try:
        return (Path(root) / CURRENT).read_text().strip() or None
    except FileNotFoundError:
        return None


def _check_writable(root: Path, version: str) -> None:
    if read_current(root) == version:
        raise PublishError(f"version {version} is served by CURRENT and cannot be rewritten")


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

    root = Path(root)
    _check_writable(root, version)
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise PublishError(f"recommendation table lacks column(s) {missing}")
    staging = _staging_path(root, version)
    staging.mkdir(parents=True, exist_ok=True)
    table = table[TABLE_COLUMNS].sort_values(["user_id", "rank"], kind="stable", ignore_index=True)
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
    root = Path(root)
    _check_writable(root, version)
    staging = _staging_path(root, version)
    parts = sorted(parts, key=lambda p: p["path"])
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
    manifest = {
        **manifest,
        "schema_version": SCHEMA_VERSION,
        "version": version,
        "columns": TABLE_COLUMNS,
        "files": [{k: p[k] for k in ("path", "rows", "sha256")} for p in parts],
        "rows": int(sum(p["rows"] for p in parts)),
        "users": int(sum(p["users"] for p in parts)),
        "created_at": datetime.now(timezone.utc).isoformat(),
    }
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
    path = version_dir(root, version) / MANIFEST
    if not path.exists():
        raise PublishError(f"version {version} has no manifest: it is incomplete or absent")
    return json.loads(path.read_text())


def _append_history(root: Path, entry: dict[str, Any]) -> None:
    with open(root / HISTORY, "a") as fh:
        fh.write(json.dumps(entry, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def history(root: Path | str) -> list[dict[str, Any]]:
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
    root = Path(root)
    manifest = read_manifest(root, version)  # refuses incomplete versions
    with publish_lock(root):
        previous = read_current(root)
        if previous == version:
            log.info("CURRENT already names %s; nothing to do", version)
            return False
        if expected_previous is not ANY and previous != expected_previous:
            raise PublishConflict(
                f"CURRENT is {previous!r}, expected {expected_previous!r}: another publish won; "
                f"{version} not served"
            )
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


def list_versions(root: Path | str) -> list[dict[str, Any]]:
    """Complete versions (with a manifest), oldest first, with a ``current`` flag."""
    root = Path(root)
    current = read_current(root)
    out = []
    for d in sorted(root.glob("version=*")):
        m = d / MANIFEST
        if not m.exists():
            continue
        info = json.loads(m.read_text())
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

    CURRENT and the version before it (the rollback target) are always kept.
    """
    root = Path(root)
    removed: list[str] = []
    for d in root.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d.name)
    for d in root.glob("version=*"):
        if not (d / MANIFEST).exists():
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    protected = {read_current(root)}
    hist = history(root)
    if hist:
        protected.add(hist[-1].get("previous"))
    versions = [v["version"] for v in list_versions(root)]
    for v in versions[: max(len(versions) - keep, 0)]:
        if v not in protected:
            shutil.rmtree(version_dir(root, v), ignore_errors=True)
            removed.append(f"version={v}")
    if removed:
        log.info("cleanup removed %s", removed)
    return removed


def rollback(root: Path | str, to: str | None = None) -> str:
    """Point CURRENT back to ``to`` (default: the version served before the current one)."""
    root = Path(root)
    if to is None:
        current = read_current(root)
        previous = [h["previous"] for h in history(root) if h["version"] == current and h["previous"]]
        if not previous:
            raise PublishError("no previous version to roll back to")
        to = previous[-1]
    point_current(root, to, reason="rollback")
    return to
