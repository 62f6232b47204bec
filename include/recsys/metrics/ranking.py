"""Top-N accuracy and beyond-accuracy metrics of one model's ranked lists at every cut-off
(:func:`ranking_metrics`). Every definition, and how they differ from other libraries', is in
the package docstring (:mod:`include.recsys.metrics`); this module implements it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from include.recsys.core.ids import _binary_csr
from include.recsys.metrics.beyond import (
    DEFAULT_SHARES,
    _intra_list_diversity,
    _self_information,
    _unit_features,
    _validate_shares,
    gini,
    popularity_curve,
)

log = logging.getLogger(__name__)


#: Per-user accuracy metrics, in the column order used by ``MetricsResult.per_user``.
PER_USER_METRICS: tuple[str, ...] = ("precision", "recall", "ndcg", "map", "mrr", "hit_rate")


@dataclass(frozen=True)
class MetricsResult:
    """Result of :func:`ranking_metrics`.

    Attributes:
        summary: ``"<metric>@<k>"`` -> mean over evaluated users for every metric in
            :data:`PER_USER_METRICS`, ``"coverage@<k>"``, ``"gini@<k>"``, ``"novelty@<k>"``
            (with item popularity), ``"ild@<k>"`` (with item features), and the integer
            counts ``"n_users_evaluated"``, ``"n_users_no_holdout"``, ``"n_users_no_recs"``.
        per_user: one row per evaluated user (users with holdout items, in
            increasing user order): column ``user_index`` (row index into the
            inputs) and one ``float64`` column ``"<metric>@<k>"`` per per-user metric and k
            (``novelty``/``ild`` columns only when computed; they may hold NaN).
            Intended for paired comparisons between models.
        curves: k -> popularity-bias curve ``{"shares": [...], "items": [...], "k": k}``.
    """

    summary: dict[str, float] = field(default_factory=dict)
    per_user: pd.DataFrame = field(default_factory=pd.DataFrame)
    curves: dict[int, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, float]:
        """Return a flat, JSON-serialisable copy of :attr:`summary`.

        Suitable for ``mlflow.log_metrics`` or a JSON report; ``per_user`` is not
        included (persist it separately, e.g. as parquet).
        """
        return dict(self.summary)


def _row_ids(indptr: np.ndarray) -> np.ndarray:
    """Row index of every stored entry of a CSR matrix with the given ``indptr``."""
    return np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))


def _membership(csr: sp.csr_matrix, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Whether ``items[i, j]`` is a stored entry of row ``rows[i]`` of ``csr``.

    ``csr`` must be canonical (see :func:`_binary_csr`: every stored value is nonzero).
    Negative or out-of-range items are never members. One scipy element lookup
    (``csr[r, c]``: a binary search within each short sorted row, in C) answers all queries;
    padding is looked up as column 0 and masked out.
    """
    n_cols = csr.shape[1]
    out = np.zeros(items.shape, dtype=bool)
    if items.size == 0 or csr.nnz == 0:
        return out
    valid = (items >= 0) & (items < n_cols)
    r = np.broadcast_to(np.asarray(rows, dtype=np.int64)[:, None], items.shape).ravel()
    c = np.where(valid, items, 0).astype(np.int64).ravel()
    values = np.asarray(csr[r, c]).reshape(items.shape)
    return (values != 0) & valid


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


def _nanmean(values: np.ndarray) -> float:
    """Mean over the finite entries; NaN (without a warning) when there are none."""
    ok = ~np.isnan(values)
    return float(values[ok].mean()) if ok.any() else float("nan")


