"""The commit log of a published table: one immutable, numbered JSON file per move of CURRENT.

Layout under the table's root (a local folder or an object-store URL)::

    _log/00000000000000000001.json     {"seq": 1, "parent": null, "version": "v1", "previous": null, ...}
    _log/00000000000000000002.json     {"seq": 2, "parent": 1, "version": "v2", "previous": "v1", ...}

As in Delta Lake's ``_delta_log``: an entry is created exclusively and never changed, so two
writers that both want number ``n`` cannot both get it (the loser gets
:class:`include.recsys.errors.WriteConflict` and must re-read the log). Locally the entry is
written to a temp file, fsynced and hard-linked to its name (``link`` fails if the name
exists, and the name only ever shows a complete file); on an object store it is one PUT with
``If-None-Match: *``. The log replayed is the table's state: its newest entry names the
served version (:mod:`include.recsys.tables.versions` keeps ``CURRENT`` in step with it).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Any

from include.recsys.core.io import fsync_dir, fsync_file
from include.recsys.core.uri import is_remote, normalize
from include.recsys.errors import WriteConflict
from include.recsys.tables.storage import ObjectStore, conditional_writes_enabled

log = logging.getLogger(__name__)


LOG_DIR = "_log"

_NAME = re.compile(r"^(\d{20})\.json$")

TMP_SUFFIX = ".tmp"


def entry_name(seq: int) -> str:
    return f"{seq:020d}.json"


def _store(root: Path | str) -> ObjectStore | None:
    return ObjectStore.open(str(normalize(root))) if is_remote(root) else None


def _names(root: Path | str, store: ObjectStore | None) -> list[str]:
    """Entry names, oldest first (temp files and anything else are ignored)."""
    if store is not None:
        names = store.listdir(LOG_DIR)
    else:
        try:
            names = os.listdir(Path(root) / LOG_DIR)
        except FileNotFoundError:
            return []
    return sorted(n for n in names if _NAME.match(n))


def _parse(name: str, raw: bytes | str) -> dict[str, Any] | None:
    """One entry; None (and a warning) for an unreadable one. Only the O_EXCL fallback of
    :func:`_create_local` can leave a torn entry, and only before CURRENT moved: it is no
    commit."""
    try:
        entry = json.loads(raw)
    except ValueError:
        log.warning("commit log entry %s is unreadable; it is not a commit", name)
        return None
    if not isinstance(entry, dict) or "version" not in entry:
        log.warning("commit log entry %s has no version; it is not a commit", name)
        return None
    entry.setdefault("seq", int(name[:20]))
    return entry


def read_log(root: Path | str) -> list[dict[str, Any]]:
    """Every commit, oldest first."""
    store = _store(root)
    names = _names(root, store)
    if store is not None:
        raw = store.read_many([f"{LOG_DIR}/{n}" for n in names])
        got = [(n, raw.get(f"{LOG_DIR}/{n}")) for n in names]
    else:
        folder = Path(root) / LOG_DIR
        got = []
        for n in names:
            try:
                got.append((n, (folder / n).read_bytes()))
            except FileNotFoundError:
                continue
    return [e for n, r in got if r is not None and (e := _parse(n, r)) is not None]


def tip(root: Path | str) -> tuple[dict[str, Any] | None, int]:
    """(the newest readable commit or None, the highest number taken) from ONE listing: a
    writer claims number ``taken + 1``, so a commit by anyone since this read makes its
    exclusive create fail. A torn entry still holds its number."""
    store = _store(root)
    names = _names(root, store)
    taken = int(names[-1][:20]) if names else 0
    for name in reversed(names):
        try:
            raw = store.read_bytes(f"{LOG_DIR}/{name}") if store else (Path(root) / LOG_DIR / name).read_bytes()
        except FileNotFoundError:
            continue
        entry = _parse(name, raw)
        if entry is not None:
            return entry, taken
    return None, taken


def head(root: Path | str) -> dict[str, Any] | None:
    """The newest readable commit (reads only the last file or few), or None."""
    return tip(root)[0]


def append(root: Path | str, entry: dict[str, Any]) -> dict[str, Any]:
    """Create entry number ``entry["seq"]`` exclusively; returns it. Raises
    :class:`storage.WriteConflict` when that number is taken (another writer committed)."""
    seq = int(entry["seq"])
    data = json.dumps(entry, indent=1, default=str).encode()
    store = _store(root)
    if store is not None:
        store.write_bytes(f"{LOG_DIR}/{entry_name(seq)}", data, if_absent=True)
        if not conditional_writes_enabled():
            # no server-side check: read it back, so a writer that was overwritten learns it
            if store.read_bytes(f"{LOG_DIR}/{entry_name(seq)}") != data:
                raise WriteConflict(f"{store.url_of(LOG_DIR)}/{entry_name(seq)} was taken")
    else:
        _create_local(Path(root) / LOG_DIR, entry_name(seq), data)
    return entry


def _create_local(folder: Path, name: str, data: bytes) -> None:
    """temp + fsync + ``link`` (atomic, fails if ``name`` exists), then fsync the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"
    try:
        tmp.write_bytes(data)
        fsync_file(tmp)
        try:
            os.link(tmp, folder / name)
        except FileExistsError:
            raise WriteConflict(f"{folder / name} already exists") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            _create_excl(folder / name, data)  # a filesystem without hard links
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(folder)


def _create_excl(path: Path, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise WriteConflict(f"{path} already exists") from None
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def sweep_temp(root: Path) -> list[str]:
    """Remove temp files that killed writers left in the local log folder (call it under the
    publish lock: then no live writer owns one)."""
    removed = []
    for p in (Path(root) / LOG_DIR).glob(f".*{TMP_SUFFIX}"):
        p.unlink(missing_ok=True)
        removed.append(f"{LOG_DIR}/{p.name}")
    return removed
