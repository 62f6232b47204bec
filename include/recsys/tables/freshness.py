"""Freshness / deadline check of the served recommendations (a missed nightly run is noticed).

The nightly DAG can only alert about what it does; if it never runs (scheduler down, DAG
paused, a run stuck in the queue) nobody is told. ``dags/recsys_freshness_check.py`` runs
:func:`run_check` every hour and posts one Slack message when

* nothing is published at all,
* CURRENT last moved more than ``RECSYS_FRESHNESS_MAX_AGE_HOURS`` (default 30) hours ago, or
* it is past ``RECSYS_FRESHNESS_DEADLINE_UTC`` (default ``06:00``; empty disables) and no
  nightly publish has happened since today's 00:00 UTC.

When CURRENT last moved: the ``at`` of the newest commit for the served version in the commit
log (``_log/<seq>.json``, see :mod:`include.recsys.tables.commitlog`), else the manifest's
``created_at``, else the mtime of ``CURRENT``. "Today's publish": a commit whose reason starts
with ``publish`` (a rollback moves CURRENT but is no nightly publish).

The same problem is posted once, then again every ``RECSYS_FRESHNESS_REALERT_HOURS``
(default 6) while it lasts; the state lives in ``<root>/.freshness_alert.json``.
``RECSYS_FRESHNESS_ENABLED=false`` switches it off (the DAG loses its schedule and the task
returns at once). No Airflow ``deadline=`` is used: ``dag.test()`` crashes with it in 3.3.2.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, time, timezone
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
    from include.recsys.core.uri import normalize
    from include.recsys.tables.current import history, read_current
    from include.recsys.tables.layout import CURRENT
    from include.recsys.tables.manifest import read_manifest

    root = normalize(root)
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