def ranking_metrics(
    top_items: np.ndarray,
    relevant: sp.csr_matrix,
    ks: Sequence[int],
    *,
    n_catalog: int | None = None,
    item_popularity: np.ndarray | None = None,
    n_train_users: int | None = None,
    item_features: np.ndarray | sp.spmatrix | None = None,
    curve_shares: Sequence[float] = DEFAULT_SHARES,
) -> MetricsResult:
    """Compute top-N ranking and beyond-accuracy metrics for every cut-off in ``ks``.

    (Over 80 lines only by this docstring, the reference its callers read; the code is ~45.)

    Definitions (rank ``r`` starts at 1, binary relevance, ``|rel_u|`` = number of
    holdout items of user ``u``; the package docstring has the full text):

    * precision@k = hits@k / k  (divides by k, not by the number of recs shown)
    * recall@k    = hits@k / |rel_u|
    * ndcg@k      = sum_{r<=k} hit(r)/log2(r+1) / sum_{r<=min(k,|rel_u|)} 1/log2(r+1)
    * map@k       = sum_{r<=k, hit(r)} precision@r / min(k, |rel_u|)
    * mrr@k       = 1 / rank of the first hit within k, else 0
    * hit_rate@k  = 1 if any hit within k, else 0
    * coverage@k  = distinct items in the top-k of all evaluated users / n_catalog
    * gini@k      = Gini of top-k exposure over the whole catalog (never-shown items = 0)
    * novelty@k   = per user mean of -log2(max(pop_i, 1) / n_train_users) over the top-k
    * ild@k       = per user mean pairwise cosine distance of item features in the top-k

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
        n_catalog: catalog size for coverage and exposure; defaults to ``relevant.shape[1]``.
            Every recommended item must be ``< max(n_catalog, n_items)``.
        item_popularity: distinct training users per item index (novelty); items past its
            end count as 0. Needs ``n_train_users``.
        n_train_users: number of training users (the novelty denominator).
        item_features: ``(n_items, d)`` item feature matrix (dense or sparse) for ILD.
        curve_shares: shares of all slots at which the popularity-bias curve is read.

    Returns:
        A :class:`MetricsResult` with the macro-averaged ``summary``, the ``per_user``
        table and the popularity-bias ``curves``.

    Raises:
        TypeError: if ``relevant`` is not sparse.
        ValueError: on shape mismatches, items outside ``[-1, catalog)``, or bad ``ks``,
            ``curve_shares``, ``item_popularity`` or ``item_features``.
    """
    ks_list, shares, rel, recs, catalog = _check_inputs(
        top_items, relevant, ks, n_catalog, item_popularity, n_train_users, curve_shares
    )
    n_users = rel.shape[0]
    n_rel_all = np.diff(rel.indptr)
    eval_users = np.flatnonzero(n_rel_all > 0)
    n_eval = int(eval_users.size)

    # Only the first min(N, max k) rank columns can ever matter.
    depth = min(recs.shape[1], max(ks_list))
    recs_eval = recs[eval_users, :depth]
    n_no_recs = int(np.count_nonzero(~(recs[eval_users] >= 0).any(axis=1)))
    hits = _Hits.of(rel, eval_users, recs_eval, n_rel_all[eval_users].astype(np.float64), max(ks_list))
    exposure, novelty, ild = _beyond_accuracy(
        recs_eval, depth, catalog, ks_list, item_popularity, n_train_users, item_features
    )

    summary: dict[str, float] = {}
    curves: dict[int, dict[str, Any]] = {}
    columns: dict[str, np.ndarray] = {"user_index": eval_users.astype(np.int64)}
    for k in ks_list:
        values = _accuracy_at_k(hits, k)
        for name in PER_USER_METRICS:
            key = f"{name}@{k}"
            columns[key] = values[name]
            summary[key] = float(values[name].mean()) if n_eval else float("nan")
        summary[f"coverage@{k}"] = float(np.count_nonzero(exposure[k])) / catalog
        summary[f"gini@{k}"] = gini(exposure[k])
        if k in novelty:
            columns[f"novelty@{k}"] = novelty[k]
            summary[f"novelty@{k}"] = _nanmean(novelty[k])
        if k in ild:
            columns[f"ild@{k}"] = ild[k]
            summary[f"ild@{k}"] = _nanmean(ild[k])
        curves[k] = {
            "shares": [float(s) for s in shares],
            "items": popularity_curve(exposure[k], shares),
            "k": int(k),
        }

    summary["n_users_evaluated"] = n_eval
    summary["n_users_no_holdout"] = int(n_users - n_eval)
    summary["n_users_no_recs"] = n_no_recs
    return MetricsResult(summary=summary, per_user=pd.DataFrame(columns), curves=curves)


def _check_inputs(
    top_items: np.ndarray,
    relevant: sp.csr_matrix,
    ks: Sequence[int],
    n_catalog: int | None,
    item_popularity: np.ndarray | None,
    n_train_users: int | None,
    curve_shares: Sequence[float],
) -> tuple[list[int], np.ndarray, sp.csr_matrix, np.ndarray, int]:
    """(ks, shares, canonical relevant, top items, catalog size), or the ValueError / TypeError
    :func:`ranking_metrics` documents: bad inputs fail before any work."""
    ks_list = _validate_ks(ks)
    shares = _validate_shares(curve_shares)
    rel = _binary_csr(relevant, "relevant")
    n_users, n_items = rel.shape
    catalog = n_items if n_catalog is None else int(n_catalog)
    if catalog < 1:
        raise ValueError(f"n_catalog must be >= 1, got {n_catalog}")
    if item_popularity is not None and n_train_users is None:
        raise ValueError("item_popularity needs n_train_users (the novelty denominator)")

    recs = np.asarray(top_items)
    if recs.ndim != 2 or recs.shape[0] != n_users:
        raise ValueError(f"top_items must have shape (n_users={n_users}, N), got {recs.shape}")
    if recs.size and not np.issubdtype(recs.dtype, np.integer):
        raise ValueError(f"top_items must be an integer array, got dtype {recs.dtype}")
    if recs.size:
        lo, hi = int(recs.min()), int(recs.max())
        if lo < -1 or hi >= max(catalog, n_items):
            raise ValueError(
                f"top_items values must lie in [-1, {max(catalog, n_items)}), "
                f"got range [{lo}, {hi}]"
            )
    return ks_list, shares, rel, recs, catalog


