"""Offline top-N ranking metrics for implicit-feedback recommenders (vectorized).

This module is the single place where the pipeline's offline metrics are defined.
Everything is computed with NumPy array operations: there is no Python loop over
users (only over the requested cut-offs ``ks``).

Inputs
------
``top_items``
    ``int`` array of shape ``(n_users, N)``. Row ``u`` holds the item indices
    recommended to user ``u`` in rank order (rank 1 first). Rows with fewer than
    ``N`` recommendations are right-padded with ``-1``; a row of only ``-1`` means
    the user received no recommendations. Items are assumed to be unique within a
    row (duplicates are *not* checked for; a duplicated relevant item would be
    counted as two hits).
``relevant``
    ``scipy.sparse.csr_matrix`` of shape ``(n_users, n_items)`` holding the holdout
    interactions. Binary relevance: every stored entry with a nonzero value is a
    relevant item; the stored value itself is ignored. ``|rel_u|`` is the number of
    relevant items of user ``u``.

Which users are averaged
------------------------
* Users whose ``relevant`` row is empty are **excluded** from every average and
  from coverage; they are counted in ``n_users_no_holdout``.
* Users with holdout items but no recommendations (row of ``-1``) are **included**
  and score 0 on every per-user metric; they are counted in ``n_users_no_recs``.
* All other users with holdout items are included. ``n_users_evaluated`` is the
  number of users with a nonempty ``relevant`` row (it includes ``n_users_no_recs``).

Per-user metric definitions (rank ``r`` starts at 1; ``hit(r)`` is 1 when the item
at rank ``r`` is relevant; only real recommendations count, so when ``k`` exceeds
``N`` or the catalog size, the missing positions are simply misses while the
denominators below are unchanged)
------------------------------------------------------------------------------------
* ``hits@k``       = sum_{r<=k} hit(r)
* ``precision@k``  = hits@k / k. The denominator is ``k`` itself, **not** the number
  of recommendations actually shown, so a user with fewer than ``k``
  recommendations (or ``k > N``) cannot reach 1.
* ``recall@k``     = hits@k / |rel_u|
* ``ndcg@k``       = DCG@k / IDCG@k, with binary gain and discount
  1 / log2(r + 1): ``DCG@k = sum_{r<=k} hit(r) / log2(r + 1)`` and
  ``IDCG@k = sum_{r=1}^{min(k, |rel_u|)} 1 / log2(r + 1)``.
* ``map@k``        = AP@k = (sum_{r<=k, hit(r)=1} precision@r) / min(k, |rel_u|).
  (``map@k`` in the summary is the mean of AP@k over evaluated users.)
* ``mrr@k``        = 1 / (rank of the first hit) if that rank is <= k, else 0.
* ``hit_rate@k``   = 1 if hits@k > 0 else 0.

Aggregate metric
----------------
* ``coverage@k``   = |distinct items in the top-k lists of all evaluated users| /
  ``n_catalog`` (``n_catalog`` defaults to ``relevant.shape[1]``). ``-1`` padding is
  not an item. Users without holdout do not contribute.

The summary value of every per-user metric is its arithmetic mean over the
``n_users_evaluated`` users (macro average); it is NaN when no user is evaluated.

Implementation
--------------
Membership of ``top_items[u, r]`` in row ``u`` of ``relevant`` is decided for all
``(u, r)`` at once with one ``np.searchsorted`` of the keys ``u * n_items + item``
against the same keys of the canonical (sorted, deduplicated) CSR. The per-user
metrics are then accumulated from the coordinates of the hits with ``np.bincount``.
Peak extra memory is a few ``int64`` arrays of shape ``(n_evaluated_users, min(N,
max(ks)))`` (about 80 MB each for 100k users x 100).

How this differs from other libraries
-------------------------------------
* ``implicit.evaluation.ranking_metrics_at_k`` (implicit 0.7.3; the ``.pyx`` source
  is not shipped in the wheel, this was read from the upstream source and checked
  against the installed binary in ``tests/unit/test_metrics.py``): it calls
  ``model.recommend(..., N=K)`` itself (filtering the training items) for a single
  ``K``, and silently skips users without test items, reporting no user counts.
  Its ``"precision"`` is ``sum_u hits@K / sum_u min(K, |rel_u|)`` -- both a different
  denominator (``min(K, |rel_u|)`` instead of ``K``) and a micro average (ratio of
  sums, not a mean over users); it is therefore neither our precision@K nor our
  recall@K. Its ``"map"`` normalizes AP by ``min(K, |rel_u|)`` and its ``"ndcg"``
  uses binary gain, 1/log2(r + 1) and an ideal DCG over ``min(K, |rel_u|)`` items,
  both macro-averaged over users with test items: these match our ``map@K`` and
  ``ndcg@K`` when given the same recommendation lists. It also reports a truncated
  ``"auc"`` (not provided here) and no recall, MRR, hit rate or coverage.
* Microsoft Recommenders (``recommenders.evaluation.python_evaluation``): works on
  pandas DataFrames and averages over the users present in *both* the truth and the
  prediction frames, so users with holdout but no recommendations are dropped
  instead of scoring 0. ``precision_at_k`` divides by ``k`` and ``recall_at_k`` by
  the number of true items (same as here). In its current source ``map_at_k``
  divides by ``min(|rel_u|, k)`` (same as here) while ``map`` divides by ``|rel_u|``;
  older releases differ, so check the installed version. ``ndcg_at_k`` defaults to
  a natural-log discount, which gives the same ratio DCG/IDCG as log2.
* ranx: ``precision@k`` divides by ``k`` (same as here) and ``ndcg@k`` (Jarvelin
  formulation, binary judgments) matches ours, but ``map@k`` divides the sum of
  precisions by the total number of relevant documents ``|rel_u|``, not by
  ``min(k, |rel_u|)``, so ranx's ``map@k`` is <= ours when ``|rel_u| > k``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["PER_USER_METRICS", "MetricsResult", "popularity_topn", "ranking_metrics"]

#: Per-user metrics, in the column order used by ``MetricsResult.per_user``.
PER_USER_METRICS: tuple[str, ...] = ("precision", "recall", "ndcg", "map", "mrr", "hit_rate")


@dataclass(frozen=True)
class MetricsResult:
    """Result of :func:`ranking_metrics`.

    Attributes:
        summary: ``"<metric>@<k>"`` -> mean over evaluated users for every metric in
            :data:`PER_USER_METRICS`, ``"coverage@<k>"``, and the integer counts
            ``"n_users_evaluated"``, ``"n_users_no_holdout"``, ``"n_users_no_recs"``.
        per_user: one row per evaluated user (users with holdout items, in
            increasing user order): column ``user_index`` (row index into the
            inputs) and one ``float64`` column ``"<metric>@<k>"`` per metric and k.
            Intended for paired comparisons between models.
    """

    summary: dict[str, float] = field(default_factory=dict)
    per_user: pd.DataFrame = field(default_factory=pd.DataFrame)

    def to_dict(self) -> dict[str, float]:
        """Return a flat, JSON-serialisable copy of :attr:`summary`.

        Suitable for ``mlflow.log_metrics`` or a JSON report; ``per_user`` is not
        included (persist it separately, e.g. as parquet).
        """
        return dict(self.summary)


def _binary_csr(matrix: sp.spmatrix | sp.sparray, name: str) -> sp.csr_matrix:
    """Copy ``matrix`` to a canonical CSR (sorted, no duplicates, no explicit zeros)."""
    if not sp.issparse(matrix):
        raise TypeError(f"{name} must be a scipy.sparse matrix, got {type(matrix).__name__}")
    csr = sp.csr_matrix(matrix, copy=True)
    csr.sum_duplicates()  # also sorts indices
    csr.eliminate_zeros()
    return csr


def _row_ids(indptr: np.ndarray) -> np.ndarray:
    """Row index of every stored entry of a CSR matrix with the given ``indptr``."""
    return np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))


def _membership(csr: sp.csr_matrix, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Whether ``items[i, j]`` is a stored entry of row ``rows[i]`` of ``csr``.

    ``csr`` must be canonical (see :func:`_binary_csr`). Negative or out-of-range
    items are never members. Entries are matched through the combined key
    ``row * n_cols + item``, which is globally sorted for a canonical CSR, so one
    ``np.searchsorted`` answers all queries.
    """
    n_cols = csr.shape[1]
    out = np.zeros(items.shape, dtype=bool)
    if items.size == 0 or csr.nnz == 0:
        return out
    keys = _row_ids(csr.indptr) * n_cols + csr.indices.astype(np.int64)
    query = rows.astype(np.int64)[:, None] * n_cols + items
    # Padding / out-of-range items get key -1, which matches nothing (keys are >= 0).
    query[(items < 0) | (items >= n_cols)] = -1
    pos = np.searchsorted(keys, query)
    np.minimum(pos, keys.size - 1, out=pos)
    out = keys[pos] == query
    return out


