"""The register stage: the serving bundle (trained factors + every snapshot pair of its users as
the seen filter) registered in MLflow, its version tagged with the gate, data and run, and the
``challenger`` alias pointed at it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.recsys.config.settings import PipelineConfig
from include.recsys.core.io import read_json
from include.recsys.core.run import RunContext
from include.recsys.reporting.run_card import RUN_CARD, write_run_card

log = logging.getLogger(__name__)


def _serving_seen(bundle: Any, snapshot: Path, users: Path | str | None, items: Path | str | None,
                  seen: Path | str | None = None) -> Any:
    """The serving bundle's seen CSR: every snapshot (user, item) pair of the bundle's users and
    items, from the snapshot's ``user_idx`` / ``item_idx`` and the id maps ``users`` / ``items``.

    ``seen``: the run's seen pattern folder (:func:`~include.recsys.stages._shared.run_seen`,
    built once per run and reused by the shards); without it the pattern is built here. It is
    re-indexed into the bundle's id maps: the bundle's ids are looked up once per distinct id
    (the maps), the rows are integer gathers. A snapshot without codes or maps raises
    :class:`~include.recsys.errors.IdRouteError`.
    """
    from include.recsys.core.ids import csr_from_codes, read_codes, read_id_maps, reindex_csr, translate_codes
    from include.recsys.stages._shared import load_seen

    user_map, item_map = read_id_maps(users, items, snapshot)
    if seen is None:
        u, i = read_codes(snapshot, (len(user_map), len(item_map)), allow_missing=True)
        pattern = csr_from_codes(u, i, None, (len(user_map), len(item_map)))
        del u, i
        indptr, indices = pattern.indptr, pattern.indices
    else:
        indptr, indices = load_seen(seen)
    # bundle user -> its snapshot row (-1: not in the snapshot, an empty row); snapshot item ->
    # bundle item (-1: not in the model, dropped)
    rows = pd.Index(user_map.ids).get_indexer(pd.Index(bundle.user_ids))
    lookup = translate_codes(np.arange(len(item_map.ids)), item_map.ids, bundle.item_ids)
    return reindex_csr(indptr, indices, rows, lookup, len(bundle.item_ids))


def register(
    cfg: PipelineConfig, rc: RunContext, model: dict[str, Any], snap: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Register the candidate in the MLflow registry, tag the version, point ``challenger`` at it.

    What is registered is the *serving* bundle: the trained factors with a seen-items matrix of
    every snapshot interaction of the model's users (the trained bundle's holds the training
    split only). So ``models:/<name>@champion`` filters exactly what the published table
    filters and returns the same top-N for the users the model knows.
    """
    from dataclasses import replace

    from include.recsys.core.memory import release_memory
    from include.recsys.scoring.bundle import ModelBundle
    from include.recsys.scoring.recommend import seen_matrix
    from include.recsys.stages._shared import run_seen
    from include.recsys.tracking import runs
    from include.recsys.tracking.registry import (
        CHALLENGER,
        register_model,
        set_alias,
        tag_model_version,
    )
    from include.recsys.tracking.runs import code_version

    paths = rc.paths(cfg)
    bundle = ModelBundle.load(model["bundle"])
    snapshot = ((Path(snap["snapshot"]), snap.get("users"), snap.get("items")) if snap
                else (paths.snapshot, paths.snapshot_users, paths.snapshot_items))
    seen = _serving_seen(bundle, *snapshot, seen=run_seen(cfg, rc, *snapshot))
    serving_dir = replace(bundle, seen=seen_matrix(bundle, bundle.user_ids, seen)).save(paths.serving_bundle)
    del seen, bundle
    release_memory()  # the seen CSR's build buffers go back before the upload to MLflow and the run card
    run_id = model["mlflow_run_id"]
    version = register_model(cfg, run_id, serving_dir)

    verdict = read_json(paths.gate) if paths.gate.exists() else {}
    report = read_json(paths.eval_report) if paths.eval_report.exists() else {}
    metric = verdict.get("metric") or cfg.gate_metric
    values = {name: m.get(metric) for name, m in (report.get("metrics") or {}).items()}
    run_tags = runs.run_tags(cfg, run_id)
    card = write_run_card(cfg, rc, run_id, snap=snap, model_version=version) or paths.run_card
    forced = bool(verdict.get("forced"))
    tags = {
        "gate_verdict": verdict.get("verdict", "unknown"),
        "gate_forced": str(forced).lower(),
        "gate_metric": metric,
        **{f"{metric.replace('@', '_at_')}.{name}": v for name, v in values.items() if v is not None},
        "champion_version_evaluated": report.get("champion_version") or "none",
        **_model_data_tags(cfg, rc, snap, report),
        "data_window": run_tags.get("data_window", ""),
        "data_snapshot_sha256": run_tags.get("data_snapshot_sha256", ""),
        "airflow_dag_id": rc.dag_id,
        "airflow_run_id": rc.run_id,
        "mlflow_run_id": run_id,
        "code_version": run_tags.get("code_version", code_version()),
        "run_card": str(card),
        "run_card_status": "present" if card.exists() else "pending",
        "run_card_artifact": f"runs:/{run_id}/run_card/{RUN_CARD}",
    }
    shown = ", ".join(f"{name} {v:.4f}" for name, v in values.items() if v is not None)
    description = (
        ("FORCED PUBLISH (force_publish=true) despite " if forced else "")
        + f"Gate {tags['gate_verdict']} on {metric} ({shown}). Data window {tags['data_window']}, "
        f"snapshot sha256 {tags['data_snapshot_sha256'][:12]}. Airflow {rc.dag_id} / {rc.run_id}, "
        f"code {tags['code_version']}. Run card: {card}."
    )
    tag_model_version(cfg, version, tags, description)
    set_alias(
        cfg, CHALLENGER, version,
        reason=(f"FORCED past gate {tags['gate_verdict']}" if forced else "passed the gate")
        + f" on {metric} ({shown})",
        actor=rc.run_id,
    )
    return {"model_name": cfg.model_name, "model_version": version, "serving_bundle": str(serving_dir)}


def _model_data_tags(
    cfg: PipelineConfig, rc: RunContext, snap: dict[str, Any] | None, report: dict[str, Any]
) -> dict[str, str]:
    """The data of the registered version (``registry.DATA_TAGS``): the Airflow data interval,
    the snapshot window and the training end (the split cutoff: the holdout starts there).
    The champion guard and the fair champion comparison read them back."""
    window_end = (snap or {}).get("window_end") or rc.end.isoformat()
    window_start = (snap or {}).get("window_start") or (rc.end - pd.Timedelta(days=cfg.window_days)).isoformat()
    cutoff = (report.get("settings") or {}).get("cutoff")
    if not cutoff:  # same rule as the split stage
        cutoff = (pd.Timestamp(window_end) - pd.Timedelta(days=cfg.holdout_days)).isoformat()
    interval = rc.data_interval()
    return {
        "data_interval_start": interval["start"],
        "data_interval_end": interval["end"],
        "data_window_start": str(window_start),
        "data_window_end": str(window_end),
        "train_data_end": str(cutoff),
    }
