"""The similar_items stage: the cosine nearest items of the registered model (rules applied),
written and validated as an unpublished version of the similar-items table."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from include.recsys.config.settings import PipelineConfig
from include.recsys.core.run import RunContext
from include.recsys.scoring.similar import COLUMNS, KEY, to_frame
from include.recsys.stages._shared import item_rules


def write_table(
    root: Any, version: str, item_ids: pd.Index, items: np.ndarray, scores: np.ndarray,
    fallback: pd.DataFrame, manifest: dict[str, Any],
) -> Any:
    """An unpublished version of the similar-items table (same protocol as the
    recommendations: staged parts, fallback, manifest last)."""
    from include.recsys.tables.versions import write_version

    table = to_frame(item_ids, items, scores)
    return write_version(root, version, table, fallback, {**manifest, "top_k": int(items.shape[1])},
                                 columns=COLUMNS, key=KEY)


log = logging.getLogger(__name__)


def similar_items(
    cfg: PipelineConfig, rc: RunContext, snap: dict[str, Any], model: dict[str, Any], reg: dict[str, Any]
) -> dict[str, Any]:
    """The similar-items table of the registered model (cosine of item factors, rules applied),
    written as an unpublished version ``rc.version`` under ``cfg.similar_items_root`` and
    validated; ``publish`` serves it together with the recommendations. Raises
    OutputValidationError (no retries) when it breaks its contract."""
    from include.recsys.scoring import similar as sim
    from include.recsys.scoring.bundle import ModelBundle
    from include.recsys.tables.current import read_current
    from include.recsys.tables.layout import version_dir
    from include.recsys.validation.similar import validate_similar_table

    root = cfg.similar_items_root
    if cfg.similar_items_k == 0:
        return {"skipped": True, "reason": "similar_items_k is 0"}
    if read_current(root) == rc.version:
        return {"version": rc.version, "root": str(root), "path": str(version_dir(root, rc.version)), "rows": None}
    rules = item_rules(cfg, rc)
    bundle = ModelBundle.load(model["bundle"])
    allowed = rules.allowed_mask(bundle.item_ids) if rules is not None else None
    k = cfg.similar_items_k
    kw = {"block_size": cfg.score_block_size} if cfg.similar_items_engine == "exact" else {}
    items, scores = sim.compute_for_bundle(bundle, k, allowed, engine=cfg.similar_items_engine, **kw)
    fallback = sim.fallback_frame(bundle.item_ids, bundle.item_popularity, k, allowed)
    manifest = {
        "table": "similar_items", "model_name": reg["model_name"], "model_version": str(reg["model_version"]),
        "mlflow_run_id": model["mlflow_run_id"], "airflow_run_id": rc.run_id, "engine": cfg.similar_items_engine,
        "data_window": {"start": snap["window_start"], "end": snap["window_end"]},
        "data_interval": rc.data_interval(), "items": len(bundle.item_ids),
        **({"rules": rules.summary(bundle.item_ids)} if rules is not None else {}),
    }
    folder = write_table(root, rc.version, bundle.item_ids, items, scores, fallback, manifest)
    from include.recsys.tables.versions import read_version_table

    report = validate_similar_table(
        read_version_table(str(folder)), top_k=k, catalog=bundle.item_ids, allowed=allowed,
        fallback=fallback, run_name=f"similar_items__{rc.version}",
        report_path=rc.paths(cfg).similar_report,
    )
    return {"version": rc.version, "root": str(root), "path": str(folder), "rows": report.n_rows}