@dataclass(frozen=True)
class _Hits:
    """The (user, rank) coordinates of every hit and what each contributes; every k reuses
    them (hits are sparse, so this is far smaller than the rank matrix)."""

    user: np.ndarray  # evaluated-user position of each hit, grouped by user
    col: np.ndarray  # 0-based rank column of each hit, increasing within a user
    gain: np.ndarray  # DCG term 1 / log2(rank + 1) of each hit
    prec: np.ndarray  # precision@rank at each hit (the AP terms)
    first_rank: np.ndarray  # per evaluated user: rank of the first hit, inf without one
    n_rel: np.ndarray  # per evaluated user: |rel_u| as float
    ideal_dcg: np.ndarray  # ideal_dcg[m - 1] = sum_{r=1}^{m} 1/log2(r+1) for m = 1..max(ks)

    @classmethod
    def of(cls, rel: sp.csr_matrix, eval_users: np.ndarray, recs_eval: np.ndarray, n_rel: np.ndarray,
           max_k: int) -> _Hits:
        n_eval = int(eval_users.size)
        # np.nonzero returns the coordinates in row-major order: grouped by user, increasing
        # rank within a user.
        hit_user, hit_col = np.nonzero(_membership(rel, eval_users, recs_eval))
        hits_per_user = np.bincount(hit_user, minlength=n_eval)
        first_of_user = np.cumsum(hits_per_user) - hits_per_user  # offset of a user's 1st hit
        ordinal = np.arange(hit_user.size) - first_of_user[hit_user] + 1  # hits so far
        hit_rank = hit_col.astype(np.float64) + 1.0
        has_hit = hits_per_user > 0
        first_hit_rank = np.full(n_eval, np.inf)
        first_hit_rank[has_hit] = hit_rank[first_of_user[has_hit]]
        return cls(
            user=hit_user,
            col=hit_col,
            gain=1.0 / np.log2(hit_rank + 1.0),
            prec=ordinal / hit_rank,
            first_rank=first_hit_rank,
            n_rel=n_rel,
            ideal_dcg=np.cumsum(1.0 / np.log2(np.arange(2, max_k + 2, dtype=np.float64))),
        )


def _accuracy_at_k(h: _Hits, k: int) -> dict[str, np.ndarray]:
    """Every per-user accuracy metric at cut-off ``k`` (:data:`PER_USER_METRICS`)."""
    n_eval = h.n_rel.size
    in_k = h.col < k
    users_k = h.user[in_k]
    hits_k = np.bincount(users_k, minlength=n_eval).astype(np.float64)
    dcg_k = np.bincount(users_k, weights=h.gain[in_k], minlength=n_eval)
    ap_sum_k = np.bincount(users_k, weights=h.prec[in_k], minlength=n_eval)
    n_ideal = np.minimum(h.n_rel, k)
    return {
        "precision": hits_k / k,
        "recall": hits_k / h.n_rel,
        "ndcg": dcg_k / h.ideal_dcg[n_ideal.astype(np.int64) - 1],
        "map": ap_sum_k / n_ideal,
        "mrr": np.where(h.first_rank <= k, 1.0 / h.first_rank, 0.0),
        "hit_rate": (hits_k > 0).astype(np.float64),
    }


def _beyond_accuracy(
    recs_eval: np.ndarray,
    depth: int,
    catalog: int,
    ks_list: list[int],
    item_popularity: np.ndarray | None,
    n_train_users: int | None,
    item_features: np.ndarray | sp.spmatrix | None,
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Per k: the exposure of every catalog item, per-user novelty (with item popularity) and
    per-user ILD (with item features).

    One pass over the rank columns, in increasing k; the columns between consecutive cut-offs
    are added to the running exposure / novelty sums. Padding (-1) goes to the spare slot
    ``length`` (zero self-information, zero feature vector).
    """
    n_eval = recs_eval.shape[0]
    length = max(catalog, int(recs_eval.max()) + 1 if recs_eval.size else 0)
    safe = np.where(recs_eval >= 0, recs_eval, length)
    info = (
        _self_information(item_popularity, n_train_users, length)
        if item_popularity is not None
        else None
    )
    ks_sorted = sorted(ks_list)
    exposure: dict[int, np.ndarray] = {}
    novelty: dict[int, np.ndarray] = {}
    counts = np.zeros(length + 1, dtype=np.int64)
    shown = np.zeros(n_eval, dtype=np.int64)
    info_sum = np.zeros(n_eval, dtype=np.float64)
    prev = 0
    for k in ks_sorted:
        hi = min(k, depth)
        if hi > prev:
            cols = safe[:, prev:hi]
            counts += np.bincount(cols.ravel(), minlength=length + 1)
            shown += (cols != length).sum(axis=1)
            if info is not None:
                info_sum += info[cols].sum(axis=1)
            prev = hi
        exposure[k] = counts[:length].copy()
        if info is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                novelty[k] = np.where(shown > 0, info_sum / shown, np.nan)
    ild = (
        _intra_list_diversity(safe, length, ks_sorted, _unit_features(item_features, length))
        if item_features is not None
        else {}
    )
    return exposure, novelty, ild
