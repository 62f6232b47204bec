"""Slices of the evaluation: holdout users by activity (cold/light/heavy) and age (new/returning),
items by popularity (head/tail), and the per-slice metric means of the report."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from include.recsys.core.ids import _binary_csr

log = logging.getLogger(__name__)


#: Slice values, in report order.
ACTIVITY_TIERS: tuple[str, ...] = ("cold", "light", "heavy")

USER_TYPES: tuple[str, ...] = ("new", "returning")

ITEM_GROUPS: tuple[str, ...] = ("head", "tail")


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
