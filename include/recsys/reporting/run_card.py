"""The stages' door to the run card: (re)write it for a run, best effort, after the gate and
again once publish decided (:mod:`.card_html` renders it, :mod:`.card_data` gathers it)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from include.recsys.config.settings import PipelineConfig
from include.recsys.core.run import RunContext

log = logging.getLogger(__name__)


RUN_CARD = "run_card.html"  # RunPaths.run_card's name, and the card's MLflow artifact name


def write_run_card(
    cfg: PipelineConfig, rc: RunContext, mlflow_run_id: str | None = None, **kwargs: Any
) -> Path | None:
    """(Re)write ``<work>/run_card.html`` (+ ``run_card.json``) from the run's work folder;
    best effort: a broken card is logged and never changes what the run does."""
    from include.recsys.reporting import card_html

    try:
        return card_html.write_run_card(
            rc.work_dir(cfg),
            cfg.runs_root,
            dag_id=rc.dag_id,
            run_id=rc.run_id,
            interval_start=rc.interval_start,
            interval_end=rc.interval_end,
            mlflow_run_id=mlflow_run_id,
            mlflow_experiment=cfg.mlflow_experiment,
            model_name=cfg.model_name,
            **kwargs,
        )
    except Exception:
        log.warning("could not write the run card", exc_info=True)
        return None


def _published_run_card(
    cfg: PipelineConfig, rc: RunContext, pre: dict[str, Any], reg: dict[str, Any], model: dict[str, Any],
    outcome: dict[str, Any] | None = None,
) -> Path | None:
    """Refresh the run card once publish decided (served: version, rows, model version; not
    served: why)."""
    from include.recsys.tables.manifest import read_manifest

    outcome = outcome or {"served": True}
    if not outcome["served"]:
        published: dict[str, Any] = {"version": None, "not_served": outcome["reason"], "unserved_version": pre["version"]}
        return write_run_card(cfg, rc, model.get("mlflow_run_id"), model_version=reg.get("model_version"), published=published)
    try:
        manifest = read_manifest(cfg.recommendations_root, pre["version"])
    except Exception:  # the card is best effort; publish has already happened
        manifest = {}
    published = {
        "version": pre["version"],
        "path": pre["path"],
        "rows": manifest.get("rows"),
        "users": manifest.get("users"),
        "created_at": manifest.get("created_at"),
        **({"older_data": outcome["older_data"]["note"]} if outcome.get("older_data") else {}),
    }
    return write_run_card(
        cfg, rc, model.get("mlflow_run_id"), model_version=reg.get("model_version"), published=published
    )
