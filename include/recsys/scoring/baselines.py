"""Non-personalised baselines the gate compares the model with: item orders by (recent)
popularity, and top-n popularity lists with each user's training items filtered."""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

from include.recsys.core.ids import _binary_csr

log = logging.getLogger(__name__)


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

    from include.recsys.scoring.recommend import ranked_filtered

    return ranked_filtered(order, csr[users_arr], n).astype(np.int64)
