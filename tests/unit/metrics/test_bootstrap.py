"""Paired bootstrap of ``include.recsys.metrics.ranking``: determinism, known answers, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from include.recsys.metrics.bootstrap import (
    paired_bootstrap,
    paired_bootstrap_table,
    paired_bootstrap_tables,
)


def test_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random(300), rng.random(300)
    first = paired_bootstrap(a, b, n_boot=500, seed=7)
    assert paired_bootstrap(a, b, n_boot=500, seed=7) == first
    other = paired_bootstrap(a, b, n_boot=500, seed=8)
    assert (other.lo, other.hi) != (first.lo, first.hi)
    assert other.mean_diff == first.mean_diff == pytest.approx(float(np.mean(a - b)))


def test_matches_the_textbook_algorithm() -> None:
    # one chunk for small n: draws = Generator(seed).integers(0, n, (n_boot, n))
    rng = np.random.default_rng(1)
    a, b = rng.random(50), rng.random(50)
    got = paired_bootstrap(a, b, n_boot=400, confidence=0.9, seed=3)
    d = a - b
    idx = np.random.default_rng(3).integers(0, 50, size=(400, 50))
    means = d[idx].mean(axis=1)
    assert got.lo == pytest.approx(np.quantile(means, 0.05), abs=1e-15)
    assert got.hi == pytest.approx(np.quantile(means, 0.95), abs=1e-15)
    assert (got.n_users, got.n_boot, got.confidence) == (50, 400, 0.9)


def test_known_answer_two_users() -> None:
    # d = [1, 0]: a resample's mean is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4, so the
    # 95% percentile interval is exactly [0, 1]
    ci = paired_bootstrap([1.0, 0.0], [0.0, 0.0], n_boot=4000, seed=0)
    assert (ci.mean_diff, ci.lo, ci.hi) == (0.5, 0.0, 1.0)


def test_known_answer_constant_difference() -> None:
    ci = paired_bootstrap(np.full(40, 0.75), np.full(40, 0.5), n_boot=200, seed=0)
    assert ci.mean_diff == pytest.approx(0.25)
    assert ci.lo == pytest.approx(0.25) and ci.hi == pytest.approx(0.25)


def test_large_sample_agrees_with_the_normal_interval() -> None:
    rng = np.random.default_rng(2)
    n = 20_000
    a = rng.normal(0.3, 1.0, n)
    ci = paired_bootstrap(a, np.zeros(n), n_boot=1000, seed=4)
    half = 1.959964 * a.std(ddof=1) / math.sqrt(n)
    assert (ci.hi - ci.lo) / 2 == pytest.approx(half, rel=0.1)
    assert (ci.lo + ci.hi) / 2 == pytest.approx(a.mean(), abs=0.1 * half)


def test_nan_pairs_are_dropped_and_empty_gives_nan() -> None:
    ci = paired_bootstrap([1.0, np.nan, 0.0], [0.0, 0.0, np.nan], n_boot=10)
    assert ci.n_users == 1 and ci.mean_diff == 1.0 and ci.lo == ci.hi == 1.0
    empty = paired_bootstrap([], [], n_boot=10)
    assert empty.n_users == 0 and math.isnan(empty.mean_diff) and math.isnan(empty.lo)
    assert empty.to_dict()["n_boot"] == 10


@pytest.mark.parametrize(
    ("a", "b", "kwargs"),
    [
        ([1.0, 2.0], [1.0], {}),
        (np.ones((2, 2)), np.ones((2, 2)), {}),
        ([1.0], [1.0], {"n_boot": 0}),
        ([1.0], [1.0], {"confidence": 1.0}),
        ([1.0], [1.0], {"confidence": 0.0}),
    ],
)
def test_invalid_inputs(a, b, kwargs) -> None:
    with pytest.raises(ValueError):
        paired_bootstrap(a, b, **kwargs)


def test_table_shares_resamples_with_single_calls() -> None:
    rng = np.random.default_rng(5)
    n = 120
    a = pd.DataFrame(
        {"x": rng.random(n), "y": rng.random(n), "z": rng.random(n), "w": rng.random(n)}
    )
    b = pd.DataFrame(
        {"x": rng.random(n), "y": rng.random(n), "z": rng.random(n), "w": rng.random(n)}
    )
    b.loc[3, "w"] = np.nan  # a NaN column is bootstrapped on its own, without that pair
    table = paired_bootstrap_table(a, b, ["x", "y", "z", "w"], n_boot=300, seed=11)
    assert list(table) == ["x", "y", "z", "w"]
    for col in ("x", "y", "z", "w"):
        single = paired_bootstrap(a[col], b[col], n_boot=300, seed=11)
        assert table[col].mean_diff == pytest.approx(single.mean_diff, rel=1e-12)
        assert table[col].lo == pytest.approx(single.lo, rel=1e-9)
        assert table[col].hi == pytest.approx(single.hi, rel=1e-9)
    assert table["w"].n_users == n - 1 and table["x"].n_users == n
    with pytest.raises(ValueError, match="missing"):
        paired_bootstrap_table(a, b, ["nope"])
    with pytest.raises(ValueError, match="same users"):
        paired_bootstrap_table(a, b.iloc[:-1], ["x"])
    assert paired_bootstrap_table(a, b, []) == {}


def test_many_resamples_are_chunked_deterministically() -> None:
    # n large enough that the resamples come in several chunks
    rng = np.random.default_rng(9)
    n = 70_000
    a, b = rng.random(n), rng.random(n)
    first = paired_bootstrap(a, b, n_boot=150, seed=1)
    assert paired_bootstrap(a, b, n_boot=150, seed=1) == first
    assert first.lo < first.mean_diff < first.hi


def test_tables_share_resamples_and_match_each_comparison_alone() -> None:
    # one set of draws for every comparison: each gets bit-for-bit what it gets on its own
    rng = np.random.default_rng(4)
    n = 500
    cols = ["p", "q", "r", "s"]
    a = pd.DataFrame(rng.random((n, 4)), columns=cols)
    others = {name: pd.DataFrame(rng.random((n, 4)), columns=cols) for name in ("x", "y", "z")}
    others["y"].loc[7, "q"] = np.nan  # bootstrapped on its own, without that pair
    narrow = {"w": pd.DataFrame(rng.random((n, 4)), columns=cols)}
    tables = paired_bootstrap_tables(a, others, cols, n_boot=200, seed=3)
    assert list(tables) == ["x", "y", "z"]
    for name, other in others.items():
        assert tables[name] == paired_bootstrap_table(a, other, cols, n_boot=200, seed=3)
    # two columns or fewer take the gather route; still the same draws
    assert paired_bootstrap_tables(a, narrow, cols[:2], n_boot=50, seed=1)["w"] == (
        paired_bootstrap_table(a, narrow["w"], cols[:2], n_boot=50, seed=1)
    )
    with pytest.raises(ValueError, match="same users"):
        paired_bootstrap_tables(a, {"x": others["x"].iloc[:-1]}, cols)
