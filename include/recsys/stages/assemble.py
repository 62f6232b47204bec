"""The assemble stage: the fallback lists and the manifest (model, data, gate, rules, A/B plan)
are added to the staged parts, which become the unpublished ``version=<id>/``."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from include.recsys.config.settings import PipelineConfig
from include.recsys.core.run import RunContext
from include.recsys.stages._shared import (
    _already_served,
    _table_columns,
    _variant_models,
    item_rules,
)

log = logging.getLogger(__name__)


def assemble_version(
    cfg: PipelineConfig,
    rc: RunContext,
    snap: dict[str, Any],
    model: dict[str, Any],
    reg: dict[str, Any],
    ev: dict[str, Any],
    verdict: dict[str, Any],
    parts: list[dict[str, Any]],
) -> dict[str, Any]:
    """Fallback list + manifest, then the staged parts become ``version=<id>/`` (unpublished)."""
    from include.recsys.core.privacy import enabled as pseudonymized
    from include.recsys.tables.layout import version_dir
    from include.recsys.tables.versions import finalize_version

    root = cfg.recommendations_root
    if _already_served(cfg, rc):
        return {"version": rc.version, "path": str(version_dir(root, rc.version)), "rows": None, "users": None}
    from include.recsys.scoring.bundle import ModelBundle

    parts = list(parts)
    # the fallback lists come from the model's training popularity, global and per segment,
    # exactly as the table's own fallback rows do
    bundle = ModelBundle.load(model["bundle"])
    rules = item_rules(cfg, rc)
    allowed = rules.allowed_mask(bundle.item_ids) if rules is not None else None
    lists = [bundle.fallback_list(cfg.top_n, allowed=allowed).assign(segment="")]
    for seg in bundle.segment_ids if bundle.segment_ids is not None else []:
        lists.append(bundle.fallback_list(cfg.top_n, seg, allowed=allowed).assign(segment=str(seg)))
    fallback = pd.concat(lists, ignore_index=True)[["segment", "rank", "item_id", "score"]]
    users = int(sum(p["users"] for p in parts))
    by_model = int(sum(p["users_by_model"] for p in parts))
    manifest = {
        "model_name": reg["model_name"],
        "model_version": str(reg["model_version"]),
        "mlflow_run_id": model["mlflow_run_id"],
        "airflow_dag_id": rc.dag_id,
        "airflow_run_id": rc.run_id,
        "data_window": {"start": snap["window_start"], "end": snap["window_end"]},
        # the Airflow data interval the run is keyed by; publish never serves older data than
        # the served version's (data_window.end) unless allow_older_data says so
        "data_interval": rc.data_interval(),
        "snapshot": {"rows": snap["stats"]["rows"], "sha256": snap["sha256"]},
        "top_n": cfg.top_n,
        "shards": len(parts),
        "user_ids": "hmac-sha256 pseudonyms" if pseudonymized() else "raw",
        "users_by_model": by_model,
        "users_by_fallback": users - by_model,
        "metrics": ev["metrics"]["candidate"],
        "gate": {"verdict": verdict["verdict"], "metric": verdict["metric"], "forced": bool(verdict.get("forced"))},
    }
    if rules is not None:  # digest, counts, and whether the last good copy stood in
        manifest["rules"] = rules.summary(bundle.item_ids)
    plan = cfg.variant_plan
    if plan is not None:  # salt, shares, the model version behind each arm, users per arm
        arm_users: dict[str, int] = {}
        for p in parts:
            for arm, count in (p.get("variant_users") or {}).items():
                arm_users[arm] = arm_users.get(arm, 0) + int(count)
        models = _variant_models(cfg, rc, model, reg, plan)
        manifest["variants"] = {**plan.to_dict(), "shares": plan.shares(), "users": arm_users,
                                "model_versions": {k: v[1] for k, v in models.items()}}
    folder = finalize_version(root, rc.version, parts, fallback, manifest, **_table_columns(plan))
    rows = int(sum(p["rows"] for p in parts))
    return {"version": rc.version, "path": str(folder), "rows": rows, "users": users}