def _validate_ks(ks: Sequence[int]) -> list[int]:
    """Return the distinct cut-offs in their given order; each must be an int >= 1."""
    out: list[int] = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"every k must be a positive integer, got {k!r}")
        if int(k) not in out:
            out.append(int(k))
    if not out:
        raise ValueError("ks must contain at least one cut-off")
    return out


def ranking_metrics(
    top_items: np.ndarray,
    relevant: sp.csr_matrix,
    ks: Sequence[int],
    *,
    n_catalog: int | None = None,
) -> MetricsResult:
    """Compute top-N ranking metrics for every cut-off in ``ks``.

    Definitions (rank ``r`` starts at 1, binary relevance, ``|rel_u|`` = number of
    holdout items of user ``u``; see the module docstring for the full text):

    * precision@k = hits@k / k  (divides by k, not by the number of recs shown)
    * recall@k    = hits@k / |rel_u|
    * ndcg@k      = sum_{r<=k} hit(r)/log2(r+1) / sum_{r<=min(k,|rel_u|)} 1/log2(r+1)
    * map@k       = sum_{r<=k, hit(r)} precision@r / min(k, |rel_u|)
    * mrr@k       = 1 / rank of the first hit within k, else 0
    * hit_rate@k  = 1 if any hit within k, else 0
    * coverage@k  = distinct items in the top-k of all evaluated users / n_catalog

    ``k`` may exceed ``N`` or the catalog size: only the available recommendations
    count, the denominators are unchanged. Users with an empty ``relevant`` row are
    excluded (``n_users_no_holdout``); users with holdout items and a row of ``-1``
    score 0 and are counted in ``n_users_no_recs``. Items are assumed unique within
    each row of ``top_items``.

    Args:
        top_items: ``(n_users, N)`` integer array of recommended item indices in
            rank order, ``-1``-padded.
        relevant: ``(n_users, n_items)`` sparse matrix of holdout interactions; any
            stored nonzero is relevant.
        ks: cut-offs (positive integers; duplicates are ignored).
        n_catalog: catalog size for coverage; defaults to ``relevant.shape[1]``.
            Every recommended item must be ``< max(n_catalog, n_items)``.

    Returns:
        A :class:`MetricsResult` with the macro-averaged ``summary`` and the
        ``per_user`` table.

    Raises:
        TypeError: if ``relevant`` is not sparse.
        ValueError: on shape mismatches, items outside ``[-1, catalog)``, or bad ``ks``.
    """
    ks_list = _validate_ks(ks)
    rel = _binary_csr(relevant, "relevant")
    n_users, n_items = rel.shape
    catalog = n_items if n_catalog is None else int(n_catalog)
    if catalog < 1:
        raise ValueError(f"n_catalog must be >= 1, got {n_catalog}")

    recs = np.asarray(top_items)
    if recs.ndim != 2 or recs.shape[0] != n_users:
        raise ValueError(
            f"top_items must have shape (n_users={n_users}, N), got {recs.shape}"
        )
    if recs.size and not np.issubdtype(recs.dtype, np.integer):
        raise ValueError(f"top_items must be an integer array, got dtype {recs.dtype}")
    if recs.size:
        lo, hi = int(recs.min()), int(recs.max())
        if lo < -1 or hi >= max(catalog, n_items):
            raise ValueError(
                f"top_items values must lie in [-1, {max(catalog, n_items)}), "
                f"got range [{lo}, {hi}]"
            )

    n_rel_all = np.diff(rel.indptr)
    eval_users = np.flatnonzero(n_rel_all > 0)
    n_eval = int(eval_users.size)
    n_rel = n_rel_all[eval_users].astype(np.float64)

    # Only the first min(N, max k) rank columns can ever matter.
    depth = min(recs.shape[1], max(ks_list))
    recs_eval = recs[eval_users, :depth]
    n_no_recs = int(np.count_nonzero(~(recs[eval_users] >= 0).any(axis=1)))

    # Hits are sparse, so work on their (user, rank) coordinates. np.nonzero returns
    # them in row-major order: grouped by user, increasing rank within a user.
    hit_user, hit_col = np.nonzero(_membership(rel, eval_users, recs_eval))
    hits_per_user = np.bincount(hit_user, minlength=n_eval)
    first_of_user = np.cumsum(hits_per_user) - hits_per_user  # offset of a user's 1st hit
    ordinal = np.arange(hit_user.size) - first_of_user[hit_user] + 1  # hits so far
    hit_rank = hit_col.astype(np.float64) + 1.0
    hit_gain = 1.0 / np.log2(hit_rank + 1.0)  # DCG term of each hit
    hit_prec = ordinal / hit_rank  # precision@r at each hit rank r (AP terms)
    has_hit = hits_per_user > 0
    first_hit_rank = np.full(n_eval, np.inf)
    first_hit_rank[has_hit] = hit_rank[first_of_user[has_hit]]
    # ideal_dcg[m - 1] = sum_{r=1}^{m} 1/log2(r+1) for m = 1..max(ks)
    ideal_dcg = np.cumsum(1.0 / np.log2(np.arange(2, max(ks_list) + 2, dtype=np.float64)))

    # Coverage: first (0-based) rank column at which each item appears for any evaluated
    # user. Loop over rank columns in reverse (not over users) so the smallest wins;
    # -1 padding goes to a spare slot at the end.
    n_slots = max(catalog, n_items)
    first_col = np.full(n_slots + 1, np.iinfo(np.int64).max, dtype=np.int64)
    for c in range(depth - 1, -1, -1):
        first_col[np.where(recs_eval[:, c] >= 0, recs_eval[:, c], n_slots)] = c
    first_col = first_col[:n_slots]

    summary: dict[str, float] = {}
    columns: dict[str, np.ndarray] = {"user_index": eval_users.astype(np.int64)}
    for k in ks_list:
        in_k = hit_col < k
        users_k = hit_user[in_k]
        hits_k = np.bincount(users_k, minlength=n_eval).astype(np.float64)
        dcg_k = np.bincount(users_k, weights=hit_gain[in_k], minlength=n_eval)
        ap_sum_k = np.bincount(users_k, weights=hit_prec[in_k], minlength=n_eval)
        n_ideal = np.minimum(n_rel, k)
        values = {
            "precision": hits_k / k,
            "recall": hits_k / n_rel,
            "ndcg": dcg_k / ideal_dcg[n_ideal.astype(np.int64) - 1],
            "map": ap_sum_k / n_ideal,
            "mrr": np.where(first_hit_rank <= k, 1.0 / first_hit_rank, 0.0),
            "hit_rate": (hits_k > 0).astype(np.float64),
        }
        for name in PER_USER_METRICS:
            key = f"{name}@{k}"
            columns[key] = values[name]
            summary[key] = float(values[name].mean()) if n_eval else float("nan")
        summary[f"coverage@{k}"] = float(np.count_nonzero(first_col < k)) / catalog

    summary["n_users_evaluated"] = n_eval
    summary["n_users_no_holdout"] = int(n_users - n_eval)
    summary["n_users_no_recs"] = n_no_recs
    return MetricsResult(summary=summary, per_user=pd.DataFrame(columns))


