"""The freshness check task: is the served table younger than its deadline, and whom to tell."""

from __future__ import annotations

import contextlib
import json
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from include.recsys.core.io import atomic_write
from include.recsys.tables.freshness import (
    ENABLED_ENV,
    STATE_FILE,
    FreshnessResult,
    FreshnessSettings,
    _parse,
    check,
    enabled,
)

log = logging.getLogger(__name__)


class _AlertState:
    """``<root>/.freshness_alert.json`` on local disk or on the table's object store."""

    def __init__(self, root: Path | str) -> None:
        from include.recsys.core.uri import is_remote, normalize
        from include.recsys.tables.storage import ObjectStore

        self.root = normalize(root)
        self.store = ObjectStore.open(self.root) if is_remote(self.root) else None

    def read(self) -> str:
        if self.store is not None:
            return self.store.read_bytes(STATE_FILE).decode()
        return (self.root / STATE_FILE).read_text()

    def write(self, text: str) -> None:
        if self.store is not None:
            self.store.write_bytes(STATE_FILE, text.encode())
            return
        atomic_write(self.root / STATE_FILE, text)

    def delete(self) -> None:
        if self.store is not None:
            self.store.delete(STATE_FILE)
        else:
            (self.root / STATE_FILE).unlink(missing_ok=True)


def _should_alert(root: Path | str, res: FreshnessResult, settings: FreshnessSettings) -> bool:
    """Once per distinct problem, again every ``realert_hours`` while it lasts."""
    from include.recsys.errors import StorageError

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
    """Check, log and alert (through :func:`include.recsys.notify.slack.send_slack`); never raises on a
    stale table (the alert is the outcome; failing the task would post a second message)."""
    if not enabled():
        log.info("freshness check disabled ($%s)", ENABLED_ENV)
        return {"enabled": False}
    from include.recsys.notify.blocks import freshness_blocks
    from include.recsys.notify.slack import _conn_id, send_slack

    if root is None:
        from include.recsys.config.settings import load_config

        root = load_config().recommendations_root
    settings = settings or FreshnessSettings.from_env()
    res = check(root, settings, now)
    out = {"enabled": True, **res.to_dict(), "alerted": False}
    if res.ok:
        log.info("recommendations are fresh: %s published %.1f h ago", res.current, res.age_hours or 0.0)
    else:
        log.warning("recommendations are stale: %s", "; ".join(res.problems))
    if _should_alert(root, res, settings):
        payload = freshness_blocks(
            problems=res.problems, current=res.current, published_at=res.published_at,
            age_hours=res.age_hours, root=str(root),
        )
        out["alerted"] = send_slack(payload, _conn_id())
    return out

