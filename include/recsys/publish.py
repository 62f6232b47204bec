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

import hashlib
import json
import logging
import os
import shutil
import time
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
TABLE_COLUMNS = ["user_id", "rank", "item_id", "score", "source", "model_name", "model_version"]


class PublishError(RuntimeError):
    """Publishing was refused (e.g. an incomplete version, or overwriting the served one)."""


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


def write_version(
    root: Path | str,
    version: str,
    table: pd.DataFrame,
    fallback: pd.DataFrame,
    manifest: dict[str, Any],
    *,
    rows_per_part: int = 2_000_000,
    row_group_rows: int = 50_000,
) -> Path:
    """Write a complete version folder (table parts, fallback, manifest) and return it.

    Re-writing a version that exists but is not served replaces it (a task retry); re-writing
    the served version is refused.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = version_dir(root, version)
    if read_current(root) == version:
        raise PublishError(f"version {version} is served by CURRENT and cannot be rewritten")
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise PublishError(f"recommendation table lacks column(s) {missing}")
    t0 = time.perf_counter()
    staging = root / f"{STAGING_PREFIX}{version}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    table = table[TABLE_COLUMNS].sort_values(["user_id", "rank"], kind="stable", ignore_index=True)
    files = []
    for part, lo in enumerate(range(0, max(len(table), 1), rows_per_part)):
        chunk = pa.Table.from_pandas(table.iloc[lo : lo + rows_per_part], preserve_index=False)
        path = staging / f"part-{part:05d}.parquet"
        pq.write_table(chunk, path, row_group_size=row_group_rows, compression="zstd")
        _fsync_file(path)
        files.append({"path": path.name, "rows": chunk.num_rows, "sha256": file_sha256(path)})
    fb_path = staging / "_fallback.parquet"
    fallback.to_parquet(fb_path, index=False)
    _fsync_file(fb_path)
    manifest = {
        **manifest,
        "schema_version": SCHEMA_VERSION,
        "version": version,
        "columns": TABLE_COLUMNS,
        "files": files,
        "rows": len(table),
        "users": int(table["user_id"].nunique()),
        "created_at": datetime.now(timezone.utc).isoformat(),
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    _fsync_file(staging / MANIFEST)
    _fsync_dir(staging)
    if target.exists():
        log.warning("replacing unpublished version folder %s (a previous attempt)", target)
        shutil.rmtree(target)
    os.replace(staging, target)
    _fsync_dir(root)
    log.info(
        "wrote version %s: %d rows for %d users in %d part(s) in %.2fs",
        version, len(table), manifest["users"], len(files), time.perf_counter() - t0,
    )
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


def point_current(root: Path | str, version: str, *, reason: str = "publish") -> bool:
    """Atomically make ``version`` the served one. Returns False if it already was."""
    root = Path(root)
    manifest = read_manifest(root, version)  # refuses incomplete versions
    previous = read_current(root)
    if previous == version:
        log.info("CURRENT already names %s; nothing to do", version)
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