def popularity_topn(
    train: sp.csr_matrix,
    users: np.ndarray,
    n: int,
    *,
    filter_seen: bool = True,
) -> np.ndarray:
    """Most-popular baseline: the global top-``n`` items for each user in ``users``.

    Popularity of an item is the number of distinct users with a stored nonzero
    entry for it in ``train``; ties are broken by the lower item index. Every item
    of the catalog (``train.shape[1]``) is rankable, including never-seen ones (they
    come last, by index). With ``filter_seen`` the items a user has in ``train`` are
    removed and the next most popular items move up, so the user still gets ``n``
    items when the catalog allows; otherwise the row is padded with ``-1``.

    Vectorized: for user ``u`` with seen popularity positions ``s_0 < s_1 < ...``
    (0-based positions in the global popularity order), the ``j``-th unseen position
    is ``j + #{i : s_i - i <= j}``; the counts come from one ``np.searchsorted`` over
    combined ``row * (n_items + 1) + (s_i - i)`` keys. Memory is
    ``O(nnz(train[users]) + len(users) * n)`` however many items a user has seen.

    Args:
        train: ``(n_users, n_items)`` sparse interaction matrix.
        users: 1-d array of row indices into ``train`` (duplicates allowed).
        n: number of recommendations per user (>= 0).
        filter_seen: drop each user's training items from their list.

    Returns:
        ``(len(users), n)`` ``int64`` array of item indices in rank order,
        ``-1``-padded, in the format expected by :func:`ranking_metrics`.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    csr = _binary_csr(train, "train")
    n_users, n_items = csr.shape
    users_arr = np.asarray(users, dtype=np.int64).reshape(-1)
    if users_arr.size and (users_arr.min() < 0 or users_arr.max() >= n_users):
        raise ValueError(f"users must lie in [0, {n_users})")

    popularity = np.bincount(csr.indices, minlength=n_items)
    order = np.argsort(-popularity, kind="stable").astype(np.int64)  # ties: lower index first
    n_rows = users_arr.size
    out = np.full((n_rows, n), -1, dtype=np.int64)
    if n == 0 or n_rows == 0 or n_items == 0:
        return out

    if not filter_seen:
        m = min(n, n_items)
        out[:, :m] = order[:m]
        return out

    from include.recsys.recommend import ranked_filtered

    return ranked_filtered(order, csr[users_arr], n).astype(np.int64)
