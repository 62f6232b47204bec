"""The train stage: ALS on the training split's integer codes (never its string ids), the
bundle saved in the work folder, params, metrics and lineage logged to the DAG run's MLflow run."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import Any

import pandas as pd

from include.recsys.config.settings import PipelineConfig
from include.recsys.core.run import RunContext

log = logging.getLogger(__name__)


def train(
    cfg: PipelineConfig,
    rc: RunContext,
    parts: dict[str, Any],
    snap: dict[str, Any],
    best: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit ALS on the training split; log params and timings to this DAG run's MLflow run.

    ``best`` (from :func:`select_best`) sets the model fields, except the ones the run's form
    set explicitly (they win). Without it the run's config is used as is.
    """
    from include.recsys.backends.base import get as backend
    from include.recsys.backends.implicit import model_config
    from include.recsys.core.ids import read_id_maps
    from include.recsys.data.source import read_segments
    from include.recsys.tracking.runs import get_or_create_run, lineage_tags, log_to_run

    # MLflow first: an unreachable server fails (and is retried) before an expensive fit
    run_id = get_or_create_run(cfg, rc.run_id, rc.mlflow_tags(), reopen=True)

    source, kept = "config", []
    if best:
        from include.recsys.tuning.search import apply_config

        cfg, kept = apply_config(cfg, best["config"])
        source = best.get("source", "tuned")
    # the snapshot's id maps, which the split's user_idx / item_idx index
    id_maps = read_id_maps(parts.get("users"), parts.get("items"), parts["train"])
    cutoff = pd.Timestamp(parts["stats"]["cutoff"]) if parts.get("stats", {}).get("cutoff") else None
    # only the columns training uses, in the engine's frame; the leak check runs while reading
    engine = backend(cfg.backend)
    train_df = engine.read_training(cfg, parts["train"], cutoff=cutoff)
    bundle, stats = engine.fit(train_df, cfg, read_segments(cfg), cutoff=cutoff, id_maps=id_maps)
    del train_df
    paths = rc.paths(cfg)
    bundle_dir = bundle.save(paths.model_bundle)
    validation = paths.validation  # GX report (+ Data Docs when written there)
    log.info(
        "trained with the %s configuration %s%s", source, json.dumps(model_config(cfg), sort_keys=True),
        f" (form values kept: {kept})" if kept else "",
    )
    log_to_run(
        cfg,
        run_id,
        params=cfg.params_for_mlflow(),
        metrics={
            "train_seconds": stats.fit_seconds,
            "train_total_seconds": stats.total_seconds,
            "train_users": stats.users,
            "train_items": stats.items,
            "train_nnz": stats.nnz,
            "train_iterations": stats.iterations,
            "snapshot_rows": snap["stats"]["rows"],
            "snapshot_duplicates_dropped": snap["stats"]["duplicates_dropped"],
        },
        tags={
            "data_window": f"[{snap['window_start']}, {snap['window_end']})",
            "data_snapshot_sha256": snap["sha256"],
            "id_maps_sha256": bundle.id_maps_hash,
            "config_source": source,  # tuned / reused / defaults (select_best), config (no best)
            "form_overrides_kept": ",".join(kept) or "none",
            **lineage_tags(),
            **rc.mlflow_tags(),
        },
        artifacts={"validation": validation} if validation.exists() else None,
    )
    from include.recsys.tracking import lineage

    lineage.log_training_snapshot(cfg, run_id, snap)
    return {
        "bundle": str(bundle_dir),
        "mlflow_run_id": run_id,
        "stats": asdict(stats),
        "config": model_config(cfg),
        "config_source": source,
    }
