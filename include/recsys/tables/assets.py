"""The recommendation table as an Airflow Asset: its URI, the metadata of a CURRENT move, and
what an example consumer does with it.

``publish`` and ``rollback`` declare :func:`table_asset` as an outlet and attach
:func:`move_event_extra` to the event, so a DAG scheduled on the Asset learns which version went
live (and why) without polling CURRENT. Everything here except :func:`table_asset` runs without
Airflow.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from include.recsys.core.io import write_json

log = logging.getLogger(__name__)


TABLE = "recommendations"

#: Bump when a key of the event metadata changes meaning (consumers may check it).
EVENT_SCHEMA_VERSION = 1


def table_uri(root: Path | str) -> str:
    """The table's URI from its storage root: ``file:///abs/path`` for a local folder, the
    normalized URL (``s3://bucket/prefix``) for an object store. The same root always gives
    the same URI, so producers and consumers derive it independently."""
    from include.recsys.core.uri import is_remote, normalize

    root = normalize(root)
    if is_remote(root):
        return str(root).rstrip("/")
    return Path(root).resolve().as_uri()


def asset_name(table: str = TABLE) -> str:
    """The Asset's name (stable across storage roots; the URI says where the data is)."""
    return f"recsys_{table}"


def table_asset(root: Path | str | None = None, table: str = TABLE):
    """The ``airflow.sdk.Asset`` of a table (default: the configured recommendations root)."""
    from airflow.sdk import Asset

    if root is None:
        from include.recsys.config.settings import load_config

        root = load_config().recommendations_root
    return Asset(name=asset_name(table), uri=table_uri(root), group="recsys")


def _previous_of(root: Path | str, version: str) -> str | None:
    """The version served before ``version`` according to the publish log (newest move)."""
    from include.recsys.tables.current import history

    moves = [h for h in history(root) if h.get("version") == version]
    return moves[-1].get("previous") if moves else None


def move_event_extra(
    root: Path | str,
    version: str,
    *,
    reason: str,
    interval_start: Any = None,
    interval_end: Any = None,
    run_id: str | None = None,
    note: str | None = None,
) -> dict[str, Any] | None:
    """The metadata of the Asset event for a CURRENT move to ``version``, or None when CURRENT
    does not name ``version`` (nothing moved: a stale run, or a race lost) so that no event
    tells consumers about a version that is not served.

    ``reason`` is ``publish`` or ``rollback``; ``note`` is free text (a rollback's reason).
    """
    from include.recsys.tables.current import read_current
    from include.recsys.tables.manifest import read_manifest

    served = read_current(root)
    if served != version:
        log.warning("CURRENT names %s, not %s: no asset event", served, version)
        return None
    m = read_manifest(root, version)
    if interval_start is None and isinstance(m.get("data_interval"), Mapping):
        # a rollback: the data interval of the version served again, from its manifest
        interval_start, interval_end = m["data_interval"].get("start"), m["data_interval"].get("end")
    gate = m.get("gate") or {}
    window = m.get("data_window") or {}
    extra = {
        "schema": EVENT_SCHEMA_VERSION,
        "table": TABLE,
        "uri": table_uri(root),
        "version": version,
        "previous_version": _previous_of(root, version),
        "reason": reason,
        "model_name": m.get("model_name"),
        "model_version": None if m.get("model_version") is None else str(m.get("model_version")),
        "data_interval_start": None if interval_start is None else str(interval_start),
        "data_interval_end": None if interval_end is None else str(interval_end),
        "data_window": window if isinstance(window, (dict, str)) else str(window),
        "users": m.get("users"),
        "rows": m.get("rows"),
        "gate_verdict": gate.get("verdict") if isinstance(gate, Mapping) else gate,
        "gate_forced": bool(gate.get("forced")) if isinstance(gate, Mapping) else False,
        "run_id": run_id,
    }
    if note:
        extra["note"] = note
    return json.loads(json.dumps(extra, default=str))  # the event extra must be plain JSON


def event_version(events: Any) -> str | None:
    """The version named by the newest of some Asset events (``triggering_asset_events`` or
    ``inlet_events`` entries: objects with ``.extra`` and ``.timestamp``, or dicts)."""
    items = []
    for ev in events or []:
        extra = getattr(ev, "extra", None) if not isinstance(ev, Mapping) else ev.get("extra", ev)
        ts = getattr(ev, "timestamp", None) if not isinstance(ev, Mapping) else ev.get("timestamp")
        if extra and extra.get("version"):
            items.append((str(ts or ""), extra["version"]))
    return max(items)[1] if items else None


def summarize_version(root: Path | str, version: str, out_dir: Path | str) -> dict[str, Any]:
    """The example consumer's work: read ``version`` through the reader and write per-source
    (and per-variant, when the table has variants) counts to ``<out_dir>/version=<v>.json``.

    Reads the announced version, not whatever CURRENT says now: a rollback after the event
    must not change what this event's consumer run computed.
    """
    from include.recsys.tables.reader import RecommendationStore

    store = RecommendationStore(root)
    table = store.table(version)
    manifest = store.manifest(version)
    by = ["source"] + (["variant"] if "variant" in table.columns else [])
    grouped = table.groupby(by, observed=True)
    counts = [
        {**dict(zip(by, key if isinstance(key, tuple) else (key,))), "rows": int(len(g)), "users": int(g["user_id"].nunique())}
        for key, g in grouped
    ]
    result = {
        "version": version,
        "model_version": manifest.get("model_version"),
        "rows": int(len(table)),
        "users": int(table["user_id"].nunique()),
        "counts": counts,
    }
    out = write_json(Path(out_dir) / f"version={version}.json", result)  # never half a file
    log.info("version %s: %d rows, %d users -> %s", version, result["rows"], result["users"], out)
    return {**result, "path": str(out)}
