"""The ``rollback`` stage (and ``recsys rollback``): serve an earlier table again, with the
champion alias and the similar-items table following it."""

from __future__ import annotations

import logging
from typing import Any

from include.recsys.config.settings import PipelineConfig
from include.recsys.core.run import RunContext

log = logging.getLogger(__name__)


def rollback(cfg: PipelineConfig, rc: RunContext, to_version: str | None = None, reason: str = "") -> dict[str, Any]:
    """Serve an earlier table again: CURRENT back to ``to_version`` (default: the version
    served before the current one), then the ``champion`` alias back to that table's model
    version (read from its manifest), so table and alias keep agreeing. Both moves are logged
    (``_history.jsonl`` for CURRENT, the registry's alias history)."""
    from include.recsys.tables import current
    from include.recsys.tables.current import read_current
    from include.recsys.tables.manifest import read_manifest
    from include.recsys.tracking.registry import CHAMPION, set_alias

    root = cfg.recommendations_root
    before = read_current(root)
    target = current.rollback(root, to_version or None)
    model_version = read_manifest(root, target).get("model_version")
    if model_version:
        set_alias(
            cfg, CHAMPION, str(model_version), action="rollback", actor=rc.run_id,
            reason=f"rollback: table {before} -> {target}" + (f": {reason}" if reason else ""),
        )
    log.info("rolled back %s -> %s (model version %s): %s", before, target, model_version, reason or "no reason given")
    similar = _rollback_similar(cfg, target, reason)
    out = {"from": before, "to": target, "model_version": model_version, "reason": reason}
    return out if similar is None else {**out, "similar_items": similar}


def _rollback_similar(cfg: PipelineConfig, target: str, reason: str) -> str | None:
    """The similar-items table follows a rollback to its twin version (same id) when that one
    exists; otherwise it stays where it is (it was not built then) and the log says so."""
    from include.recsys.errors import PublishError
    from include.recsys.tables.current import point_current, read_current
    from include.recsys.tables.manifest import read_manifest

    root = cfg.similar_items_root
    try:
        if read_current(root) is None:
            return None
        read_manifest(root, target)
    except (PublishError, OSError) as exc:
        log.warning("similar items stay at %s: no version %s to roll back to (%s)", read_current(root), target, exc)
        return None
    point_current(root, target, reason=f"rollback with the recommendations: {reason}".strip())
    return target
