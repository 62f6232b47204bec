"""Retention: which versions and leftovers of a table may go, and deleting them manifest first
(see "Retention" in :mod:`include.recsys.tables.versions`)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from include.recsys.core.crashpoints import crashpoint
from include.recsys.tables.current import (
    _repair,
    _resolve,
    _rollback_target,
    _sweep_temp,
    history,
    publish_lock,
    read_current,
)
from include.recsys.tables.layout import (
    DELETING,
    MANIFEST,
    STAGING_GRACE_S,
    STAGING_PREFIX,
    _store,
    _vrel,
    version_dir,
)
from include.recsys.tables.storage import ObjectStore
from include.recsys.tables.versions import _remove_version_dir, list_versions

log = logging.getLogger(__name__)


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
