"""Batch top-N scoring with seen-item filtering and a popularity fallback for unknown users.

A :class:`ModelBundle` is everything needed to recommend: factors, the external ids of its
users and items (index order) and the item popularity of its training data. It is stored as
plain ``.npz`` + Parquet (loaded with ``allow_pickle=False``) and is what MLflow registers.

Scoring is exact: blocks of users on all cores, each scored against cache-sized item tiles
(float32 GEMM, BLAS) fused with a thresholded top-N selection (seen items masked straight
from the CSR arrays, no full sort; see :mod:`include.recsys.scoring.topk`). Memory beyond the
output is one tile and one candidate buffer per worker, whatever the number of users.

Item-item bundles (``kind`` item_knn / ease) go through :func:`topn_item_item` instead: blocks of
users' training rows times the item x item matrix, the same seen filter, ``allowed`` mask and
fallback, so every family reaches the table, the evaluation and the gate by one path.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from include.recsys.scoring.bundle import ModelBundle

log = logging.getLogger(__name__)


TILE_USERS = 256  # users per score tile: 256 x 1024 float32 = 1 MiB stays in a 2 MiB L2

TILE_ITEMS = 1024


def topn_dense(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    seen: sp.csr_matrix,
    n: int,
    block_size: int = 1024,
    *,
    tile_items: int = TILE_ITEMS,
    threads: int | None = None,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-n items per user by dot product, excluding ``seen`` (rows aligned with users).

    ``allowed`` (bool per item, the business rules of :mod:`include.recsys.scoring.rules`): items
    where it is False are left out of the kernel's scan order altogether -- never scored,
    never selected -- so each list fills to n from the next best allowed items, and scoring
    gets cheaper, not dearer, with every excluded item.

    Users go in blocks of ``min(block_size, TILE_USERS)`` to a pool of ``threads`` workers
    (default: all cores), BLAS limited to one thread each. A worker scores its block
    ``tile_items`` items at a time (the tile stays in cache; items in decreasing-norm order,
    so strong candidates come first) and selects as it goes with the compiled kernel of
    :mod:`include.recsys.scoring.topk` (seen items masked from the CSR arrays, a threshold that skips
    almost every score, exact (score desc, item asc) order). Memory beyond the outputs: one
    tile and one candidate buffer per worker, whatever the number of users.
    Returns (items int32 (U, n), scores float32 (U, n)); -1 / -inf pad users with fewer than
    n unseen items. Ties are broken by lower item index.
    """
    from concurrent.futures import ThreadPoolExecutor

    import scipy.linalg.cython_blas  # noqa: F401  (the kernel's np.dot BLAS, limited below)
    from threadpoolctl import threadpool_limits

    from include.recsys.scoring.topk import score_block

    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if block_size < 1 or tile_items < 1:
        raise ValueError(f"block_size and tile_items must be >= 1, got {block_size}, {tile_items}")
    n_users, n_items = user_factors.shape[0], item_factors.shape[0]
    if seen.shape != (n_users, n_items):
        raise ValueError(f"seen has shape {seen.shape}, expected {(n_users, n_items)}")
    out_items = np.empty((n_users, n), dtype=np.int32)
    out_scores = np.empty((n_users, n), dtype=np.float32)
    if n_users == 0 or n == 0:
        return out_items, out_scores
    uf = np.ascontiguousarray(user_factors, dtype=np.float32)
    item_of, position, vf = _scan_order(item_factors, allowed)
    n_scan = len(item_of)
    seen = seen.tocsr()
    indptr = seen.indptr.astype(np.int64, copy=False)
    indices = seen.indices.astype(np.int32, copy=False)
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= n_items):
        raise ValueError(f"seen holds item indices outside [0, {n_items})")  # kernel: no checks
    rows = min(block_size, TILE_USERS)
    # candidate keys per user between compactions; never more than the catalog (+1: no
    # compaction at all when n >= n_items)
    cap = min(n + max(n, 128), n_scan + 1)
    starts = range(0, n_users, rows)

    def run(lo: int) -> None:
        hi = min(lo + rows, n_users)
        score_block(uf[lo:hi], vf, item_of, position, indptr[lo : hi + 1], indices, n,
                    tile_items, cap, out_items[lo:hi], out_scores[lo:hi])

    workers = max(1, min(threads or os.cpu_count() or 1, len(starts)))
    with threadpool_limits(1, "blas"):
        if workers == 1:
            for lo in starts:
                run(lo)
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="topn") as pool:
                list(pool.map(run, starts))
    return out_items, out_scores


#: bytes of one dense score block of :func:`topn_item_item` (users x items float32)
ITEM_ITEM_BLOCK_BYTES = 64 * 2**20


