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
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

log = logging.getLogger(__name__)

__all__ = [
    "ACTIVITY_TIERS",
    "DEFAULT_SHARES",
    "ITEM_GROUPS",
    "PER_USER_METRICS",
    "USER_TYPES",
    "BootstrapCI",
    "Evaluation",
    "HoldoutInputs",
    "MetricsResult",
    "evaluate_models",
    "gini",
    "head_item_mask",
    "heavy_threshold",
    "holdout_inputs",
    "paired_bootstrap",
    "paired_bootstrap_table",
    "paired_bootstrap_tables",
    "popularity_curve",
    "popularity_order",
    "popularity_topn",
    "ranking_metrics",
    "recent_item_popularity",
    "restrict_relevant",
    "user_slice_labels",
]

#: Per-user accuracy metrics, in the column order used by ``MetricsResult.per_user``.
PER_USER_METRICS: tuple[str, ...] = ("precision", "recall", "ndcg", "map", "mrr", "hit_rate")
#: Shares of all recommendation slots at which the popularity-bias curve is read.
DEFAULT_SHARES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: Slice values, in report order.
ACTIVITY_TIERS: tuple[str, ...] = ("cold", "light", "heavy")
USER_TYPES: tuple[str, ...] = ("new", "returning")
ITEM_GROUPS: tuple[str, ...] = ("head", "tail")

_BOOT_CHUNK = 1 << 22  # resampled indices drawn per bootstrap chunk (bounds memory)
_ILD_CHUNK = 1 << 23  # feature sums (users x d) held per user block of the ILD pass


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


