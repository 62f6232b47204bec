"""Freshness / deadline check of the served recommendations (a missed nightly run is noticed).

The nightly DAG can only alert about what it does; if it never runs (scheduler down, DAG
paused, a run stuck in the queue) nobody is told. ``dags/recsys_freshness_check.py`` runs
:func:`run_check` every hour and posts one Slack message when

* nothing is published at all,
* CURRENT last moved more than ``RECSYS_FRESHNESS_MAX_AGE_HOURS`` (default 30) hours ago, or
* it is past ``RECSYS_FRESHNESS_DEADLINE_UTC`` (default ``06:00``; empty disables) and no
  nightly publish has happened since today's 00:00 UTC.

When CURRENT last moved: the ``at`` of the newest commit for the served version in the commit
log (``_log/<seq>.json``, see :mod:`include.recsys.commitlog`), else the manifest's
``created_at``, else the mtime of ``CURRENT``. "Today's publish": a commit whose reason starts
with ``publish`` (a rollback moves CURRENT but is no nightly publish).

The same problem is posted once, then again every ``RECSYS_FRESHNESS_REALERT_HOURS``
(default 6) while it lasts; the state lives in ``<root>/.freshness_alert.json``.
``RECSYS_FRESHNESS_ENABLED=false`` switches it off (the DAG loses its schedule and the task
returns at once). No Airflow ``deadline=`` is used: ``dag.test()`` crashes with it in 3.3.2.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ENABLED_ENV = "RECSYS_FRESHNESS_ENABLED"
MAX_AGE_ENV = "RECSYS_FRESHNESS_MAX_AGE_HOURS"
DEADLINE_ENV = "RECSYS_FRESHNESS_DEADLINE_UTC"
REALERT_ENV = "RECSYS_FRESHNESS_REALERT_HOURS"
STATE_FILE = ".freshness_alert.json"


def enabled() -> bool:
    return (os.environ.get(ENABLED_ENV) or "true").strip().lower() not in {"0", "false", "no", "off"}


@dataclass(frozen=True)
class FreshnessSettings:
    max_age_hours: float = 30.0
    deadline_utc: time | None = time(6, 0)
    realert_hours: float = 6.0

    @classmethod
    def from_env(cls) -> FreshnessSettings:
        deadline = os.environ.get(DEADLINE_ENV, "06:00").strip()
        return cls(
            max_age_hours=float(os.environ.get(MAX_AGE_ENV) or 30.0),
            deadline_utc=time.fromisoformat(deadline) if deadline else None,
            realert_hours=float(os.environ.get(REALERT_ENV) or 6.0),
        )


@dataclass
class FreshnessResult:
    ok: bool
    current: str | None
    published_at: datetime | None
    last_nightly_publish_at: datetime | None
    age_hours: float | None
    checked_at: datetime
    problems: list[str] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("published_at", "last_nightly_publish_at", "checked_at"):
            d[k] = d[k].isoformat() if d[k] else None
        return d


def _parse(ts: Any) -> datetime | None:
    try:
        dt = datetime.fromisoformat(str(ts))
    except (TypeError, ValueError):
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def published_times(root: Path | str) -> tuple[str | None, datetime | None, datetime | None]:
    """(served version, when CURRENT last moved to it, last nightly publish) of ``root``."""
    from include.recsys import storage
    from include.recsys.publish import CURRENT, history, read_current, read_manifest

    root = storage.normalize(root)
    current = read_current(root)
    if current is None:
        return None, None, None
    hist = history(root)
    moved = next((_parse(h.get("at")) for h in reversed(hist) if h.get("version") == current), None)
    if moved is None:
        try:
            moved = _parse(read_manifest(root, current).get("created_at"))
        except Exception:
            moved = None
    if moved is None and isinstance(root, Path):
        moved = datetime.fromtimestamp((root / CURRENT).stat().st_mtime, tz=timezone.utc)
    nightly = next(
        (_parse(h.get("at")) for h in reversed(hist) if str(h.get("reason", "")).startswith("publish")),
        None,
    )
    return current, moved, nightly if hist else moved


def check(root: Path | str, settings: FreshnessSettings, now: datetime | None = None) -> FreshnessResult:
    """Judge the freshness of the table served under ``root`` at ``now`` (UTC)."""
    now = now or datetime.now(timezone.utc)
    current, moved, nightly = published_times(root)
    res = FreshnessResult(
        ok=True, current=current, published_at=moved, last_nightly_publish_at=nightly,
        age_hours=None if moved is None else (now - moved).total_seconds() / 3600, checked_at=now,
    )
    if current is None:
        res.problems.append(f"nothing is published under {root} (no CURRENT)")
        res.codes.append("missing")
    elif res.age_hours is not None and res.age_hours > settings.max_age_hours:
        res.problems.append(
            f"CURRENT ({current}) last moved {res.age_hours:.1f} h ago, more than the allowed "
            f"{settings.max_age_hours:g} h"
        )
        res.codes.append("too_old")
    if settings.deadline_utc is not None and current is not None:
        midnight = datetime.combine(now.date(), time(0, 0), tzinfo=timezone.utc)
        deadline = datetime.combine(now.date(), settings.deadline_utc, tzinfo=timezone.utc)
        if now >= deadline and (nightly is None or nightly < midnight):
            res.problems.append(
                f"no nightly publish today by {settings.deadline_utc.strftime('%H:%M')} UTC "
                f"(last: {nightly.isoformat() if nightly else 'never'})"
            )
            res.codes.append("deadline_missed")
    res.ok = not res.problems
    return res


class _AlertState:
    """``<root>/.freshness_alert.json`` on local disk or on the table's object store."""

    def __init__(self, root: Path | str) -> None:
        from include.recsys import storage

        self.root = storage.normalize(root)
        self.store = storage.ObjectStore.open(self.root) if storage.is_remote(self.root) else None

    def read(self) -> str:
        if self.store is not None:
            return self.store.read_bytes(STATE_FILE).decode()
        return (self.root / STATE_FILE).read_text()

    def write(self, text: str) -> None:
        if self.store is not None:
            self.store.write_bytes(STATE_FILE, text.encode())
            return
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / STATE_FILE).write_text(text)

    def delete(self) -> None:
        if self.store is not None:
            self.store.delete(STATE_FILE)
        else:
            (self.root / STATE_FILE).unlink(missing_ok=True)


