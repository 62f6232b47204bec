"""The similar-items table: for every item its top-K most similar items ("more like this").

Similarity is the cosine of the model's item factors. Two engines:

- ``exact`` (default): the blocked top-k kernel that scores users
  (:func:`include.recsys.scoring.recommend.topn_dense`) with the L2-normalised item factors as both
  "users" and items, each item's own id as its one "seen" entry (so it never lists itself).
  Exact, ties by lower item index, O(items^2 x factors) flops: ~20k items take a second.
- ``faiss``: an HNSW graph (``faiss.IndexHNSWFlat``, inner product on the normalised factors)
  for catalogs where the exact pass grows too slow; approximate, its recall@K against the
  exact result is measured by ``bench/similar.py``.

Business rules (:mod:`include.recsys.scoring.rules`) apply: an excluded item never appears as a
similar item (it still gets its own row, so an item page of a retired item can point to
available ones). Items with an all-zero factor vector (never trained) have cosine 0 to all.

Item-item model families (``bundle.kind`` item_knn / ease, see
:mod:`include.recsys.scoring.bundle`) have no factors: :func:`compute_for_bundle` ranks each
item's row of the family's item x item matrix instead (the family's own notion of "goes with";
both engines give that exact result), with the same rules and self-exclusion; item-kNN rows
with fewer than K stored neighbours are filled up by popularity (score 0). Scores are the row's
weights divided by its largest absolute weight, so they keep the table's [-1, 1] contract and
its order.

The table (``item_id, rank, similar_item_id, score``) is published like the recommendations
(:mod:`include.recsys.tables.versions`: versions, manifest, commit log, CURRENT) under
``similar_items/`` beside the recommendations root, or ``similar_items_dir``; its
``_fallback.parquet`` (the most popular allowed items) answers unknown items.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

log = logging.getLogger(__name__)


COLUMNS = ["item_id", "rank", "similar_item_id", "score"]

KEY = "item_id"

ENGINES = ("exact", "faiss")


def normalized(item_factors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32, C order); all-zero rows stay zero."""
    vf = np.asarray(item_factors, dtype=np.float32)
    norms = np.linalg.norm(vf, axis=1, keepdims=True)
    return np.ascontiguousarray(vf / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def exact(
    item_factors: np.ndarray, k: int, allowed: np.ndarray | None = None, *, block_size: int = 1024,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine neighbours of every item, itself excluded: (items int32, scores float32),
    each (n_items, k), -1 / -inf padded when fewer than k allowed items remain."""
    from include.recsys.scoring.recommend import topn_dense

    vf = normalized(item_factors)
    n = vf.shape[0]
    self_seen = sp.identity(n, dtype=np.float32, format="csr")
    return topn_dense(vf, vf, self_seen, k, block_size, threads=threads, allowed=allowed)


def approximate(
    item_factors: np.ndarray, k: int, allowed: np.ndarray | None = None, *, m: int = 32,
    ef_construction: int = 200, ef_search: int | None = None, threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`exact`'s result approximated by a FAISS HNSW index over the allowed items."""
    import faiss

    if threads:
        faiss.omp_set_num_threads(threads)
    vf = normalized(item_factors)
    n, f = vf.shape
    cand = np.arange(n) if allowed is None else np.flatnonzero(np.asarray(allowed, dtype=bool))
    items = np.full((n, k), -1, dtype=np.int32)
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    if k == 0 or len(cand) == 0:
        return items, scores
    index = faiss.IndexHNSWFlat(f, m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.hnsw.efSearch = ef_search or max(128, 2 * (k + 1))
    index.add(vf[cand])
    want = min(k + 1, len(cand))  # one more: an allowed item finds itself first
    d, lab = index.search(vf, want)
    ids = np.where(lab >= 0, cand[np.maximum(lab, 0)], -1)
    ids[ids == np.arange(n)[:, None]] = -1  # drop the item itself wherever it came back
    d = np.where(ids >= 0, d, -np.inf).astype(np.float32)
    # compact each row: valid neighbours first (search order = score order), then padding
    order = np.argsort(ids < 0, axis=1, kind="stable")[:, :k]
    take = min(k, want)
    items[:, :take] = np.take_along_axis(ids, order, axis=1)[:, :take]
    scores[:, :take] = np.take_along_axis(d, order, axis=1)[:, :take]
    scores[items < 0] = -np.inf
    return items, scores


def compute(
    item_factors: np.ndarray, k: int, allowed: np.ndarray | None = None, *, engine: str = "exact",
    **kw: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k similar items of every item with ``engine`` (``exact`` | ``faiss``)."""
    if engine not in ENGINES:
        raise ValueError(f"similar_items_engine must be one of {ENGINES}, got {engine!r}")
    t0 = time.perf_counter()
    fn = exact if engine == "exact" else approximate
    items, scores = fn(item_factors, k, allowed, **kw)
    log.info("similar items (%s): %d items, top %d, in %.2fs", engine, len(items), k, time.perf_counter() - t0)
    return items, scores


def compute_for_bundle(
    bundle: Any, k: int, allowed: np.ndarray | None = None, *, engine: str = "exact", **kw: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k similar items of every item of ``bundle``, whatever its family: the cosine of the
    item factors (:func:`compute`) for ALS, the item-item matrix's rows otherwise."""
    if not getattr(bundle, "is_item_item", False):
        return compute(bundle.item_factors, k, allowed, engine=engine, **kw)
    from include.recsys.scoring.recommend import topn_item_item

    if engine not in ENGINES:
        raise ValueError(f"similar_items_engine must be one of {ENGINES}, got {engine!r}")
    t0 = time.perf_counter()
    n = len(bundle.item_ids)
    eye = sp.identity(n, dtype=np.float32, format="csr")  # history = one item; never itself
    items, scores = topn_item_item(eye, bundle.item_item, eye, k, kw.get("block_size", 1024), allowed=allowed,
                                   popularity=bundle.item_popularity)
    scale = np.max(np.where(np.isfinite(scores), np.abs(scores), 0.0), axis=1, keepdims=True)
    scores = np.where(np.isfinite(scores), scores / np.where(scale > 0, scale, 1.0), -np.inf).astype(np.float32)
    log.info("similar items (%s rows of the item-item matrix): %d items, top %d, in %.2fs", bundle.kind, n, k,
             time.perf_counter() - t0)
    return items, scores


def to_frame(item_ids: pd.Index, items: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """Long format ``item_id, rank, similar_item_id, score`` (padding dropped)."""
    k = items.shape[1]
    valid = (items >= 0).ravel()
    ids = np.asarray(item_ids)
    return pd.DataFrame({
        "item_id": np.repeat(ids, k)[valid],
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int16), len(ids))[valid],
        "similar_item_id": ids[items.ravel()[valid]],
        "score": scores.ravel()[valid].astype(np.float32),
    })


def fallback_frame(item_ids: pd.Index, popularity: np.ndarray, k: int, allowed: np.ndarray | None) -> pd.DataFrame:
    """What an unknown item gets: the k most popular allowed items (score in [0, 1])."""
    order = np.argsort(-np.asarray(popularity), kind="stable")
    if allowed is not None:
        order = order[np.asarray(allowed, dtype=bool)[order]]
    order = order[:k]
    pop = np.asarray(popularity, dtype=np.float64)
    return pd.DataFrame({
        "rank": np.arange(1, len(order) + 1, dtype=np.int16),
        "similar_item_id": np.asarray(item_ids)[order],
        "score": (pop[order] / max(float(pop.max(initial=0.0)), 1.0)).astype(np.float32),
    })


def recall_at_k(approx_items: np.ndarray, exact_items: np.ndarray) -> float:
    """Mean share of each row's exact top-k (valid entries) that the approximate row holds."""
    hits, total = 0, 0
    for a, e in zip(approx_items, exact_items):
        e = e[e >= 0]
        total += len(e)
        hits += len(np.intersect1d(a[a >= 0], e, assume_unique=True))
    return hits / total if total else 1.0


