"""The ``publish`` stage: serve the run's table version (one commit moving CURRENT), then move
the ``champion`` alias to its model; the similar-items twin version follows. Never to older
data than what is served: such a run succeeds, serves nothing and says why everywhere."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from include.recsys.config.settings import PipelineConfig
from include.recsys.core.io import write_json
from include.recsys.core.run import RunContext
from include.recsys.reporting.run_card import _published_run_card

log = logging.getLogger(__name__)


def _publish_similar(cfg: PipelineConfig, rc: RunContext, version: str, reason: str) -> bool | None:
    """Serve the run's similar-items version beside the recommendations (None: none built)."""
    from include.recsys.errors import PublishError, StaleData
    from include.recsys.tables.current import point_current
    from include.recsys.tables.manifest import read_manifest
    from include.recsys.tables.retention import cleanup

    root = cfg.similar_items_root
    if cfg.similar_items_k == 0:
        return None
    try:
        read_manifest(root, version)
    except PublishError:
        log.info("no similar-items version %s under %s: not published", version, root)
        return None
    try:
        moved = point_current(root, version, reason=reason, allow_older_data=cfg.allow_older_data)
    except StaleData as exc:
        log.warning("similar items: %s", exc)
        return False
    cleanup(root, cfg.keep_versions)
    return moved


def _served_data_end(root: Path | str) -> str | None:
    """``data_window.end`` of the served version (None: nothing served or no manifest)."""
    from include.recsys.tables.current import read_current
    from include.recsys.tables.manifest import read_manifest

    served = read_current(root)
    if not served:
        return None
    try:
        return (read_manifest(root, served).get("data_window") or {}).get("end")
    except Exception:  # an unreadable served manifest: point_current decides and says why
        return None


def publish(cfg: PipelineConfig, rc: RunContext, pre: dict[str, Any], reg: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """Point CURRENT at the new version, then move ``champion``; clean old versions.

    Never to older data: when this run's data ends before the served table's
    (:class:`~include.recsys.errors.StaleData`) or the champion's
    (:class:`~include.recsys.errors.StaleModel`), neither pointer moves and the run succeeds
    with "stale: serving data up to X, this run's data ends at Y; not served" in its log,
    ``publish.json``, run card, summary and Slack. ``allow_older_data`` overrides that, loudly.
    """
    from include.recsys.core.crashpoints import crashpoint
    from include.recsys.errors import StaleData, StaleModel
    from include.recsys.tables.current import point_current, read_current
    from include.recsys.tracking.registry import (
        CHAMPION,
        champion_data_check,
        require_version,
        set_alias,
    )

    root = cfg.recommendations_root
    allow = cfg.allow_older_data
    # the model must be registered (and the registry reachable) before the table is served; a
    # failure between CURRENT and the alias is completed by the rerun (point_current -> False)
    require_version(cfg, reg["model_version"])
    served_end, run_end = _served_data_end(root), _version_data_end(root, pre["version"])
    older = bool(served_end and run_end and pd.Timestamp(run_end) < pd.Timestamp(served_end))
    reason = f"publish by {rc.run_id}"
    if older and allow:
        reason = f"OLDER DATA allowed by allow_older_data: data up to {run_end} replaces data up to {served_end}; {reason}"
        log.warning("%s (version %s)", reason, pre["version"])
    try:
        # the table, then the champion, are checked before either pointer moves, so they never
        # disagree in direction; point_current checks the table again under its commit
        if older and not allow:
            raise StaleData(served_end, run_end, read_current(root), pre["version"])
        champion_data_check(cfg, reg["model_version"], allow_older_data=allow)
        moved = point_current(root, pre["version"], reason=reason, allow_older_data=allow)
    except (StaleData, StaleModel) as exc:
        return _not_served(cfg, rc, pre, reg, model, exc)
    _publish_similar(cfg, rc, pre["version"], reason)  # its twin table: same version id
    crashpoint("between_current_and_alias")
    set_alias(
        cfg, CHAMPION, reg["model_version"], allow_older_data=allow,
        reason=f"published table version {pre['version']}", actor=rc.run_id,
    )
    outcome = {"served": True, "version": pre["version"], "moved": moved, "data_end": run_end}
    if older and allow:
        outcome["older_data"] = {"served_end": served_end, "run_end": run_end, "note": reason}
    return _finish_publish(cfg, rc, pre, reg, model, outcome)


def _version_data_end(root: Path | str, version: str) -> str | None:
    from include.recsys.tables.manifest import read_manifest

    try:
        return (read_manifest(root, version).get("data_window") or {}).get("end")
    except Exception:  # point_current refuses an unreadable version itself, with the reason
        return None


def _not_served(
    cfg: PipelineConfig, rc: RunContext, pre: dict[str, Any], reg: dict[str, Any], model: dict[str, Any],
    exc: Exception,
) -> dict[str, Any]:
    """A run whose data is older than what is served: it succeeds, serves nothing, says why."""
    log.warning("%s (version %s, model version %s; allow_older_data would override; rollback is the "
                "normal way back)", exc, pre["version"], reg["model_version"])
    outcome = {
        "served": False, "version": pre["version"], "moved": False, "reason": str(exc),
        "served_end": getattr(exc, "served_end", None), "data_end": getattr(exc, "run_end", None),
    }
    return _finish_publish(cfg, rc, pre, reg, model, outcome)


def _finish_publish(
    cfg: PipelineConfig, rc: RunContext, pre: dict[str, Any], reg: dict[str, Any], model: dict[str, Any],
    outcome: dict[str, Any],
) -> dict[str, Any]:
    """Retention (after a served version only), ``publish.json``, the run card and MLflow."""
    from include.recsys.core.uri import is_remote
    from include.recsys.tables.layout import MANIFEST
    from include.recsys.tables.manifest import read_manifest
    from include.recsys.tables.retention import cleanup
    from include.recsys.tracking.runs import end_run, log_to_run

    root = cfg.recommendations_root
    removed = cleanup(root, cfg.keep_versions) if outcome["served"] else []
    write_json(rc.paths(cfg).publish_outcome, outcome)
    card = _published_run_card(cfg, rc, pre, reg, model, outcome) or rc.paths(cfg).run_card
    manifest_file = Path(pre["path"]) / MANIFEST
    if is_remote(root):  # MLflow logs local files: a copy of the object store's manifest
        manifest_file = write_json(rc.paths(cfg).table_dir / MANIFEST, read_manifest(root, pre["version"]))
    tags = {"published_version": pre["version"], "champion_version": reg["model_version"]}
    if not outcome["served"]:
        tags = {"published_version": "none", "not_served": outcome["reason"]}
    elif outcome.get("older_data"):
        tags["older_data_served"] = outcome["older_data"]["note"]
    log_to_run(
        cfg,
        model["mlflow_run_id"],
        tags=tags,
        artifacts={"table": manifest_file, **({"run_card": card} if card.exists() else {})},
    )
    end_run(cfg, model["mlflow_run_id"])
    return {"version": pre["version"], "path": pre["path"], "moved": outcome["moved"], "removed": removed,
            "served": outcome["served"], **({"reason": outcome["reason"]} if not outcome["served"] else {})}