def _validate_shares(shares: Sequence[float]) -> np.ndarray:
    """Shares as a float array; each must lie in (0, 1]."""
    arr = np.asarray(list(shares), dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or not np.all((arr > 0) & (arr <= 1)):
        raise ValueError(f"shares must be a non-empty list of numbers in (0, 1], got {shares!r}")
    return arr


def gini(exposure: np.ndarray) -> float:
    """Gini coefficient of a non-negative exposure vector (one entry per catalog item).

    ``G = sum_j (2j - L - 1) e_(j) / (L * sum e)`` with ``e`` sorted ascending, ``j = 1..L``:
    0 when every item has the same exposure, ``(L - 1) / L`` when one item has all of it.
    NaN for an empty or all-zero vector.
    """
    e = np.sort(np.asarray(exposure, dtype=np.float64).ravel())
    if e.size and e[0] < 0:
        raise ValueError("exposure must be non-negative")
    total = e.sum()
    if e.size == 0 or total <= 0:
        return float("nan")
    n = e.size
    weights = 2.0 * np.arange(1, n + 1, dtype=np.float64) - n - 1.0
    return float(weights @ e / (n * total))


def popularity_curve(exposure: np.ndarray, shares: Sequence[float] = DEFAULT_SHARES) -> list[int]:
    """Distinct items (most exposed first) needed to fill each share of all slots.

    ``items(s)`` = the smallest ``m`` such that the ``m`` most exposed items hold at least
    ``ceil(s * total)`` slots; 0 for every share when nothing was recommended.
    """
    arr = _validate_shares(shares)
    e = np.sort(np.asarray(exposure, dtype=np.int64).ravel())[::-1]
    cum = np.cumsum(e)
    total = int(cum[-1]) if cum.size else 0
    if total == 0:
        return [0] * arr.size
    # round first so that e.g. 0.3 * 10 (= 3.0000000000000004) needs 3 slots, not 4
    target = np.ceil(np.round(arr * total, 9)).astype(np.int64)
    return (np.searchsorted(cum, target, side="left") + 1).astype(int).tolist()


def _self_information(item_popularity: np.ndarray, n_train_users: int, length: int) -> np.ndarray:
    """``-log2(max(pop_i, 1) / n_train_users)`` for items ``0..length-1``, plus a 0 pad slot."""
    if n_train_users is None or int(n_train_users) < 1:
        raise ValueError(f"n_train_users must be >= 1 with item_popularity, got {n_train_users!r}")
    pop = np.asarray(item_popularity, dtype=np.float64).ravel()
    if pop.size and pop.min() < 0:
        raise ValueError("item_popularity must be non-negative")
    full = np.zeros(length, dtype=np.float64)
    m = min(length, pop.size)
    full[:m] = pop[:m]
    info = np.zeros(length + 1, dtype=np.float64)
    info[:length] = -np.log2(np.maximum(full, 1.0) / float(n_train_users))
    return info


def _unit_features(item_features: Any, length: int) -> np.ndarray:
    """Row-normalised dense feature table for items ``0..length-1`` plus a zero pad row.

    Items beyond the feature matrix and all-zero rows stay zero vectors.
    """
    if sp.issparse(item_features):
        feats = np.asarray(item_features.todense(), dtype=np.float64)
    else:
        feats = np.asarray(item_features, dtype=np.float64)
    if feats.ndim != 2:
        raise ValueError(f"item_features must be 2-d (n_items, d), got shape {feats.shape}")
    table = np.zeros((length + 1, feats.shape[1]), dtype=np.float64)
    m = min(length, feats.shape[0])
    table[:m] = feats[:m]
    norms = np.linalg.norm(table, axis=1)
    nz = norms > 0
    table[nz] /= norms[nz, None]
    return table


def _intra_list_diversity(
    safe: np.ndarray, pad: int, ks_sorted: list[int], unit: np.ndarray
) -> dict[int, np.ndarray]:
    """Per-user ILD@k for every k (NaN below 2 shown items).

    For unit vectors ``v`` of a list, ``sum_{i != j} cos(v_i, v_j) = |sum v|^2 - sum |v|^2``,
    so the mean over unordered pairs is that over ``m (m - 1)``. The per-user sums ``sum v``
    grow by the rank columns between consecutive k, each step one sparse product
    (one-hot rows of those columns) @ ``unit``; users go in blocks to bound memory.
    """
    n_rows, depth = safe.shape
    out = {k: np.full(n_rows, np.nan) for k in ks_sorted}
    if n_rows == 0 or depth == 0:
        return out
    sqnorm = np.einsum("ij,ij->i", unit, unit)
    d = unit.shape[1]
    block = max(1, _ILD_CHUNK // max(1, d))
    for lo in range(0, n_rows, block):
        rows = safe[lo : lo + block]
        b = rows.shape[0]
        acc = np.zeros((b, d))
        sq = np.zeros(b)
        shown = np.zeros(b)
        prev = 0
        for k in ks_sorted:
            hi = min(k, depth)
            if hi > prev:
                cols = rows[:, prev:hi]
                onehot = sp.csr_matrix(
                    (np.ones(cols.size), cols.ravel(), np.arange(0, cols.size + 1, hi - prev)),
                    shape=(b, unit.shape[0]),
                )
                acc += onehot @ unit
                sq += sqnorm[cols].sum(axis=1)
                shown += (cols != pad).sum(axis=1)
                prev = hi
            pairs = shown * (shown - 1.0)
            ok = pairs > 0
            sim = np.zeros(b)
            sim[ok] = (np.einsum("ij,ij->i", acc[ok], acc[ok]) - sq[ok]) / pairs[ok]
            out[k][lo : lo + b] = np.where(ok, 1.0 - sim, np.nan)
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


@dataclass(frozen=True)
class BootstrapCI:
    """Paired bootstrap of ``mean(a - b)``: the observed mean, the percentile CI, the sizes."""

    mean_diff: float
    lo: float
    hi: float
    n_users: int
    n_boot: int
    confidence: float

    def to_dict(self) -> dict[str, float | int]:
        """Plain dict (JSON / report friendly)."""
        return asdict(self)


def _check_boot_args(n_boot: int, confidence: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")


def _bootstrap_means(diff: np.ndarray, n_boot: int, seed: int | None) -> np.ndarray:
    """``(n_boot, m)`` means of ``diff`` (``(n, m)``) over resamples of its rows.

    :func:`_bootstrap_means_many` of one matrix.
    """
    return _bootstrap_means_many([diff], n_boot, seed)[0]


def _bootstrap_means_many(
    diffs: Sequence[np.ndarray], n_boot: int, seed: int | None
) -> list[np.ndarray]:
    """``(n_boot, m_j)`` means of each ``diffs[j]`` (``(n, m_j)``, same ``n``) over the same
    resamples of the rows.

    Each resample draws ``n`` row indices with replacement (``Generator.integers``). With
    more than two columns the draws of a chunk of resamples become per-row counts (one
    ``bincount``), so the means of all ``m`` columns are one matrix product; otherwise the
    values are gathered directly. The chunk size depends on ``n`` only, so the
    draws (and the result) depend on ``(n, n_boot, seed)`` only, not on ``m``. The draws and
    the counts are made once for all matrices (the expensive part); each matrix then gets the
    very product it would get on its own, so the result for ``diffs[j]`` is bit-identical to
    ``_bootstrap_means_many([diffs[j]], ...)`` (same seed, same CI).
    """
    if not diffs:
        return []
    n = diffs[0].shape[0]
    if any(d.ndim != 2 or d.shape[0] != n for d in diffs):
        raise ValueError(f"every diff must be 2-d with {n} rows, got {[d.shape for d in diffs]}")
    rng = np.random.default_rng(seed)
    outs = [np.empty((n_boot, d.shape[1]), dtype=np.float64) for d in diffs]
    narrow = [j for j, d in enumerate(diffs) if d.shape[1] <= 2]  # few columns: gather
    wide = [j for j, d in enumerate(diffs) if d.shape[1] > 2]  # counts @ diff
    per_chunk = max(1, min(n_boot, _BOOT_CHUNK // max(n, 1)))
    for lo in range(0, n_boot, per_chunk):
        rows = min(per_chunk, n_boot - lo)
        idx = rng.integers(0, n, size=(rows, n), dtype=np.int64)
        for j in narrow:
            outs[j][lo : lo + rows] = diffs[j][idx].mean(axis=1)
        if not wide:
            continue
        idx += (np.arange(rows, dtype=np.int64) * n)[:, None]
        weights = np.bincount(idx.ravel(), minlength=rows * n).reshape(rows, n)
        del idx
        weights = weights.astype(np.float64)
        for j in wide:
            outs[j][lo : lo + rows] = (weights @ diffs[j]) / n
    return outs


def _ci(diff: np.ndarray, means: np.ndarray, n_boot: int, confidence: float) -> BootstrapCI:
    alpha = (1.0 - float(confidence)) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return BootstrapCI(
        mean_diff=float(diff.mean()),
        lo=float(lo),
        hi=float(hi),
        n_users=int(diff.size),
        n_boot=int(n_boot),
        confidence=float(confidence),
    )


def _empty_ci(n_boot: int, confidence: float) -> BootstrapCI:
    nan = float("nan")
    return BootstrapCI(nan, nan, nan, 0, int(n_boot), float(confidence))


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int | None = 0,
) -> BootstrapCI:
    """Paired bootstrap CI of ``mean(a - b)`` over the same users (``a[u]``, ``b[u]``).

    ``n_boot`` resamples of the users with replacement; the interval is the percentile
    interval of the resampled mean differences at ``confidence``. Pairs with a NaN on either
    side are dropped first. Deterministic for a given ``seed``; vectorised (see
    :func:`_bootstrap_means`). With no pair left, every figure is NaN and ``n_users`` is 0.

    Raises:
        ValueError: if ``a`` and ``b`` differ in length or are not 1-d, or on a bad
            ``n_boot`` / ``confidence``.
    """
    _check_boot_args(n_boot, confidence)
    a_arr = np.asarray(a, dtype=np.float64)
    b_arr = np.asarray(b, dtype=np.float64)
    if a_arr.ndim != 1 or a_arr.shape != b_arr.shape:
        raise ValueError(
            f"a and b must be 1-d per-user vectors of the same users, got shapes "
            f"{a_arr.shape} and {b_arr.shape}"
        )
    diff = a_arr - b_arr
    diff = diff[~np.isnan(diff)]
    if diff.size == 0:
        return _empty_ci(n_boot, confidence)
    means = _bootstrap_means(diff[:, None], n_boot, seed)[:, 0]
    return _ci(diff, means, n_boot, confidence)


def paired_bootstrap_table(
    a: pd.DataFrame,
    b: pd.DataFrame,
    columns: Sequence[str],
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int | None = 0,
) -> dict[str, BootstrapCI]:
    """:func:`paired_bootstrap` for several per-user columns of two aligned frames at once.

    Rows are users (row ``i`` of ``a`` and of ``b`` is the same user). All NaN-free columns
    share the same resamples (one bootstrap pass, one matrix product); a column with NaN is
    bootstrapped on its own after dropping those pairs. The result of a NaN-free column matches
    ``paired_bootstrap(a[c], b[c], n_boot, confidence, seed)`` (same resamples; equal up to
    floating-point summation order).
    """
    return paired_bootstrap_tables(a, {"b": b}, columns, n_boot, confidence, seed)["b"]


def paired_bootstrap_tables(
    a: pd.DataFrame,
    others: Mapping[str, pd.DataFrame],
    columns: Sequence[str],
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int | None = 0,
) -> dict[str, dict[str, BootstrapCI]]:
    """:func:`paired_bootstrap_table` of ``a`` against each frame of ``others`` (name -> frame).

    Every comparison gets exactly what ``paired_bootstrap_table(a, other, ...)`` gives (the
    same seed means the same resamples, so the CIs are bit-identical), but the resamples are
    drawn and counted once for all comparisons (:func:`_bootstrap_means_many`): with three
    other models that is a third of the work.
    """
    _check_boot_args(n_boot, confidence)
    cols = list(columns)
    missing = [c for c in cols if c not in a.columns]
    for name, b in others.items():
        if len(a) != len(b):
            raise ValueError(
                f"a and {name} must have the same users (rows), got {len(a)} and {len(b)}"
            )
        missing += [c for c in cols if c not in b.columns and c not in missing]
    if missing:
        raise ValueError(f"columns missing from a or b: {missing}")
    out: dict[str, dict[str, BootstrapCI]] = {name: {} for name in others}
    if not cols:
        return out
    a_values = a[cols].to_numpy(dtype=np.float64)
    diffs: dict[str, np.ndarray] = {}
    clean: dict[str, np.ndarray] = {}
    for name, b in others.items():
        diff = a_values - b[cols].to_numpy(dtype=np.float64)
        clean[name] = ~np.isnan(diff).any(axis=0)
        if len(a) and clean[name].any():
            diffs[name] = diff[:, clean[name]]
    means = dict(zip(diffs, _bootstrap_means_many(list(diffs.values()), n_boot, seed), strict=True))
    for name, b in others.items():
        got = out[name]
        if name in diffs:
            for j, c in enumerate(np.asarray(cols, dtype=object)[clean[name]]):
                got[c] = _ci(diffs[name][:, j], means[name][:, j], n_boot, confidence)
        for c in cols:
            if c not in got:
                got[c] = paired_bootstrap(a[c], b[c], n_boot, confidence, seed)
        out[name] = {c: got[c] for c in cols}
    return out


def heavy_threshold(train_counts: np.ndarray, quantile: float) -> int:
    """Training-item count from which a user is ``heavy``.

    ``ceil(quantile(c, q))`` over the counts ``c >= 1`` of training users (numpy's linear
    interpolation), at least 1; 1 when there are no training users.
    """
    if not 0.0 < float(quantile) < 1.0:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile!r}")
    c = np.asarray(train_counts, dtype=np.float64).ravel()
    c = c[c >= 1]
    if c.size == 0:
        return 1
    return max(1, int(np.ceil(np.quantile(c, float(quantile)) - 1e-9)))


def user_slice_labels(
    train_counts: np.ndarray,
    first_train_ts: pd.Series | np.ndarray,
    cutoff: pd.Timestamp,
    *,
    heavy_min: int,
    new_user_days: float,
) -> pd.DataFrame:
    """Slice labels of holdout users: ``activity`` (cold/light/heavy) and ``user`` (new/returning).

    Args:
        train_counts: distinct training items per user (0 = no training event: cold).
        first_train_ts: each user's first training event (NaT for cold users).
        cutoff: the train/holdout split time.
        heavy_min: count from which a user is heavy (see :func:`heavy_threshold`).
        new_user_days: a user whose first training event is at or after
            ``cutoff - new_user_days`` is ``new``; cold users are ``new`` as well.

    Returns:
        A frame (one row per user, input order) with string columns ``activity``, ``user``.
    """
    counts = np.asarray(train_counts, dtype=np.int64).ravel()
    if isinstance(first_train_ts, pd.Series):  # positional; no per-row Timestamp objects
        first = pd.to_datetime(first_train_ts.reset_index(drop=True), utc=True)
    else:
        first = pd.to_datetime(pd.Series(np.asarray(first_train_ts)), utc=True)
    if len(first) != counts.size:
        raise ValueError(
            f"train_counts ({counts.size}) and first_train_ts ({len(first)}) differ in length"
        )
    cut = pd.Timestamp(cutoff)
    cut = cut.tz_localize("UTC") if cut.tzinfo is None else cut.tz_convert("UTC")
    since = cut - pd.Timedelta(days=float(new_user_days))
    activity = np.where(counts <= 0, "cold", np.where(counts >= int(heavy_min), "heavy", "light"))
    is_new = (counts <= 0) | (first >= since).to_numpy(dtype=bool)
    return pd.DataFrame(
        {
            "activity": activity.astype(object),
            "user": np.where(is_new, "new", "returning").astype(object),
        }
    )


def head_item_mask(
    item_popularity: np.ndarray, head_share: float, n_items: int | None = None
) -> np.ndarray:
    """Boolean mask of the head items: the most popular items holding ``head_share`` of all
    training (user, item) pairs (ties by lower index); items past ``item_popularity`` are tail.
    """
    if not 0.0 < float(head_share) <= 1.0:
        raise ValueError(f"head_share must lie in (0, 1], got {head_share!r}")
    pop = np.asarray(item_popularity, dtype=np.float64).ravel()
    size = pop.size if n_items is None else int(n_items)
    mask = np.zeros(size, dtype=bool)
    total = pop.sum()
    if total <= 0:
        return mask
    order = np.argsort(-pop, kind="stable")
    cum = np.cumsum(pop[order])
    n_head = int(np.searchsorted(cum, np.round(float(head_share) * total, 9), side="left")) + 1
    head = order[: min(n_head, pop.size)]
    mask[head[head < size]] = True
    return mask


def restrict_relevant(relevant: sp.csr_matrix, keep: np.ndarray) -> sp.csr_matrix:
    """``relevant`` with only the columns where ``keep`` is True (shape unchanged)."""
    rel = _binary_csr(relevant, "relevant")
    keep = np.asarray(keep, dtype=bool).ravel()
    full = np.zeros(rel.shape[1], dtype=bool)
    full[: min(keep.size, full.size)] = keep[: full.size]
    rel.data = np.where(full[rel.indices], rel.data, 0).astype(rel.data.dtype)
    rel.eliminate_zeros()
    return rel


def recent_item_popularity(
    events: pd.DataFrame, item_ids: pd.Index, cutoff: pd.Timestamp, days: float
) -> np.ndarray:
    """Distinct users per item with an event in ``[cutoff - days, cutoff)`` (index order of
    ``item_ids``; items not in ``item_ids`` are ignored). ``events`` needs ``user_id``,
    ``item_id``, ``event_ts``."""
    missing = {"user_id", "item_id", "event_ts"} - set(events.columns)
    if missing:
        raise ValueError(f"events lack column(s) {sorted(missing)}")
    if not float(days) > 0:
        raise ValueError(f"days must be > 0, got {days!r}")
    cut = pd.Timestamp(cutoff)
    ts = pd.to_datetime(events["event_ts"], utc=True)
    cut = cut.tz_localize("UTC") if cut.tzinfo is None else cut.tz_convert("UTC")
    window = (ts >= cut - pd.Timedelta(days=float(days))) & (ts < cut)
    pairs = events.loc[window.to_numpy(), ["user_id", "item_id"]].drop_duplicates()
    idx = pd.Index(item_ids).get_indexer(pairs["item_id"])
    return np.bincount(idx[idx >= 0], minlength=len(item_ids)).astype(np.int64)


def popularity_order(primary: np.ndarray, secondary: np.ndarray | None = None) -> np.ndarray:
    """Item indices by ``primary`` descending, then ``secondary`` descending, then index."""
    p = np.asarray(primary)
    keys = [np.arange(p.size)]
    if secondary is not None:
        s = np.asarray(secondary)
        if s.shape != p.shape:
            raise ValueError(f"secondary must have shape {p.shape}, got {s.shape}")
        keys.append(-s.astype(np.float64))
    keys.append(-p.astype(np.float64))
    return np.lexsort(keys).astype(np.int64)


@dataclass
class Evaluation:
    """What :func:`evaluate_models` returns; the pipeline writes it to ``eval/report.json``.

    Attributes:
        metrics: model -> summary of :func:`ranking_metrics` over the headline (warm) users.
        curves: model -> popularity-bias curve at ``curve_k``.
        slices: model -> ``"<dimension>=<value>"`` -> ``{"n_users": int, "<metric>@<k>": mean}``.
        paired: ``"<reference>_vs_<other>"`` -> ``"<metric>@<k>"`` -> :meth:`BootstrapCI.to_dict`.
        per_user: one row per (model, evaluated user): ``model``, ``user_index`` (row of the
            inputs), ``user_id`` (when given), ``in_headline``, the label columns and the
            per-user metric columns.
        notes: what was skipped and why (e.g. ILD without item features).
        seconds: wall time of the whole evaluation.
    """

    metrics: dict[str, dict[str, float]]
    curves: dict[str, dict[str, Any]]
    slices: dict[str, dict[str, dict[str, float]]]
    paired: dict[str, dict[str, dict[str, float]]]
    per_user: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _slice_means(
    frame: pd.DataFrame, column: str, values: Sequence[str], metrics: Sequence[str]
) -> dict[str, dict[str, float]]:
    """``"<column>=<value>"`` -> n_users and the NaN-skipping mean of each metric column."""
    out: dict[str, dict[str, float]] = {}
    if column not in frame.columns:
        return out
    grouped = frame.groupby(column, sort=False)[list(metrics)]
    means = grouped.mean()
    sizes = grouped.size()
    for v in values:
        entry: dict[str, float] = {"n_users": int(sizes.get(v, 0))}
        if entry["n_users"]:
            entry.update({m: float(means.at[v, m]) for m in metrics})
        out[f"{column}={v}"] = entry
    return out


def evaluate_models(
    lists: Mapping[str, np.ndarray],
    relevant: sp.csr_matrix,
    ks: Sequence[int],
    *,
    warm: np.ndarray | None = None,
    labels: pd.DataFrame | None = None,
    head_items: np.ndarray | None = None,
    user_ids: Sequence[Any] | np.ndarray | None = None,
    n_catalog: int | None = None,
    item_popularity: np.ndarray | None = None,
    n_train_users: int | None = None,
    item_features: np.ndarray | sp.spmatrix | None = None,
    curve_k: int | None = None,
    reference: str = "candidate",
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int | None = 0,
) -> Evaluation:
    """Score several models' lists on one holdout: headline metrics, slices, paired CIs.

    Every model is judged on the same rows of ``relevant`` (the frozen holdout); the caller
    has applied the same seen-item filter to every list. Rows where ``warm`` is False (cold
    users: no training events) are scored only in the ``activity=cold`` slice; all headline
    figures, the other slices and the paired bootstrap are over the warm rows (see the
    module docstring, "Slices").

    Args:
        lists: model name -> ``(n_rows, N)`` top-N item indices (``-1`` padded).
        relevant: ``(n_rows, n_items)`` holdout matrix.
        ks: cut-offs.
        warm: bool per row; default: every row is warm.
        labels: per-row slice labels, columns ``activity`` and/or ``user``
            (see :func:`user_slice_labels`); without it only ``items`` slices are made.
        head_items: bool mask over the columns of ``relevant`` (see :func:`head_item_mask`);
            without it no ``items`` slices are made.
        user_ids: external id per row, copied to ``per_user``.
        n_catalog, item_popularity, n_train_users, item_features: as in
            :func:`ranking_metrics`.
        curve_k: the k of the reported popularity-bias curve (default: the smallest k).
        reference: the model every other model is compared with in ``paired``.
        n_boot, confidence, seed: the paired bootstrap (:func:`paired_bootstrap_table`).

    Raises:
        ValueError: on an unknown ``reference``, or inputs whose row counts disagree.
    """
    t0 = time.perf_counter()
    ks_list = _validate_ks(ks)
    rel = _binary_csr(relevant, "relevant")
    n_rows = rel.shape[0]
    if reference not in lists:
        raise ValueError(f"reference model {reference!r} is not among the lists {sorted(lists)}")
    warm_mask = np.ones(n_rows, dtype=bool) if warm is None else np.asarray(warm, dtype=bool)
    if warm_mask.shape != (n_rows,):
        raise ValueError(f"warm must have one entry per row ({n_rows}), got {warm_mask.shape}")
    if labels is not None and len(labels) != n_rows:
        raise ValueError(f"labels must have one row per holdout row ({n_rows}), got {len(labels)}")
    if user_ids is not None and len(user_ids) != n_rows:
        raise ValueError(f"user_ids must have one entry per row ({n_rows}), got {len(user_ids)}")
    curve_k = min(ks_list) if curve_k is None else int(curve_k)
    extra = {
        "n_catalog": n_catalog,
        "item_popularity": item_popularity,
        "n_train_users": n_train_users,
        "item_features": item_features,
    }
    warm_rows = np.flatnonzero(warm_mask)
    cold_rows = np.flatnonzero(~warm_mask)
    rel_warm, rel_cold = rel[warm_rows], rel[cold_rows]
    rel_parts = {}
    if head_items is not None:
        rel_parts = {
            g: restrict_relevant(rel_warm, m)
            for g, m in (("head", head_items), ("tail", ~np.asarray(head_items, dtype=bool)))
        }
    accuracy_cols = [f"{m}@{k}" for k in ks_list for m in PER_USER_METRICS]
    notes = (
        []
        if item_features is not None
        else ["ild@k skipped: no item features (intra-list diversity needs item feature vectors)"]
    )

    ids = None  # object array of the external ids (once; not by iterating an Arrow array)
    if isinstance(user_ids, (pd.Index, pd.Series)):
        ids = user_ids.to_numpy(dtype=object)
    elif user_ids is not None:
        ids = np.asarray(user_ids, dtype=object)
    metrics: dict[str, dict[str, float]] = {}
    curves: dict[str, dict[str, Any]] = {}
    slices: dict[str, dict[str, dict[str, float]]] = {}
    warm_frames: dict[str, pd.DataFrame] = {}
    frames: list[pd.DataFrame] = []
    for name, top in lists.items():
        top = np.asarray(top)
        if top.ndim != 2 or top.shape[0] != n_rows:
            raise ValueError(f"lists[{name!r}] must have shape ({n_rows}, N), got {top.shape}")
        main = ranking_metrics(top[warm_rows], rel_warm, ks_list, **extra)
        metrics[name] = main.summary
        curve = main.curves.get(curve_k)
        if curve is None:  # curve_k not among ks: compute it on its own
            only = ranking_metrics(top[warm_rows], rel_warm, [curve_k], n_catalog=n_catalog)
            curve = only.curves[curve_k]
        curves[name] = curve
        parts = [
            main.per_user.assign(
                user_index=warm_rows[main.per_user["user_index"].to_numpy()], in_headline=True
            )
        ]
        if cold_rows.size:
            cold = ranking_metrics(top[cold_rows], rel_cold, ks_list, **extra)
            parts.append(
                cold.per_user.assign(
                    user_index=cold_rows[cold.per_user["user_index"].to_numpy()], in_headline=False
                )
            )
        frame = pd.concat(parts, ignore_index=True)
        if labels is not None:
            lab = labels.reset_index(drop=True).iloc[frame["user_index"].to_numpy()]
            for col in lab.columns:
                frame[col] = lab[col].to_numpy()
        if ids is not None:
            frame.insert(0, "user_id", ids[frame["user_index"].to_numpy()])
        frame.insert(0, "model", name)
        metric_cols = [c for c in frame.columns if "@" in c]
        model_slices: dict[str, dict[str, float]] = {}
        if labels is not None:
            model_slices.update(_slice_means(frame, "activity", ACTIVITY_TIERS, metric_cols))
            headline = frame.loc[frame["in_headline"]]
            model_slices.update(_slice_means(headline, "user", USER_TYPES, metric_cols))
        for group, rel_g in rel_parts.items():
            res = ranking_metrics(top[warm_rows], rel_g, ks_list, n_catalog=n_catalog)
            n_group = int(res.summary["n_users_evaluated"])
            model_slices[f"items={group}"] = {
                "n_users": n_group,
                **({c: res.summary[c] for c in accuracy_cols} if n_group else {}),
            }
        slices[name] = model_slices
        warm_frames[name] = frame.loc[frame["in_headline"]].reset_index(drop=True)
        frames.append(frame)

    ref = warm_frames[reference]
    others = {name: other for name, other in warm_frames.items() if name != reference}
    for other in others.values():
        if not np.array_equal(ref["user_index"].to_numpy(), other["user_index"].to_numpy()):
            raise RuntimeError("per-user frames of the models are not aligned")  # cannot happen
    # one set of resamples for every comparison (same seed: the CIs each comparison gets alone)
    tables = paired_bootstrap_tables(ref, others, accuracy_cols, n_boot, confidence, seed)
    paired: dict[str, dict[str, dict[str, float]]] = {
        f"{reference}_vs_{name}": {c: ci.to_dict() for c, ci in cis.items()}
        for name, cis in tables.items()
    }

    per_user = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    seconds = time.perf_counter() - t0
    log.info(
        "evaluated %d models x %d holdout users (%d warm, %d cold) at k=%s in %.2fs "
        "(%.0f user-lists/s)",
        len(lists),
        n_rows,
        warm_rows.size,
        cold_rows.size,
        ks_list,
        seconds,
        len(lists) * n_rows / max(seconds, 1e-9),
    )
    return Evaluation(metrics, curves, slices, paired, per_user, notes, seconds)


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


# --- the holdout inputs of the pipeline's evaluate stage -----------------------------------


@dataclass
class HoldoutInputs:
    """Everything the pipeline's evaluate stage scores on, built by :func:`holdout_inputs`.

    Attributes:
        users: the holdout users (sorted external ids); row ``r`` of every matrix below.
        warm: bool per user: known to the candidate (has training events).
        eval_items: the eval item space: the candidate's items (its index order), then the
            holdout items the candidate does not know (sorted); one more dummy column follows.
        relevant: ``(len(users), len(eval_items) + 1)`` holdout matrix (entries: event counts).
        seen: ``(len(users), candidate items)`` training pairs of each user (the seen filter).
        recent: per candidate item, the distinct users with a training event in the
            ``recent_days`` before the cutoff (:func:`recent_item_popularity`).
        train_counts: distinct training items of every training user (heavy threshold).
        user_counts: distinct training items per holdout user (0: cold).
        first_ts: first training event per holdout user (NaT: none), positional.
        cutoff: the train/holdout split time.
        source: ``"codes"`` (the split files' ``user_idx`` / ``item_idx`` into the snapshot's id
            maps) or ``"strings"`` (the string ids: files without codes).
    """

    users: pd.Index
    warm: np.ndarray
    eval_items: pd.Index
    relevant: sp.csr_matrix
    seen: sp.csr_matrix
    recent: np.ndarray
    train_counts: np.ndarray
    user_counts: np.ndarray
    first_ts: pd.Series
    cutoff: pd.Timestamp
    source: str
    _seen_for: Callable[[Any], sp.csr_matrix] | None = field(default=None, repr=False)

    def seen_for(self, bundle: Any) -> sp.csr_matrix:
        """The seen filter (same pairs as :attr:`seen`) in another model's item space: rows
        are :attr:`users`, columns ``bundle.item_ids``; items it lacks are dropped."""
        if self._seen_for is None:
            raise RuntimeError("these inputs were not built by holdout_inputs")
        return self._seen_for(bundle)

    def to_eval_space(self, items: np.ndarray, item_ids: pd.Index) -> np.ndarray:
        """Item indices of a model with ``item_ids`` (``-1`` padded) -> eval item indices.

        Items outside the eval space go to the never-relevant dummy column ``len(eval_items)``.
        """
        pos = self.eval_items.get_indexer(pd.Index(item_ids))
        pos = np.where(pos < 0, len(self.eval_items), pos).astype(np.int64)
        items = np.asarray(items)
        return np.where(items >= 0, pos[np.maximum(items, 0)], -1)


def holdout_inputs(
    train_path: str | Path,
    holdout_path: str | Path,
    bundle: Any,
    *,
    recent_days: float,
    cutoff: pd.Timestamp | None = None,
    users_map: str | Path | None = None,
    items_map: str | Path | None = None,
) -> HoldoutInputs:
    """Read the split files once and build the evaluation inputs for a candidate model.

    ``bundle`` is the candidate (a :class:`~include.recsys.recommend.ModelBundle`: its
    ``user_ids`` / ``item_ids``). With the snapshot's
    id maps (``users_map`` / ``items_map``) and split files that carry ``user_idx`` /
    ``item_idx`` (all valid), everything is built from those integer codes: no string column
    is read. Otherwise (older work folders, hand-made files, missing ids) the string ids are
    used. Both routes give the same inputs (``tests/unit/test_evaluate_inputs.py``).

    Raises:
        ValueError: if a file lacks the columns it needs.
    """
    got = None
    if users_map and items_map:
        got = _inputs_from_codes(
            train_path, holdout_path, bundle, recent_days, cutoff, users_map, items_map
        )
    if got is None:
        got = _inputs_from_strings(train_path, holdout_path, bundle, recent_days, cutoff)
    log.info(
        "evaluation inputs from %s: %d holdout users (%d warm), %d eval items, %d relevant and "
        "%d seen pairs",
        got.source, len(got.users), int(got.warm.sum()), len(got.eval_items), got.relevant.nnz,
        got.seen.nnz,
    )
    return got


def _by_id(s: pd.Series) -> pd.Series:
    """A groupby result keyed by a categorical id column, re-keyed by the plain ids."""
    if isinstance(s.index, pd.CategoricalIndex):
        s.index = pd.Index(s.index.categories.take(s.index.codes), name=s.index.name)
    return s


def _inputs_from_strings(
    train_path: str | Path,
    holdout_path: str | Path,
    bundle: Any,
    recent_days: float,
    cutoff: pd.Timestamp | None,
) -> HoldoutInputs:
    """:func:`holdout_inputs` from the string ids (files without integer codes)."""
    from include.recsys.recommend import seen_matrix

    item_ids = bundle.item_ids

    # string ids as categoricals (Parquet dictionaries): the lookups below (isin, get_indexer,
    # drop_duplicates, groupby) run on integer codes, with no 13M-row string columns in memory
    train_df = pd.read_parquet(
        train_path, columns=["user_id", "item_id", "event_ts"], read_dictionary=["user_id", "item_id"]
    )
    holdout = pd.read_parquet(holdout_path, columns=["user_id", "item_id"])
    cutoff = pd.Timestamp(cutoff if cutoff is not None else train_df["event_ts"].max())
    users = pd.Index(pd.unique(holdout["user_id"])).sort_values()
    warm = np.asarray(users.isin(bundle.user_ids), dtype=bool)
    seen_df = train_df.loc[train_df["user_id"].isin(users), ["user_id", "item_id"]]
    eval_items = item_ids.append(pd.Index(pd.unique(holdout["item_id"])).difference(item_ids))
    rows = users.get_indexer(holdout["user_id"])
    cols = eval_items.get_indexer(holdout["item_id"])
    relevant = sp.csr_matrix(
        (np.ones(len(holdout), np.float32), (rows, cols)), shape=(len(users), len(eval_items) + 1)
    )
    relevant.sum_duplicates()
    del holdout, rows, cols

    def seen_for(model: Any) -> sp.csr_matrix:
        return seen_matrix(model, users, seen_df)

    seen = seen_for(bundle)
    recent = recent_item_popularity(train_df, item_ids, cutoff, recent_days)
    pairs = train_df[["user_id", "item_id"]].drop_duplicates()
    counts = _by_id(pairs.groupby("user_id", observed=True).size())
    del pairs
    first_ts = _by_id(train_df.groupby("user_id", observed=True)["event_ts"].min()).reindex(users)
    del train_df
    return HoldoutInputs(
        users=users,
        warm=warm,
        eval_items=eval_items,
        relevant=relevant,
        seen=seen,
        recent=recent,
        train_counts=counts.to_numpy(),
        user_counts=counts.reindex(users).fillna(0).to_numpy().astype(np.int64),
        first_ts=first_ts.reset_index(drop=True),
        cutoff=cutoff,
        source="strings",
        _seen_for=seen_for,
    )


def _code_positions(codes_map: pd.Index, ids: pd.Index) -> np.ndarray:
    """Per code of the sorted ``codes_map``: the position of that id in ``ids`` (-1: absent)."""
    out = np.full(len(codes_map), -1, dtype=np.int64)
    at = codes_map.get_indexer(pd.Index(ids))
    ok = at >= 0
    out[at[ok]] = np.flatnonzero(ok)
    return out


def _remap_columns(m: sp.csr_matrix, position: np.ndarray, n_cols: int) -> sp.csr_matrix:
    """``m`` with column ``c`` moved to ``position[c]`` (dropped where -1), canonical CSR."""
    cols = position[m.indices]
    keep = cols >= 0
    if keep.all():
        out = sp.csr_matrix((m.data.copy(), cols.astype(np.int32), m.indptr.copy()), shape=(m.shape[0], n_cols))
    else:
        row_len = np.bincount(_row_ids(m.indptr)[keep], minlength=m.shape[0])
        indptr = np.concatenate([[0], np.cumsum(row_len)]).astype(m.indptr.dtype)
        out = sp.csr_matrix(
            (m.data[keep], cols[keep].astype(np.int32), indptr), shape=(m.shape[0], n_cols)
        )
    kept = position[position >= 0]
    if kept.size > 1 and not bool(np.all(np.diff(kept) > 0)):  # order changed within rows
        out.has_sorted_indices = False
    out.sort_indices()
    out.has_canonical_format = True
    return out


def _inputs_from_codes(
    train_path: str | Path,
    holdout_path: str | Path,
    bundle: Any,
    recent_days: float,
    cutoff: pd.Timestamp | None,
    users_map: str | Path,
    items_map: str | Path,
) -> HoldoutInputs | None:
    """:func:`holdout_inputs` from the ``user_idx`` / ``item_idx`` codes; None when the files
    lack them, a code is missing (-1) or out of range, or the maps are not strictly sorted
    (the string route then decides, with its own semantics)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from include.recsys.data import CODE_COLUMNS, IdMap

    for path in (train_path, holdout_path):
        if not set(CODE_COLUMNS) <= set(pq.read_schema(path).names):
            log.info("%s has no %s columns: evaluation inputs from the string ids", path, CODE_COLUMNS)
            return None
    user_map, item_map = IdMap.read(users_map, "user").ids, IdMap.read(items_map, "item").ids
    for name, ids in (("user", user_map), ("item", item_map)):
        if not (ids.is_monotonic_increasing and ids.is_unique):
            log.warning("%s id map is not strictly sorted: evaluation inputs from the string ids", name)
            return None
    n_u, n_i = len(user_map), len(item_map)
    hold = pq.read_table(holdout_path, columns=list(CODE_COLUMNS))
    train = pq.read_table(train_path, columns=[*CODE_COLUMNS, "event_ts"])
    arrays = {}
    for label, table in (("holdout", hold), ("train", train)):
        for col, n in zip(CODE_COLUMNS, (n_u, n_i), strict=True):
            c = pc.fill_null(table.column(col), -1).to_numpy()  # int32: half the memory
            if c.size and (int(c.min()) < 0 or int(c.max()) >= n):
                log.warning(
                    "%s %s holds missing or out-of-range codes (id map of %d): evaluation inputs "
                    "from the string ids", label, col, n,
                )
                return None
            arrays[label, col] = c
    hu, hi = arrays["holdout", "user_idx"], arrays["holdout", "item_idx"]
    tu, ti = arrays["train", "user_idx"], arrays["train", "item_idx"]
    ts_type = train.schema.field("event_ts").type
    if not pa.types.is_timestamp(ts_type):
        log.warning("%s: event_ts is %s, not a timestamp: evaluation inputs from the string ids", train_path, ts_type)
        return None
    ts = train.column("event_ts")
    if cutoff is None:
        cutoff = pd.Timestamp(pc.max(ts).as_py())
    cutoff = pd.Timestamp(cutoff)
    ts_int = pc.fill_null(ts.cast(pa.int64()), np.iinfo(np.int64).min).to_numpy()
    del hold, train, ts, arrays

    users_codes = np.flatnonzero(np.bincount(hu, minlength=n_u))  # sorted, distinct
    users = user_map[users_codes]
    row_of = np.full(n_u, -1, dtype=np.int64)
    row_of[users_codes] = np.arange(users_codes.size)
    warm = _code_positions(user_map, bundle.user_ids)[users_codes] >= 0
    item_pos = _code_positions(item_map, bundle.item_ids)
    n_model = len(bundle.item_ids)
    extra = np.flatnonzero(np.bincount(hi[item_pos[hi] < 0], minlength=n_i))
    eval_col = item_pos.copy()
    eval_col[extra] = n_model + np.arange(extra.size)
    eval_items = bundle.item_ids.append(item_map[extra])
    relevant = sp.csr_matrix(
        (np.ones(hu.size, np.float32), (row_of[hu], eval_col[hi])),
        shape=(users.size, len(eval_items) + 1),
    )
    relevant.sum_duplicates()
    del hu, hi, row_of, eval_col

    # distinct training (user, item) pairs of every snapshot user: one canonical CSR
    pairs = sp.csr_matrix((np.ones(tu.size, np.float32), (tu, ti)), shape=(n_u, n_i))
    pairs.sum_duplicates()
    counts = np.diff(pairs.indptr).astype(np.int64)
    held = pairs[users_codes]
    del pairs

    def seen_for(model: Any) -> sp.csr_matrix:
        return _remap_columns(held, _code_positions(item_map, model.item_ids), len(model.item_ids))

    seen = _remap_columns(held, item_pos, n_model)

    # recent popularity: distinct (user, item) pairs in [cutoff - recent_days, cutoff)
    since, until = _time_bounds(cutoff, recent_days, ts_type.unit)
    window = (ts_int >= since) & (ts_int < until)
    keys = _distinct(tu[window].astype(np.int64) * n_i + ti[window])
    per_code = np.bincount(keys % n_i, minlength=n_i).astype(np.int64)
    model_codes = item_map.get_indexer(bundle.item_ids)
    recent = np.where(model_codes >= 0, per_code[np.maximum(model_codes, 0)], 0).astype(np.int64)
    del window, keys

    # first training event per user (NaT events ignored, as groupby's min does)
    nat, never = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    valid = ts_int != nat
    first = np.full(n_u, never, dtype=np.int64)
    np.minimum.at(first, tu[valid], ts_int[valid])
    first = first[users_codes]
    first[first == never] = nat
    first_ts = pd.Series(first.view(f"datetime64[{ts_type.unit}]"))  # the column's dtype:
    if ts_type.tz is not None:  # UTC instants, shown in the column's time zone
        first_ts = first_ts.dt.tz_localize("UTC").dt.tz_convert(ts_type.tz)
    return HoldoutInputs(
        users=users,
        warm=warm,
        eval_items=eval_items,
        relevant=relevant,
        seen=seen,
        recent=recent,
        train_counts=counts[counts > 0],
        user_counts=counts[users_codes],
        first_ts=first_ts,
        cutoff=cutoff,
        source="codes",
        _seen_for=seen_for,
    )


def _distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (``np.unique`` without its hash table, much slower here)."""
    out = np.sort(values)
    if out.size:
        out = out[np.concatenate([[True], out[1:] != out[:-1]])]
    return out


def _time_bounds(cutoff: pd.Timestamp, days: float, unit: str) -> tuple[int, int]:
    """``[cutoff - days, cutoff)`` as integer bounds on timestamps stored in ``unit`` (UTC):
    ``ts >= lo and ts < hi`` on the integers is the same test on the instants."""
    cut = pd.Timestamp(cutoff)
    cut = cut.tz_localize("UTC") if cut.tzinfo is None else cut.tz_convert("UTC")
    per = int(pd.Timedelta(1, unit=unit).value)  # nanoseconds per stored unit

    def ceil_units(t: pd.Timestamp) -> int:
        return -(-int(t.value) // per)

    return ceil_units(cut - pd.Timedelta(days=float(days))), ceil_units(cut)
