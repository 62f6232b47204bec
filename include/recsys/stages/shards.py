"""The scoring stages: ``plan_shards`` splits the snapshot's users into contiguous code ranges
(each a row range of the run's seen pattern, built once), ``score_shard`` writes one part of
the unpublished version per range."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from include.recsys.config.settings import PipelineConfig
from include.recsys.core.run import RunContext
from include.recsys.stages._shared import (
    _already_served,
    _score_variants,
    _table_columns,
    item_rules,
    load_seen,
    run_seen,
)

log = logging.getLogger(__name__)


def plan_shards(cfg: PipelineConfig, rc: RunContext, snap: dict[str, Any]) -> list[dict[str, Any]]:
    """Split the snapshot's users (sorted) into ``cfg.shards`` contiguous ranges.

    Each range becomes one mapped ``score_shard`` task writing one part file, so the part
    files are globally sorted by user_id and workers score shards in parallel. The user map is
    the snapshot's (``user_idx`` indexes it), so a range is a contiguous code range of the
    run's seen pattern (:func:`~include.recsys.stages._shared.run_seen`: every snapshot pair,
    built once per run, usually already by ``register``); a shard slices its rows out of it
    (no string column read or written, no per-shard sort). Starts from an empty staging
    folder unless the run's version is already served. A snapshot without codes or maps
    raises :class:`~include.recsys.errors.IdRouteError`.
    """
    from include.recsys.tables.versions import discard_staged

    folder = run_seen(cfg, rc, snap["snapshot"], snap.get("users"), snap.get("items"))
    n_users = len(load_seen(folder)[0]) - 1
    if not _already_served(cfg, rc):  # a fresh plan starts from an empty staging folder
        discard_staged(cfg.recommendations_root, rc.version)
    n = max(1, min(cfg.shards, n_users))
    bounds = np.linspace(0, n_users, n + 1).astype(int)
    log.info("%d users in %d shard(s) of ~%d users", n_users, n, n_users // n)
    return [{"index": i, "lo": int(lo), "hi": int(hi), "users": snap["users"], "items": snap["items"],
             "seen": str(folder)} for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))]


def _shard_seen(shard: dict[str, Any], users: pd.Index, bundle: Any):
    """The shard's seen CSR (its users x the model's items): rows ``lo:hi`` of the run's seen
    pattern (memory-mapped: only the shard's slice is read), its columns mapped from snapshot
    item codes to the model's items (an item the model was not trained on is dropped)."""
    from include.recsys.core.ids import IdMap, reindex_csr, translate_codes

    indptr, indices = load_seen(shard["seen"])
    items = IdMap.read(shard["items"], "item").ids
    lookup = translate_codes(np.arange(len(items)), items, bundle.item_ids)
    rows = np.arange(int(shard["lo"]), int(shard["hi"]))
    if len(rows) != len(users):
        raise ValueError(f"shard {shard['index']}: {len(users)} users for rows {shard['lo']}:{shard['hi']}")
    return reindex_csr(indptr, indices, rows, lookup, len(bundle.item_ids))


def score_shard(
    cfg: PipelineConfig,
    rc: RunContext,
    snap: dict[str, Any],
    model: dict[str, Any],
    reg: dict[str, Any],
    shard: dict[str, Any],
) -> dict[str, Any]:
    """Top-N for one shard of users (seen items filtered) -> one part file of the version."""
    from include.recsys.scoring.bundle import ModelBundle
    from include.recsys.backends.base import get as backend
    from include.recsys.tables.versions import write_part

    if _already_served(cfg, rc):
        return {"index": shard["index"], "skipped": True}
    rules = item_rules(cfg, rc)  # first: a bad rules file fails before any part is written
    bundle = ModelBundle.load(model["bundle"])
    users = pd.Index(pd.read_parquet(shard["users"])["user_id"].iloc[shard["lo"] : shard["hi"]])
    seen = _shard_seen(shard, users, bundle)  # its pairs, split out by plan_shards
    from include.recsys.data.source import read_segments

    plan = cfg.variant_plan
    arm_users = None
    if plan is not None:  # A/B arms (issue 19): each scored by its own model, the holdout by popularity
        table, arm_users, by_model = _score_variants(cfg, rc, model, reg, plan, bundle, users, seen, rules)
    else:
        recs = backend(cfg.backend).score(
            bundle, users, seen, cfg.top_n, block_size=cfg.score_block_size,
            user_segments=read_segments(cfg),
            allowed=rules.allowed_mask(bundle.item_ids) if rules is not None else None, cfg=cfg,
        )
        table = recs.to_frame(bundle, model_name=reg["model_name"], model_version=str(reg["model_version"]))
        by_model = int(recs.from_model.sum())
        del recs
    from include.recsys.core.privacy import pseudonymize_table

    # where ids leave the pipeline: keyed-HMAC tokens when RECSYS_PSEUDONYMIZE_USER_IDS is on
    table = pseudonymize_table(table)
    part = write_part(cfg.recommendations_root, rc.version, shard["index"], table, **_table_columns(plan))
    del table, seen, bundle
    out = {**part, "index": shard["index"], "users_by_model": by_model}
    return out if arm_users is None else {**out, "variant_users": arm_users}
