"""TODO docstring."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.recsys.config.settings import PipelineConfig
from include.recsys.core.run import RunContext
from include.recsys.stages._shared import (
    _already_served,
    _coded,
    _score_variants,
    _table_columns,
    item_rules,
)

log = logging.getLogger(__name__)


def _sorted_user_codes(path: str | Path) -> tuple[np.ndarray, pd.Index]:
    """``pd.factorize(user_id, sort=True)`` of a Parquet file's ``user_id`` column: codes in
    sorted id order (-1 for a null id) and the sorted ids. String ids are read as Parquet
    dictionaries (integer indices plus each distinct id once), not as a 20M-row string column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from include.recsys.data.split import dictionary_codes

    col = pq.read_table(path, columns=["user_id"], read_dictionary=["user_id"]).unify_dictionaries()["user_id"]
    if not pa.types.is_dictionary(col.type) or col.num_chunks == 0:  # e.g. integer ids
        codes, users = pd.factorize(col.to_pandas(), sort=True)
        return codes, pd.Index(users)
    codes, n = dictionary_codes(col)
    ids = pd.Index(col.chunk(0).dictionary.to_pandas())
    used = np.bincount(codes[codes >= 0], minlength=n) > 0  # a dictionary may hold unused ids
    order = np.flatnonzero(used)[ids[used].argsort()]
    rank = np.full(n + 1, -1, np.int64)  # last slot: null (-1) stays -1
    rank[order] = np.arange(len(order))
    return rank[codes], ids[order]