def _should_alert(root: Path | str, res: FreshnessResult, settings: FreshnessSettings) -> bool:
    """Once per distinct problem, again every ``realert_hours`` while it lasts."""
    from include.recsys.storage import StorageError

    state_io = _AlertState(root)
    if res.ok:
        with contextlib.suppress(OSError, StorageError):
            state_io.delete()
        return False
    key = f"{res.current}|{','.join(res.codes)}|{res.checked_at.date() if 'deadline_missed' in res.codes else ''}"
    try:
        state = json.loads(state_io.read())
    except (OSError, ValueError, StorageError):
        state = {}
    last = _parse(state.get("at"))
    if state.get("key") == key and last and res.checked_at - last < timedelta(hours=settings.realert_hours):
        return False
    try:
        state_io.write(json.dumps({"key": key, "at": res.checked_at.isoformat()}))
    except (OSError, StorageError) as exc:  # never fail the check because the state cannot be written
        log.warning("could not record the freshness alert state: %s", exc)
    return True


def run_check(
    root: Path | str | None = None, settings: FreshnessSettings | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """Check, log and alert (through :func:`include.recsys.alerts.send_slack`); never raises on a
    stale table (the alert is the outcome; failing the task would post a second message)."""
    if not enabled():
        log.info("freshness check disabled ($%s)", ENABLED_ENV)
        return {"enabled": False}
    from include.recsys import alerts

    if root is None:
        from include.recsys.config import load_config

        root = load_config().recommendations_root
    settings = settings or FreshnessSettings.from_env()
    res = check(root, settings, now)
    out = {"enabled": True, **res.to_dict(), "alerted": False}
    if res.ok:
        log.info("recommendations are fresh: %s published %.1f h ago", res.current, res.age_hours or 0.0)
    else:
        log.warning("recommendations are stale: %s", "; ".join(res.problems))
    if _should_alert(root, res, settings):
        payload = alerts.freshness_blocks(
            problems=res.problems, current=res.current, published_at=res.published_at,
            age_hours=res.age_hours, root=str(root),
        )
        out["alerted"] = alerts.send_slack(payload, alerts._conn_id())
    return out
