"""Offline metrics for implicit-feedback recommenders: accuracy, beyond-accuracy, slices, CIs.

This module is the single place where the pipeline's offline metrics are defined (the README
section "Offline metrics" is a summary of this text). Everything is computed with NumPy array
operations: there is no Python loop over users or items (only over the requested cut-offs
``ks``, over rank columns, and over fixed-size blocks of users or bootstrap samples).

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
``item_popularity`` / ``n_train_users`` (optional)
    ``pop_i`` = number of distinct *training* users who interacted with item ``i`` and the
    number of training users; they define novelty.
``item_features`` (optional)
    ``(n_items, d)`` dense or sparse matrix of item feature vectors; it enables intra-list
    diversity. The pipeline has no item features today, so ``ild@k`` is absent from its report.

Which users are averaged
------------------------
* Users whose ``relevant`` row is empty are **excluded** from every average and
  from the aggregate metrics; they are counted in ``n_users_no_holdout``.
* Users with holdout items but no recommendations (row of ``-1``) are **included**
  and score 0 on every accuracy metric; they are counted in ``n_users_no_recs``.
* All other users with holdout items are included. ``n_users_evaluated`` is the
  number of users with a nonempty ``relevant`` row (it includes ``n_users_no_recs``).

Per-user accuracy metrics (rank ``r`` starts at 1; ``hit(r)`` is 1 when the item
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

The summary value of every per-user metric is its arithmetic mean over the
``n_users_evaluated`` users (macro average); it is NaN when no user is evaluated.
Ties in the model's scores are the recommender's business: the metrics see one ranked
list per user and never re-order it.

Beyond-accuracy metrics (over the top-k lists of the evaluated users only)
---------------------------------------------------------------------------
* ``coverage@k``   = |distinct items in the top-k lists| / ``n_catalog`` (``n_catalog``
  defaults to ``relevant.shape[1]``). ``-1`` padding is not an item.
* exposure: ``e_i@k`` = number of top-k slots (over evaluated users) holding item ``i``,
  for every item of the catalog, ``i = 0 .. L-1`` with ``L = max(n_catalog, largest
  recommended index + 1)``; items never recommended have ``e_i = 0``.
* ``gini@k``       = Gini coefficient of the exposure vector over the whole catalog:
  with ``e`` sorted ascending, ``G = sum_{j=1}^{L} (2j - L - 1) e_(j) / (L * sum_j e_j)``.
  0 = every catalog item recommended equally often; ``(L - 1) / L`` = one item takes every
  slot. NaN when there are no slots at all.
* ``novelty@k``    = per user, the mean self-information of their top-k recommended items,
  ``-log2(p_i)`` with ``p_i = max(pop_i, 1) / n_train_users`` (the share of training users
  who know item ``i``; items no training user touched count as known by one, so the value
  stays finite, at most ``log2(n_train_users)``). Per-user value NaN when the user got no
  recommendation; the summary is the mean over evaluated users with >= 1 recommendation.
* ``ild@k``        = intra-list diversity, per user the mean cosine distance
  ``1 - cos(f_i, f_j)`` over all unordered pairs of distinct positions in the top-k list
  (``m(m-1)/2`` pairs for ``m`` shown items). Items with an all-zero feature vector (or
  beyond the feature matrix) are at distance 1 from everything. NaN per user with fewer
  than 2 items; summary = mean over users with >= 2 items. Only computed with
  ``item_features``; otherwise the key is absent (the pipeline notes that it was skipped).
* popularity-bias curve@k: sort the catalog by exposure ``e_i@k`` descending; for each share
  ``s`` in 10%, 20%, ..., 100% of all top-k slots, ``items(s)`` = the smallest number of
  distinct items whose exposures sum to at least ``ceil(s * total slots)``. A popularity
  recommender gives a flat, low curve; ``items(1.0)`` = the number of distinct recommended
  items (``coverage@k * n_catalog``).

Slices (see :func:`evaluate_models` and :func:`user_slice_labels`)
-------------------------------------------------------------------
* ``activity``: from the user's number of distinct *training* items ``c_u`` (the row length
  of the training matrix, what the model saw): ``cold`` (``c_u = 0``: no training events,
  unknown to the model), ``heavy`` (``c_u >= T``), ``light`` (``1 <= c_u < T``). ``T`` is the
  ``heavy_quantile`` (config ``eval_heavy_quantile``, default 0.8) quantile of ``c_u`` over
  all training users, rounded up to an integer: roughly the top 20% most active users.
* ``user``: ``new`` when the user's first training event is at or after ``cutoff -
  new_user_days`` (config ``eval_new_user_days``; the cutoff is the train/holdout split time),
  else ``returning``. Cold users are new by definition; they are reported in
  ``activity=cold`` and not in the ``user`` slices.
* ``items``: ``head`` = the smallest set of most popular items (by ``pop_i``, ties by lower
  index) whose popularity adds up to at least ``head_share`` (config ``eval_head_share``,
  default 0.5) of all training (user, item) pairs; every other item, including items that
  no training user touched, is ``tail``. ``items=head`` re-scores the same recommendation
  lists with the relevant set restricted to head holdout items (``items=tail`` likewise):
  users with no head (tail) holdout item drop out of that slice, so ``recall@k`` there is
  "the share of the user's head (tail) holdout items that were retrieved".
* The headline ``metrics`` are over **warm** holdout users (known to the candidate, i.e. with
  training events): the same population as before slices existed, so the gate metric stays
  comparable across releases. Cold holdout users get each model's own fallback list (the
  candidate's and the champion's popularity fallback, the baselines' own lists) and are
  scored only in ``activity=cold``. ``activity=light|heavy``, ``user=*`` and ``items=*`` are
  over warm users. A slice reports ``n_users`` and the mean of every per-user metric; the
  aggregate metrics (coverage, Gini, curve) are not sliced.

Paired bootstrap (:func:`paired_bootstrap`)
-------------------------------------------
Per-user values ``a_u`` and ``b_u`` of two models on the same users; ``d_u = a_u - b_u``.
``n_boot`` resamples of the users with replacement (``n`` draws each, numpy ``Generator``
seeded with ``seed``; the same resamples for every metric of a comparison, and for every
comparison of one evaluation: they are drawn once, :func:`paired_bootstrap_tables`); the CI is the
percentile interval ``[q_{(1-c)/2}, q_{(1+c)/2}]`` (numpy's default linear interpolation)
of the resampled mean differences, ``mean_diff`` is the observed mean of ``d``. Pairs with
a NaN on either side are dropped first (``n_users`` counts the pairs used).

Baselines (:func:`popularity_topn`, :func:`popularity_order`, :func:`recent_item_popularity`)
----------------------------------------------------------------------------------------------
``popularity``: items by ``pop_i`` over the whole training period. ``recent_popularity``:
items by the number of distinct users with a training event in the last ``recent_days``
before the cutoff (config ``recent_days``), ties (including the items nobody touched
recently) by global popularity, then lower index. Every model gets the same holdout and the
same seen-item filter: each user's training items are removed and the next items move up.

Implementation
--------------
Membership of ``top_items[u, r]`` in row ``u`` of ``relevant`` is decided for all
``(u, r)`` at once with one element lookup ``csr[u, item]`` into the canonical (sorted,
deduplicated, no explicit zeros) CSR: scipy's C loop binary-searches each short row. The per-user
metrics are then accumulated from the coordinates of the hits with ``np.bincount``;
every k reuses that one membership pass. Exposure, novelty and diversity are accumulated
incrementally over the rank columns between consecutive k. Peak extra memory is a few
``int64``/``float64`` arrays of shape ``(n_evaluated_users, min(N, max(ks)))`` (about 80 MB
each for 100k users x 100). ``bench/evaluation.py`` times it against implicit.

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
  ``"auc"`` (not provided here) and no recall, MRR, hit rate, coverage or any
  beyond-accuracy metric.
* Microsoft Recommenders (``recommenders.evaluation.python_evaluation``): works on
  pandas DataFrames and averages over the users present in *both* the truth and the
  prediction frames, so users with holdout but no recommendations are dropped
  instead of scoring 0. ``precision_at_k`` divides by ``k`` and ``recall_at_k`` by
  the number of true items (same as here). In its current source ``map_at_k``
  divides by ``min(|rel_u|, k)`` (same as here) while ``map`` divides by ``|rel_u|``;
  older releases differ, so check the installed version. ``ndcg_at_k`` defaults to
  a natural-log discount, which gives the same ratio DCG/IDCG as log2. Its ``novelty``
  uses the *choice* model ``-log2(interactions_i / all interactions)`` averaged over all
  recommendation slots (micro); ours uses the share of users who know the item and a mean
  per user (macro). Its ``diversity`` is ``1 - mean pairwise similarity`` like our ILD but
  defaults to item co-occurrence similarity (feature cosine is an option). Its
  ``catalog_coverage`` divides by the distinct training items; it has no Gini (its
  ``distributional_coverage`` is the Shannon entropy of exposure).
* ranx: ``precision@k`` divides by ``k`` (same as here) and ``ndcg@k`` (Jarvelin
  formulation, binary judgments) matches ours, but ``map@k`` divides the sum of
  precisions by the total number of relevant documents ``|rel_u|``, not by
  ``min(k, |rel_u|)``, so ranx's ``map@k`` is <= ours when ``|rel_u| > k``. Queries of
  the qrels that the run lacks have to be reconciled by the caller (``evaluate``'s
  ``make_comparable`` option adds them with empty results, so they score 0 as here). ranx
  has no beyond-accuracy metrics, and its ``compare`` offers paired significance tests
  (Student's t, Fisher's randomization) rather than a bootstrap interval.
"""

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

    Definitions (rank ``r`` starts at 1, binary relevance, ``|rel_u|`` = number of
    holdout items of user ``u``; see the module docstring for the full text):

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

    # Beyond accuracy: one pass over the rank columns, in increasing k; the columns between
    # consecutive cut-offs are added to the running exposure / novelty sums. Padding (-1)
    # goes to the spare slot `length` (zero self-information, zero feature vector).
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

    summary: dict[str, float] = {}
    curves: dict[int, dict[str, Any]] = {}
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
