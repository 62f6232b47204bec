"""Confidence of the user-item matrix ALS is trained on, from several signals.

1. **Event-type weights** (``config.event_weights``: view 1, click 2, cart 3, purchase 5) or an
   explicit ``weight`` / ``rating`` column: set per row by ``data.add_weights``.
2. **Recency decay** (optional): each event's weight is multiplied by
   ``0.5 ** (age_days / half_life_days)``, the age measured from the *training cutoff* (the end
   of the training period), never from ``now()``: the same data gives the same matrix.
3. **One entry per (user, item) pair**: the decayed weights of all events of a pair are summed
   (no duplicate pairs reach ALS).
4. **Re-weighting** (optional) of the summed matrix: BM25 or TF-IDF, with implicit's own
   ``bm25_weight`` / ``tfidf_weight`` applied to the item x user matrix as implicit's examples do
   (IDF over users: a user who touched everything says little about an item; length
   normalisation over items: very popular items are damped). They return float64 COO; the
   result here is CSR float32 with strictly positive values (an IDF can turn negative for a
   user present on nearly every item; such weights are clipped to a small positive value so
   they stay "liked, barely" instead of becoming "disliked" for implicit).

ALS then uses ``confidence = 1 + alpha * value``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

log = logging.getLogger(__name__)


WEIGHTINGS = ("none", "bm25", "tfidf")

MIN_WEIGHT = 1e-3  # floor for re-weighted values (see the module docstring)


@dataclass(frozen=True)
class ConfidenceSpec:
    """How the matrix is built (all of it is recorded as MLflow params)."""

    recency_half_life_days: float = 0.0
    weighting: str = "none"
    bm25_k1: float = 100.0
    bm25_b: float = 0.8

    @classmethod
    def from_config(cls, cfg) -> ConfidenceSpec:
        return cls(
            recency_half_life_days=float(cfg.recency_half_life_days),
            weighting=str(cfg.weighting),
            bm25_k1=float(cfg.bm25_k1),
            bm25_b=float(cfg.bm25_b),
        )

    def params(self) -> dict[str, str]:
        return {
            "confidence.recency_half_life_days": str(self.recency_half_life_days),
            "confidence.weighting": self.weighting,
            "confidence.bm25_k1": str(self.bm25_k1),
            "confidence.bm25_b": str(self.bm25_b),
        }


def recency_decay(event_ts: pd.Series, cutoff: pd.Timestamp, half_life_days: float) -> np.ndarray:
    """Per-event multiplier ``0.5 ** (age / half_life)`` with the age counted from ``cutoff``.

    ``half_life_days <= 0`` disables the decay (all ones). Events at or after the cutoff would
    have a negative age: they must not be here (the caller's leak check), and are refused.
    """
    n = len(event_ts)
    if half_life_days <= 0:
        return np.ones(n, dtype=np.float32)
    cutoff = pd.Timestamp(cutoff)
    ts = pd.to_datetime(event_ts, utc=True)
    if cutoff.tzinfo is None:
        cutoff = cutoff.tz_localize("UTC")
    age_days = (cutoff - ts).dt.total_seconds().to_numpy(np.float64) / 86400.0
    if n and age_days.min() < 0:
        raise ValueError(
            f"recency decay: {int((age_days < 0).sum())} event(s) are after the cutoff {cutoff}"
        )
    return np.power(0.5, age_days / half_life_days).astype(np.float32)


def reweight(user_items: sp.csr_matrix, weighting: str, k1: float = 100.0, b: float = 0.8) -> sp.csr_matrix:
    """BM25 / TF-IDF re-weighting of a users x items CSR (``"none"`` returns it unchanged)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if weighting == "none" or user_items.nnz == 0:
        return user_items
    from implicit.nearest_neighbours import bm25_weight, tfidf_weight

    item_users = user_items.T.tocsr()
    if weighting == "bm25":
        if k1 <= 0 or not 0 <= b <= 1:
            raise ValueError(f"bm25 needs K1 > 0 and 0 <= B <= 1, got K1={k1}, B={b}")
        weighted = bm25_weight(item_users, K1=k1, B=b)
    else:
        weighted = tfidf_weight(item_users)
    out = sp.csr_matrix(weighted.T, dtype=np.float32)  # float64 COO -> float32 CSR
    out.sum_duplicates()
    out.sort_indices()
    bad = ~np.isfinite(out.data)
    if bad.any():
        raise ValueError(f"{weighting} weighting produced {int(bad.sum())} non-finite value(s)")
    np.maximum(out.data, MIN_WEIGHT, out=out.data)
    return out


def confidence_matrix(
    df: pd.DataFrame,
    users,
    items,
    spec: ConfidenceSpec,
    cutoff: pd.Timestamp | None = None,
    *,
    codes: tuple[np.ndarray, np.ndarray] | None = None,
) -> sp.csr_matrix:
    """users x items CSR float32: event weights x recency decay, summed per pair, re-weighted.

    ``users`` / ``items`` are :class:`include.recsys.core.ids.IdMap`; rows of unknown ids are
    dropped. ``cutoff`` is the end of the training period (default: the newest event).
    ``codes``: the rows' user and item indices into the maps (the trainer's, from the split's
    codes); without them the ``user_id`` / ``item_id`` columns are looked up (tuning).
    """
    from include.recsys.core.ids import csr_from_codes

    w = df["weight"].to_numpy(np.float32)
    if spec.recency_half_life_days > 0:
        ref = cutoff if cutoff is not None else df["event_ts"].max()
        # an old interaction fades but stays a positive (a stored 0 would not be one)
        w = np.maximum(w * recency_decay(df["event_ts"], ref, spec.recency_half_life_days), MIN_WEIGHT)
    if codes is None:
        codes = users.index_of(df["user_id"]), items.index_of(df["item_id"])
    ui = csr_from_codes(codes[0], codes[1], w, (len(users), len(items)))  # sums duplicate pairs
    return reweight(ui, spec.weighting, spec.bm25_k1, spec.bm25_b)