def topn_item_item(
    history: sp.csr_matrix,
    item_item: np.ndarray | sp.spmatrix,
    seen: sp.csr_matrix,
    n: int,
    block_size: int = 1024,
    *,
    allowed: np.ndarray | None = None,
    popularity: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-n items per user by ``history @ item_item``, excluding ``seen``.

    ``history`` (users x items): the users' training rows; ``item_item``: dense (EASE) or sparse
    (item-kNN). Users go in blocks sized so that one dense score block stays under
    :data:`ITEM_ITEM_BLOCK_BYTES`; the product is sparse x dense (or sparse x sparse), then
    :func:`include.recsys.scoring.topk.topk_block` (seen and not-``allowed`` items set to -inf,
    ties to the lower item index, the same order as :func:`topn_dense`). With a sparse
    ``item_item`` an item with no stored product entry has no evidence at all: it is never a
    model candidate (as in implicit's own ``recommend``), and when ``popularity`` is given such
    users' lists are filled up with the most popular unseen allowed items (score 0).
    Returns (items int32 (U, n), scores float32 (U, n)), -1 / -inf padded.
    """
    from include.recsys.scoring.topk import topk_block

    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    n_users, n_items = history.shape
    if item_item.shape != (n_items, n_items) or seen.shape != (n_users, n_items):
        raise ValueError(
            f"shapes do not agree: history {history.shape}, item_item {item_item.shape}, seen {seen.shape}"
        )
    out_items = np.full((n_users, n), -1, dtype=np.int32)
    out_scores = np.full((n_users, n), -np.inf, dtype=np.float32)
    if n_users == 0 or n == 0 or n_items == 0:
        return out_items, out_scores
    history = sp.csr_matrix(history, dtype=np.float32)
    seen = seen.tocsr()
    sparse = sp.issparse(item_item)
    s = sp.csr_matrix(item_item, dtype=np.float32) if sparse else np.asarray(item_item, dtype=np.float32)
    blocked = None if allowed is None else ~np.asarray(allowed, dtype=bool)
    rows = max(1, min(block_size, ITEM_ITEM_BLOCK_BYTES // (4 * n_items)))
    for lo in range(0, n_users, rows):
        hi = min(lo + rows, n_users)
        prod = history[lo:hi] @ s
        if sparse:
            block = np.full((hi - lo, n_items), -np.inf, dtype=np.float32)
            coo = prod.tocoo()
            block[coo.row, coo.col] = coo.data
        else:
            block = np.ascontiguousarray(prod, dtype=np.float32)
        if blocked is not None:
            block[:, blocked] = -np.inf
        sb = seen[lo:hi]
        topk_block(block, sb.indptr.astype(np.int64), sb.indices.astype(np.int32), n,
                   out_items[lo:hi], out_scores[lo:hi])
    if sparse and popularity is not None:
        _fill_popular(out_items, out_scores, seen, popularity, allowed)
    return out_items, out_scores


def _fill_popular(items: np.ndarray, scores: np.ndarray, seen: sp.csr_matrix, popularity: np.ndarray,
                  allowed: np.ndarray | None) -> None:
    """Fill the -1 tail of each row with the most popular items it has neither seen nor got
    already (in place, score 0): a user whose history reaches fewer than n items."""
    short = np.flatnonzero((items < 0).any(axis=1))
    if short.size == 0:
        return
    got = items[short]
    r, c = np.nonzero(got >= 0)
    extra = sp.csr_matrix((np.ones(r.size, np.float32), (r, got[r, c])), shape=(short.size, seen.shape[1]))
    exclude = (seen[short] + extra).tocsr()
    order = np.argsort(-np.asarray(popularity), kind="stable")
    if allowed is not None:
        order = order[np.asarray(allowed, dtype=bool)[order]]
    fill = ranked_filtered(order, exclude, items.shape[1])
    missing = got < 0
    pos = np.cumsum(missing, axis=1) - 1  # j-th missing slot takes the j-th fill item
    take = np.where(missing, fill[np.arange(short.size)[:, None], np.maximum(pos, 0)], got)
    ok = missing & (take >= 0)
    items[short] = take
    sc = scores[short]
    sc[ok] = 0.0
    scores[short] = sc


def _scan_order(item_factors: np.ndarray, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(item of each scan position, scan position of each item, the factors in scan order).

    Items go by decreasing norm: the first tile then holds most users' strong candidates, the
    threshold starts high and later tiles add few (ranks still use the original ids). Items
    ``allowed`` excludes are left out; their position is past the last tile, so their seen
    entries sort last and are never reached."""
    n_items = item_factors.shape[0]
    if allowed is None:
        scan = np.arange(n_items)
    else:
        allowed = np.asarray(allowed, dtype=bool)
        if allowed.shape != (n_items,):
            raise ValueError(f"allowed has shape {allowed.shape}, expected ({n_items},)")
        scan = np.flatnonzero(allowed)
    order = np.argsort(-np.linalg.norm(item_factors[scan], axis=1), kind="stable")
    item_of = scan[order].astype(np.int32)
    position = np.full(n_items, len(item_of), dtype=np.int32)
    position[item_of] = np.arange(len(item_of), dtype=np.int32)
    return item_of, position, np.ascontiguousarray(item_factors[item_of], dtype=np.float32)


def ranked_filtered(order: np.ndarray, seen: sp.csr_matrix, n: int) -> np.ndarray:
    """Per row of ``seen``: the first n items of the global ``order`` that the row has not seen.

    ``order`` is a permutation of all item indices (e.g. by decreasing popularity), or of a
    subset of them (the allowed items: the others are never returned). For a row
    whose seen items sit at sorted positions ``s_0 < s_1 < ...`` of ``order``, the j-th unseen
    position is ``j + #{i : s_i - i <= j}``: one ``searchsorted`` over combined
    ``row * (n_items + 1) + (s_i - i)`` keys answers every (row, j). Only seen items at
    positions ``< m - 1 + len(row)`` (``m = min(n, n_items)``) can count for ``j < m`` (for the
    others ``s_i - i > m - 1``), and they are the first ones of the row in position order, so
    the others are dropped before the sort: for a popularity order that is most of them.
    Memory is O(nnz(seen) + rows x n) however many items a row has seen. Returns int32,
    -1 padded.
    """
    n_rows, n_items = seen.shape
    out = np.full((n_rows, n), -1, dtype=np.int32)
    if n == 0 or n_rows == 0 or n_items == 0:
        return out
    order = np.asarray(order, dtype=np.int64)
    n_order = len(order)
    m = min(n, n_order)
    if m == 0:
        return out
    position = np.full(n_items, n_items, dtype=np.int64)  # item -> position in `order`
    position[order] = np.arange(n_order, dtype=np.int64)  # (n_items: not in it, never counts)
    seen = seen.tocsr()
    indptr = seen.indptr.astype(np.int64)
    row_len = np.diff(indptr)
    pos = position[seen.indices]
    keep = (pos < np.repeat(m - 1 + row_len, row_len)) & (pos < n_order)  # the entries that can count
    pos = pos[keep]
    kept = np.concatenate([[0], np.cumsum(keep)])
    row_start = kept[indptr[:-1]]  # rows of the kept entries stay grouped, in row order
    seen_rows = np.repeat(np.arange(n_rows, dtype=np.int64), kept[indptr[1:]] - row_start)
    stride = n_items + 1
    # seen positions of each row sorted (rows stay grouped), minus their rank in the row
    keys = seen_rows * stride + pos
    keys.sort()
    keys -= np.arange(keys.size, dtype=np.int64) - row_start[seen_rows]  # non-decreasing
    j = np.arange(m, dtype=np.int64)
    query = np.arange(n_rows, dtype=np.int64)[:, None] * stride + j[None, :]
    target = j[None, :] + np.searchsorted(keys, query, side="right") - row_start[:, None]
    ok = target < n_order
    head = out[:, :m]
    head[ok] = order[target[ok]]
    return out


@dataclass
class Recommendations:
    """Top-n per requested user, in the bundle's item index space."""

    user_ids: pd.Index
    items: np.ndarray  # (U, n) int32, -1 padded
    scores: np.ndarray  # (U, n) float32
    from_model: np.ndarray  # (U,) bool: model (True) or popularity fallback (False)

    def item_ids(self, bundle: ModelBundle) -> np.ndarray:
        """External item ids (object/str array), None where padded."""
        flat = self.items.ravel()
        ids = np.asarray(bundle.item_ids, dtype=object)[np.maximum(flat, 0)]
        ids[flat < 0] = None
        return ids.reshape(self.items.shape)

    def to_frame(self, bundle: ModelBundle, **constants: str) -> pd.DataFrame:
        """Long format: user_id, rank (1..), item_id, score, source, then one column per
        ``constants`` entry (e.g. ``model_name=...``); padded slots dropped.

        The id columns are Arrow ``take``s of the users' and items' id arrays (no Python string
        per row: the same string columns as a pandas build; 0.39 -> 0.08 s with the constant
        columns for a 70k-user x 20 shard)."""
        import pyarrow as pa

        n = self.items.shape[1]
        valid = (self.items >= 0).ravel()
        rows = np.repeat(np.arange(len(self.user_ids), dtype=np.int64), n)[valid]
        columns = {
            "user_id": pa.array(self.user_ids).take(rows),
            "rank": np.tile(np.arange(1, n + 1, dtype=np.int16), len(self.user_ids))[valid],
            "item_id": pa.array(bundle.item_ids).take(self.items.ravel()[valid]),
            "score": self.scores.ravel()[valid].astype(np.float32, copy=False),
            "source": pa.array(["fallback", "model"]).take(self.from_model[rows].astype(np.int8)),
        }
        zeros = np.zeros(len(rows), np.int8)
        for name, value in constants.items():
            columns[name] = pa.array([value]).take(zeros)
        return pa.table(columns).to_pandas()


def seen_matrix(bundle: ModelBundle, users: pd.Index, seen: pd.DataFrame | sp.spmatrix) -> sp.csr_matrix:
    """CSR (len(users) x bundle items) of the (user_id, item_id) pairs in ``seen``.

    ``seen`` may already be that matrix (built from integer codes by the caller): it is checked
    for shape and returned as a canonical CSR.
    """
    if sp.issparse(seen):
        want = (len(users), len(bundle.item_ids))
        if seen.shape != want:
            raise ValueError(f"seen matrix has shape {seen.shape}, expected (users, model items) = {want}")
        m = sp.csr_matrix(seen, dtype=np.float32)
        m.sum_duplicates()
        m.sort_indices()
        return m
    r = users.get_indexer(seen["user_id"])
    c = bundle.item_ids.get_indexer(seen["item_id"])
    ok = (r >= 0) & (c >= 0)
    m = sp.csr_matrix(
        (np.ones(int(ok.sum()), np.float32), (r[ok], c[ok])),
        shape=(len(users), len(bundle.item_ids)),
    )
    m.sum_duplicates()
    m.sort_indices()
    return m


def recommend(
    bundle: ModelBundle,
    users: pd.Index,
    seen: pd.DataFrame | sp.spmatrix,
    n: int,
    *,
    block_size: int = 1024,
    user_segments: pd.Series | None = None,
    allowed: np.ndarray | None = None,
) -> Recommendations:
    """Top-n for each external user id; users unknown to the model get the popularity fallback.

    ``seen`` holds the (user_id, item_id) pairs to exclude (what each user already interacted
    with), or the CSR :func:`seen_matrix` would build from them; it applies to model and
    fallback rows alike. With ``user_segments`` (segment by user_id) an unknown user whose
    segment the model knows gets that segment's popularity list; everyone else unknown gets
    global popularity. ``allowed`` (bool per bundle item, see :mod:`include.recsys.scoring.rules`):
    only those items are recommended, by the model and the fallback alike.
    """
    t0 = time.perf_counter()
    bundle.verify_id_maps()
    users = pd.Index(users)
    seen_csr = seen_matrix(bundle, users, seen)
    uidx = bundle.user_ids.get_indexer(users)
    known = uidx >= 0
    items = np.full((len(users), n), -1, dtype=np.int32)
    scores = np.full((len(users), n), -np.inf, dtype=np.float32)
    if known.any() and bundle.kind != "als":
        items[known], scores[known] = topn_item_item(
            bundle.user_items[uidx[known]], bundle.item_item, seen_csr[known], n, block_size,
            allowed=allowed, popularity=bundle.item_popularity,
        )
    elif known.any():
        ki, ks = topn_dense(
            bundle.user_factors[uidx[known]], bundle.item_factors, seen_csr[known], n, block_size,
            allowed=allowed,
        )
        items[known], scores[known] = ki, ks
    if (~known).any():
        cold = np.flatnonzero(~known)
        if user_segments is not None and bundle.segment_ids is not None:
            segs = user_segments.reindex(users[cold]).to_numpy(dtype=object)
        else:
            segs = np.full(len(cold), None, dtype=object)
        for seg in pd.unique(segs):
            rows = cold[pd.isna(segs)] if pd.isna(seg) else cold[segs == seg]
            pop = bundle.fallback_popularity(None if pd.isna(seg) else seg)
            order = np.argsort(-pop, kind="stable")
            if allowed is not None:
                order = order[np.asarray(allowed, dtype=bool)[order]]
            fi = ranked_filtered(order, seen_csr[rows], n)
            norm = pop.astype(np.float32) / max(float(pop.max()), 1.0)
            items[rows] = fi
            scores[rows] = np.where(fi >= 0, norm[np.maximum(fi, 0)], -np.inf)
    dt = time.perf_counter() - t0
    log.info(
        "scored %d users (%d by the model, %d by fallback) x %d items, top %d, in %.2fs "
        "(%.0f users/s)",
        len(users), int(known.sum()), int((~known).sum()), len(bundle.item_ids), n, dt,
        len(users) / max(dt, 1e-9),
    )
    return Recommendations(users, items, scores, known)