def _plan_coded_shards(cfg: PipelineConfig, rc: RunContext, snap: dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`plan_shards` on the snapshot's integer codes: the sorted user map is the
    snapshot's (``user_idx`` indexes it), so a shard is a contiguous code range and its seen file
    holds its rows' ``user_idx`` / ``item_idx`` (no string column is read or written)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from include.recsys.core.ids import CODE_COLUMNS, IdMap
    from include.recsys.core.memory import release_memory

    n_users = len(IdMap.read(snap["users"], "user"))
    pairs = pq.read_table(snap["snapshot"], columns=list(CODE_COLUMNS))
    codes = pairs["user_idx"].to_numpy()
    shards = _write_seen_shards(
        cfg, rc, n_users, lambda lo, hi: pairs.filter(pa.array((codes >= lo) & (codes < hi))),
        {"users": snap["users"], "items": snap["items"]},
    )
    del pairs, codes
    release_memory()
    return shards


def _write_seen_shards(
    cfg: PipelineConfig, rc: RunContext, n_users: int, rows_of: Any, fields: dict[str, Any]
) -> list[dict[str, Any]]:
    """``cfg.shards`` contiguous ranges of the ``n_users`` sorted users; each range's seen pairs
    (``rows_of(lo, hi)``, an Arrow table) go to ``precompute/seen-<shard>.parquet``. Starts
    from an empty staging folder unless the run's version is already served."""
    import pyarrow.parquet as pq

    from include.recsys.tables.versions import discard_staged

    folder = rc.work_dir(cfg) / "precompute"
    folder.mkdir(parents=True, exist_ok=True)
    if not _already_served(cfg, rc):  # a fresh plan starts from an empty staging folder
        discard_staged(cfg.recommendations_root, rc.version)
    n = max(1, min(cfg.shards, n_users))
    bounds = np.linspace(0, n_users, n + 1).astype(int)
    shards = []
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        seen = folder / f"seen-{i:05d}.parquet"
        tmp = seen.with_name(f".{seen.name}.tmp")
        pq.write_table(rows_of(lo, hi), tmp)
        tmp.replace(seen)
        shards.append({"index": i, "lo": int(lo), "hi": int(hi), **fields, "seen": str(seen)})
    log.info("%d users in %d shard(s) of ~%d users", n_users, n, n_users // n)
    return shards


def plan_shards(cfg: PipelineConfig, rc: RunContext, snap: dict[str, Any]) -> list[dict[str, Any]]:
    """Split the snapshot's users (sorted) into ``cfg.shards`` contiguous ranges.

    Each range becomes one mapped ``score_shard`` task writing one part file, so the part
    files are globally sorted by user_id and workers score shards in parallel. The snapshot's
    (user, item) pairs are read once here and split into one ``seen-<shard>.parquet`` per
    shard, so a shard reads only its own users' pairs (not the whole snapshot again).
    """
    import pyarrow.parquet as pq

    from include.recsys.core.io import write_parquet
    from include.recsys.core.memory import release_memory

    release_memory()  # what earlier stages of this process left behind
    if _coded(snap):
        return _plan_coded_shards(cfg, rc, snap)
    # the pairs stay an Arrow table (no pandas string columns for 20M rows); users are grouped
    # by a stable argsort of integer codes (sorting the id strings themselves is much slower),
    # and each shard takes only its own rows (no sorted copy of the whole table)
    codes, users = _sorted_user_codes(snap["snapshot"])
    rows = np.flatnonzero(codes >= 0)  # a null user has no list
    order = rows[np.argsort(codes[rows], kind="stable")]  # snapshot order kept inside a user
    starts = np.r_[0, np.cumsum(np.bincount(codes[rows], minlength=len(users)))]
    del codes, rows
    pairs = pq.read_table(snap["snapshot"], columns=["user_id", "item_id"])
    path = write_parquet(pd.DataFrame({"user_id": users}), rc.work_dir(cfg) / "precompute" / "users.parquet")
    shards = _write_seen_shards(
        cfg, rc, len(users), lambda lo, hi: pairs.take(order[starts[lo] : starts[hi]]), {"users": str(path)}
    )
    del pairs, order
    release_memory()
    return shards


def _coded_seen(shard: dict[str, Any], users: pd.Index, bundle: Any):
    """The shard's seen CSR (its users x the model's items) from its ``user_idx`` / ``item_idx``."""
    from include.recsys.core.ids import IdMap, csr_from_codes

    pairs = pd.read_parquet(shard["seen"])
    # snapshot item index -> model item index (-1: an item the model was not trained on)
    to_model = bundle.item_ids.get_indexer(IdMap.read(shard["items"], "item").ids)
    rows = pairs["user_idx"].to_numpy().astype(np.int64) - shard["lo"]
    cols = np.where(pairs["item_idx"].to_numpy() >= 0, to_model[pairs["item_idx"].to_numpy()], -1)
    return csr_from_codes(rows, cols, None, (len(users), len(bundle.item_ids)))


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
    from include.recsys.scoring.recommend import recommend
    from include.recsys.tables.versions import write_part

    if _already_served(cfg, rc):
        return {"index": shard["index"], "skipped": True}
    rules = item_rules(cfg, rc)  # first: a bad rules file fails before any part is written
    bundle = ModelBundle.load(model["bundle"])
    users = pd.Index(pd.read_parquet(shard["users"])["user_id"].iloc[shard["lo"] : shard["hi"]])
    if shard.get("items"):  # codes into the snapshot's id maps (_plan_coded_shards)
        seen = _coded_seen(shard, users, bundle)
    elif shard.get("seen"):  # this shard's pairs, split out by plan_shards
        seen = pd.read_parquet(shard["seen"])
    else:  # a shard planned before seen files existed
        df = pd.read_parquet(snap["snapshot"], columns=["user_id", "item_id"])
        seen = df.loc[df["user_id"].isin(users)]
    from include.recsys.data.source import read_segments

    plan = cfg.variant_plan
    arm_users = None
    if plan is not None:  # A/B arms (issue 19): each scored by its own model, the holdout by popularity
        table, arm_users, by_model = _score_variants(cfg, rc, model, reg, plan, bundle, users, seen, rules)
    else:
        recs = recommend(
            bundle, users, seen, cfg.top_n, block_size=cfg.score_block_size,
            user_segments=read_segments(cfg),
            allowed=rules.allowed_mask(bundle.item_ids) if rules is not None else None,
        )
        table = recs.to_frame(bundle).assign(
            model_name=reg["model_name"], model_version=str(reg["model_version"])
        )
        by_model = int(recs.from_model.sum())
        del recs
    from include.recsys.core.privacy import pseudonymize_table

    # where ids leave the pipeline: keyed-HMAC tokens when RECSYS_PSEUDONYMIZE_USER_IDS is on
    table = pseudonymize_table(table)
    part = write_part(cfg.recommendations_root, rc.version, shard["index"], table, **_table_columns(plan))
    del table, seen, bundle
    from include.recsys.core.memory import release_memory

    release_memory()
    out = {**part, "index": shard["index"], "users_by_model": by_model}
    return out if arm_users is None else {**out, "variant_users": arm_users}
