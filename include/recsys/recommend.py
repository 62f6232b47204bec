"""Batch top-N scoring with seen-item filtering and a popularity fallback for unknown users.

A :class:`ModelBundle` is everything needed to recommend: factors, the external ids of its
users and items (index order) and the item popularity of its training data. It is stored as
plain ``.npz`` + Parquet (loaded with ``allow_pickle=False``) and is what MLflow registers.

Scoring is exact: blocks of users on all cores, each scored against cache-sized item tiles
(float32 GEMM, BLAS) fused with a thresholded top-N selection (seen items masked straight
from the CSR arrays, no full sort; see :mod:`include.recsys.topk`). Memory beyond the
output is one tile and one candidate buffer per worker, whatever the number of users.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

log = logging.getLogger(__name__)

BUNDLE_FORMAT = 1


class IdMapMismatch(ValueError):
    """The factors of a bundle were trained with other id maps than the ones beside them."""


def id_maps_sha256(user_ids: pd.Index, item_ids: pd.Index) -> str:
    """Content hash of the (user, item) id maps in index order: the version of the embeddings."""
    import hashlib

    h = hashlib.sha256()
    for name, ids in (("users", user_ids), ("items", item_ids)):
        h.update(f"{name}:{len(ids)}\n".encode())
        # object array first: iterating an Arrow-backed Index yields its strings one by one (slow)
        h.update("\x1f".join(map(str, np.asarray(ids, dtype=object))).encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclass
class ModelBundle:
    user_ids: pd.Index
    item_ids: pd.Index
    user_factors: np.ndarray  # (n_users, f) float32
    item_factors: np.ndarray  # (n_items, f) float32
    item_popularity: np.ndarray  # (n_items,) distinct training users per item
    seen: sp.csr_matrix | None = None  # (n_users, n_items) training interactions, for filtering
    segment_ids: pd.Index | None = None  # user segments seen in training (e.g. regions)
    segment_popularity: np.ndarray | None = None  # (n_segments, n_items) distinct users per item
    # hash of the id maps the factors were trained with (set by the trainer, stored with the
    # factors, checked on load and before scoring): factors are never read through another
    # run's id maps. None: not bound yet (a hand-made bundle); save() binds the current ids.
    id_maps_hash: str | None = None

    def verify_id_maps(self) -> None:
        """Raise :class:`IdMapMismatch` unless ids, factor shapes and the bound hash agree."""
        if self.user_factors.shape[0] != len(self.user_ids) or self.item_factors.shape[0] != len(self.item_ids):
            raise IdMapMismatch(
                f"factors ({self.user_factors.shape[0]} users x {self.item_factors.shape[0]} items) "
                f"do not match the id maps ({len(self.user_ids)} users, {len(self.item_ids)} items)"
            )
        if self.id_maps_hash is None:
            return
        actual = id_maps_sha256(self.user_ids, self.item_ids)
        if actual != self.id_maps_hash:
            raise IdMapMismatch(
                f"the factors were trained with id maps {self.id_maps_hash[:12]}..., but the bundle's "
                f"id maps hash to {actual[:12]}... (id maps of another run?)"
            )

    @property
    def popular_order(self) -> np.ndarray:
        """Item indices by decreasing popularity (ties: lower index first)."""
        return np.argsort(-self.item_popularity, kind="stable")

    def fallback_popularity(self, segment: str | None = None) -> np.ndarray:
        """Item popularity of a segment (the global one for None or an unknown segment)."""
        if segment is not None and self.segment_ids is not None:
            pos = self.segment_ids.get_indexer([segment])[0]
            if pos >= 0:
                return self.segment_popularity[pos]
        return self.item_popularity

    def fallback_list(
        self, n: int, segment: str | None = None, allowed: np.ndarray | None = None
    ) -> pd.DataFrame:
        """The top-n fallback list (rank, item_id, score in [0, 1]) of a segment or global;
        only ``allowed`` items (bool per item, the business rules) when given."""
        pop = self.fallback_popularity(segment)
        order = np.argsort(-pop, kind="stable")
        if allowed is not None:
            order = order[np.asarray(allowed, dtype=bool)[order]]
        order = order[:n]
        return pd.DataFrame(
            {
                "rank": np.arange(1, len(order) + 1, dtype=np.int16),
                "item_id": self.item_ids[order],
                "score": (pop[order] / max(float(pop.max()), 1.0)).astype(np.float32),
            }
        )

    def save(self, folder: Path | str) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.verify_id_maps()
        if self.id_maps_hash is None:
            self.id_maps_hash = id_maps_sha256(self.user_ids, self.item_ids)
        arrays = {
            "user_factors": self.user_factors,
            "item_factors": self.item_factors,
            "id_maps_sha256": np.array(self.id_maps_hash),
        }
        if self.seen is not None:
            arrays.update(seen_indptr=self.seen.indptr, seen_indices=self.seen.indices)
        if self.segment_ids is not None:
            arrays.update(segment_popularity=self.segment_popularity)
            pd.DataFrame({"segment": self.segment_ids.astype(str)}).to_parquet(
                folder / "segments.parquet", index=False
            )
        np.savez(folder / "factors.npz", **arrays)
        pd.DataFrame({"user_id": self.user_ids}).to_parquet(folder / "users.parquet", index=False)
        pd.DataFrame({"item_id": self.item_ids, "popularity": self.item_popularity}).to_parquet(
            folder / "items.parquet", index=False
        )
        meta = {
            "format": BUNDLE_FORMAT,
            "n_users": len(self.user_ids),
            "n_items": len(self.item_ids),
            "factors": int(self.user_factors.shape[1]),
        }
        (folder / "bundle.json").write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: Path | str) -> ModelBundle:
        folder = Path(folder)
        with np.load(folder / "factors.npz", allow_pickle=False) as z:
            uf, vf = z["user_factors"], z["item_factors"]
            seen = None
            if "seen_indptr" in z.files:
                indices = z["seen_indices"]
                seen = sp.csr_matrix(
                    (np.ones(indices.size, np.float32), indices, z["seen_indptr"]),
                    shape=(uf.shape[0], vf.shape[0]),
                )
            seg_pop = z["segment_popularity"] if "segment_popularity" in z.files else None
            stored_hash = str(z["id_maps_sha256"]) if "id_maps_sha256" in z.files else None
        items = pd.read_parquet(folder / "items.parquet")
        seg_ids = (
            pd.Index(pd.read_parquet(folder / "segments.parquet")["segment"])
            if seg_pop is not None
            else None
        )
        bundle = cls(
            user_ids=pd.Index(pd.read_parquet(folder / "users.parquet")["user_id"]),
            item_ids=pd.Index(items["item_id"]),
            user_factors=np.ascontiguousarray(uf, dtype=np.float32),
            item_factors=np.ascontiguousarray(vf, dtype=np.float32),
            item_popularity=items["popularity"].to_numpy(),
            seen=seen,
            segment_ids=seg_ids,
            segment_popularity=seg_pop,
            id_maps_hash=stored_hash,  # None: a bundle saved before hashes existed
        )
        try:
            bundle.verify_id_maps()
        except IdMapMismatch as exc:
            raise IdMapMismatch(f"bundle {folder}: {exc}") from None
        return bundle

    def seen_pairs(self, users: pd.Index) -> pd.DataFrame:
        """The training (user_id, item_id) pairs of the given users (empty without ``seen``)."""
        if self.seen is None:
            return pd.DataFrame({"user_id": [], "item_id": []})
        uidx = self.user_ids.get_indexer(pd.Index(users))
        sub = self.seen[uidx[uidx >= 0]].tocoo()
        return pd.DataFrame(
            {
                "user_id": self.user_ids[uidx[uidx >= 0][sub.row]],
                "item_id": self.item_ids[sub.col],
            }
        )


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

    ``allowed`` (bool per item, the business rules of :mod:`include.recsys.rules`): items
    where it is False are left out of the kernel's scan order altogether -- never scored,
    never selected -- so each list fills to n from the next best allowed items, and scoring
    gets cheaper, not dearer, with every excluded item.

    Users go in blocks of ``min(block_size, TILE_USERS)`` to a pool of ``threads`` workers
    (default: all cores), BLAS limited to one thread each. A worker scores its block
    ``tile_items`` items at a time (the tile stays in cache; items in decreasing-norm order,
    so strong candidates come first) and selects as it goes with the compiled kernel of
    :mod:`include.recsys.topk` (seen items masked from the CSR arrays, a threshold that skips
    almost every score, exact (score desc, item asc) order). Memory beyond the outputs: one
    tile and one candidate buffer per worker, whatever the number of users.
    Returns (items int32 (U, n), scores float32 (U, n)); -1 / -inf pad users with fewer than
    n unseen items. Ties are broken by lower item index.
    """
    from concurrent.futures import ThreadPoolExecutor

    import scipy.linalg.cython_blas  # noqa: F401  (the kernel's np.dot BLAS, limited below)
    from threadpoolctl import threadpool_limits

    from include.recsys.topk import score_block

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
    if allowed is None:
        scan = np.arange(n_items)
    else:
        allowed = np.asarray(allowed, dtype=bool)
        if allowed.shape != (n_items,):
            raise ValueError(f"allowed has shape {allowed.shape}, expected ({n_items},)")
        scan = np.flatnonzero(allowed)
    # items by decreasing norm: the first tile then holds most users' strong candidates, the
    # threshold starts high and later tiles add few (ranks still use the original ids)
    order = np.argsort(-np.linalg.norm(item_factors[scan], axis=1), kind="stable")
    item_of = scan[order].astype(np.int32)
    n_scan = len(item_of)
    # excluded items sit past the last tile: their seen entries sort last and are never reached
    position = np.full(n_items, n_scan, dtype=np.int32)
    position[item_of] = np.arange(n_scan, dtype=np.int32)
    vf = np.ascontiguousarray(item_factors[item_of], dtype=np.float32)
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

    def to_frame(self, bundle: ModelBundle) -> pd.DataFrame:
        """Long format: user_id, rank (1..), item_id, score, source; padded slots dropped."""
        n = self.items.shape[1]
        valid = (self.items >= 0).ravel()
        return pd.DataFrame(
            {
                "user_id": np.repeat(np.asarray(self.user_ids), n)[valid],
                "rank": np.tile(np.arange(1, n + 1, dtype=np.int16), len(self.user_ids))[valid],
                "item_id": bundle.item_ids[self.items.ravel()[valid]],
                "score": self.scores.ravel()[valid].astype(np.float32),
                "source": np.where(np.repeat(self.from_model, n)[valid], "model", "fallback"),
            }
        )


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
    global popularity. ``allowed`` (bool per bundle item, see :mod:`include.recsys.rules`):
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
    if known.any():
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
