"""Unit tests for ``include.recsys.backends.weighting`` (the confidence matrix ALS is trained on)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from include.recsys.backends.weighting import (
    ConfidenceSpec,
    confidence_matrix,
    recency_decay,
    reweight,
)
from include.recsys.core.ids import IdMap

CUTOFF = pd.Timestamp("2026-01-31", tz="UTC")


def _events() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": ["a", "a", "a", "b", "b", "c"],
            "item_id": ["x", "x", "y", "x", "z", "z"],
            "event_ts": pd.to_datetime(
                ["2026-01-30", "2026-01-20", "2026-01-30", "2026-01-21", "2026-01-30", "2026-01-01"], utc=True
            ),
            "weight": np.array([1.0, 5.0, 2.0, 3.0, 1.0, 1.0], np.float32),
        }
    )


def _maps(df):
    return IdMap.from_values(df["user_id"]), IdMap.from_values(df["item_id"])


def test_duplicate_pairs_are_summed_into_one_entry() -> None:
    df = _events()
    m = confidence_matrix(df, *_maps(df), ConfidenceSpec())
    assert m.dtype == np.float32 and m.has_canonical_format
    assert m.nnz == 5  # (a, x) twice -> one entry
    assert m[0, 0] == pytest.approx(6.0)  # 1 + 5


def test_recency_decay_counts_age_from_the_cutoff_not_now() -> None:
    ts = pd.Series(pd.to_datetime(["2026-01-31", "2026-01-24", "2026-01-17"], utc=True))
    np.testing.assert_allclose(recency_decay(ts, CUTOFF, 7.0), [1.0, 0.5, 0.25], rtol=1e-6)
    np.testing.assert_allclose(recency_decay(ts, CUTOFF, 0.0), [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="after the cutoff"):
        recency_decay(ts, pd.Timestamp("2026-01-20", tz="UTC"), 7.0)


def test_recency_decay_in_the_matrix() -> None:
    df = _events()
    m = confidence_matrix(df, *_maps(df), ConfidenceSpec(recency_half_life_days=10.0), CUTOFF)
    # (a, x): 1 * 0.5**(1/10) + 5 * 0.5**(11/10)
    assert m[0, 0] == pytest.approx(0.5 ** 0.1 + 5 * 0.5 ** 1.1, rel=1e-5)
    # the same data and cutoff give the same matrix (no clock involved)
    again = confidence_matrix(df, *_maps(df), ConfidenceSpec(recency_half_life_days=10.0), CUTOFF)
    assert (m != again).nnz == 0


@pytest.mark.parametrize("scheme", ["bm25", "tfidf"])
def test_bm25_and_tfidf_on_float32_csr(scheme: str) -> None:
    rng = np.random.default_rng(0)
    dense = (rng.random((30, 12)) < 0.3) * rng.integers(1, 6, (30, 12))
    dense[:, 0] = 1  # an item every user has: its IDF is log(N) - log1p(N) < 0 in implicit
    ui = sp.csr_matrix(dense.astype(np.float32))
    out = reweight(ui, scheme, 10.0, 0.5)
    assert isinstance(out, sp.csr_matrix) and out.dtype == np.float32
    assert out.shape == ui.shape
    assert np.array_equal(out.indptr, ui.indptr) and np.array_equal(out.indices, ui.indices)  # same pairs
    assert np.isfinite(out.data).all() and (out.data > 0).all()


def test_reweight_refuses_unknown_scheme_and_bad_bm25() -> None:
    ui = sp.csr_matrix(np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match="weighting"):
        reweight(ui, "bm26")
    with pytest.raises(ValueError, match="K1"):
        reweight(ui, "bm25", k1=0.0)
    assert reweight(ui, "none") is ui


def test_params_recorded() -> None:
    p = ConfidenceSpec(recency_half_life_days=14, weighting="bm25", bm25_k1=50, bm25_b=0.5).params()
    assert p == {
        "confidence.recency_half_life_days": "14",
        "confidence.weighting": "bm25",
        "confidence.bm25_k1": "50",
        "confidence.bm25_b": "0.5",
    }
