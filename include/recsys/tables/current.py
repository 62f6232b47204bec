"""Which version a table serves: CURRENT, the commit that moves it, and rollback.

Every move is one commit of the log (:mod:`include.recsys.tables.commitlog`) followed by the
CURRENT file; whoever finds CURRENT behind the log repairs it (the protocol is in
:mod:`include.recsys.tables.versions`). Locally every move runs under :func:`publish_lock`."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from include.recsys.core.crashpoints import crashpoint
from include.recsys.core.io import atomic_path
from include.recsys.core.uri import is_remote
from include.recsys.errors import (
    PublishBusy,
    PublishConflict,
    PublishError,
    StaleData,
    StorageError,
    WriteConflict,
)
from include.recsys.tables import commitlog
from include.recsys.tables.layout import (
    ANY,
    CURRENT,
    LOCK,
    VERIFY_SHA256_LOCAL,
    VERIFY_SHA256_REMOTE,
    _store,
)
from include.recsys.tables.manifest import (
    _verify_problem,
    read_manifest,
    verify_version,
)
from include.recsys.tables.storage import ObjectStore

log = logging.getLogger(__name__)


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
                    raise PublishBusy(f"could not lock {root / LOCK} within {timeout}s: {exc}") from exc
                time.sleep(0.01)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


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
        with atomic_path(Path(root) / CURRENT, fsync=True) as tmp:  # .CURRENT.<pid>.tmp
            tmp.write_text(version + "\n")
            crashpoint("before_current_replace")
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
        except WriteConflict:
            continue
    raise PublishBusy(f"CURRENT under {store.url} keeps changing; it will follow the log at the next read")


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
    except (PublishError, PublishBusy, OSError, StorageError) as exc:
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
        except WriteConflict as exc:  # another writer took the log's next number
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
    root = root if is_remote(root) else Path(root)
    if to is None:
        to = _rollback_target(history(root), read_current(root))
        if to is None:
            raise PublishError("no previous version to roll back to")
    point_current(root, to, reason="rollback")
    return to
