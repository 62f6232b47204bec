"""Beyond-accuracy building blocks: Gini of exposure, the popularity-bias curve, novelty's
self-information and intra-list diversity (definitions: the package docstring)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

log = logging.getLogger(__name__)


#: Shares of all recommendation slots at which the popularity-bias curve is read.
DEFAULT_SHARES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

_ILD_CHUNK = 1 << 23  # feature sums (users x d) held per user block of the ILD pass


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
