"""Beyond-accuracy metrics of ``include.recsys.metrics.ranking`` on hand-worked fixtures.

coverage, Gini of exposure, novelty, intra-list diversity and the popularity-bias curve.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
import scipy.sparse as sp

from include.recsys.metrics.beyond import DEFAULT_SHARES, gini, popularity_curve
from include.recsys.metrics.ranking import ranking_metrics

INV_SQRT2 = 1 / math.sqrt(2)


def _csr(rows: Sequence[Sequence[int]], n_items: int) -> sp.csr_matrix:
    indptr = np.cumsum([0] + [len(r) for r in rows])
    indices = np.array([i for r in rows for i in r], dtype=np.int32)
    return sp.csr_matrix(
        (np.ones(indices.size, np.float32), indices, indptr), shape=(len(rows), n_items)
    )


# --------------------------------------------------------------------------------------
# Fixture: 5 catalog items, 5 users, N = 3.
#   u0: rel {1}  recs [0, 1, 2]
#   u1: rel {3}  recs [0, 2, 4]
#   u2: rel {4}  recs [0, -1, -1]   (one recommendation)
#   u3: rel {}   recs [4, 3, -1]    (no holdout: its items never count)
#   u4: rel {0}  recs [-1, -1, -1]  (no recommendations: novelty/ILD NaN, accuracy 0)
# exposure@1 = [3, 0, 0, 0, 0]; @2 = [3, 1, 1, 0, 0] (5 slots); @3 = [3, 1, 2, 0, 1] (7 slots)
# popularity (training users per item) = [8, 4, 2, 1, 0] of 8 training users
#   -> self-information -log2(max(pop, 1) / 8) = [0, 1, 2, 3, 3]
# features: item0 [1, 0], item1 [0, 1], item2 [1, 1], item3 [0, 0] (none), item4 [2, 0]
# --------------------------------------------------------------------------------------
TOP = np.array([[0, 1, 2], [0, 2, 4], [0, -1, -1], [4, 3, -1], [-1, -1, -1]])
REL = _csr([[1], [3], [4], [], [0]], 5)
POP = np.array([8, 4, 2, 1, 0])
FEATURES = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [2.0, 0.0]])


@pytest.fixture(scope="module")
def res():
    return ranking_metrics(
        TOP, REL, [1, 2, 3, 10], item_popularity=POP, n_train_users=8, item_features=FEATURES
    )


def test_coverage_and_gini(res) -> None:
    s = res.summary
    assert s["coverage@1"] == pytest.approx(1 / 5)
    assert s["coverage@2"] == pytest.approx(3 / 5)
    assert s["coverage@3"] == pytest.approx(4 / 5)  # {0, 1, 2, 4}: u3 (no holdout) adds no 3
    # @1: one item holds every slot -> (L - 1) / L
    assert s["gini@1"] == pytest.approx(4 / 5)
    # @2: ascending [0, 0, 1, 1, 3], weights 2j - 6 = [-4, -2, 0, 2, 4] -> 14 / (5 * 5)
    assert s["gini@2"] == pytest.approx(14 / 25)
    # @3: ascending [0, 1, 1, 2, 3] -> (-2 + 0 + 4 + 12) / (5 * 7)
    assert s["gini@3"] == pytest.approx(14 / 35)
    # k = 10 > N and > catalog: nothing more is shown, same exposure as @3
    assert s["gini@10"] == pytest.approx(s["gini@3"])
    assert s["coverage@10"] == pytest.approx(s["coverage@3"])


def test_gini_counts_never_recommended_catalog_items() -> None:
    # n_catalog 10 > relevant columns: 5 more items with zero exposure raise the Gini
    res = ranking_metrics(TOP, REL, [2], n_catalog=10)
    # ascending [0]*7 + [1, 1, 3], L = 10: weights 2j - 11 at j = 8, 9, 10 -> 5, 7, 9
    assert res.summary["gini@2"] == pytest.approx((5 + 7 + 3 * 9) / (10 * 5))
    assert res.summary["coverage@2"] == pytest.approx(3 / 10)


def test_novelty(res) -> None:
    pu = res.per_user.set_index("user_index")
    np.testing.assert_allclose(pu["novelty@1"].loc[[0, 1, 2]], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(pu["novelty@2"].loc[[0, 1, 2]], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(pu["novelty@3"].loc[[0, 1, 2]], [1.0, 5 / 3, 0.0])
    assert math.isnan(pu.loc[4, "novelty@3"])  # no recommendation: undefined, not 0
    assert res.summary["novelty@2"] == pytest.approx(0.5)
    assert res.summary["novelty@3"] == pytest.approx((1 + 5 / 3 + 0) / 3)
    assert res.summary["novelty@10"] == pytest.approx(res.summary["novelty@3"])


def test_intra_list_diversity(res) -> None:
    pu = res.per_user.set_index("user_index")
    # u0 @2: items 0, 1 orthogonal -> 1; u1 @2: items 0, 2 at 45 degrees -> 1 - 1/sqrt2
    np.testing.assert_allclose(pu["ild@2"].loc[[0, 1]], [1.0, 1 - INV_SQRT2])
    # u0 @3: pairs (0,1) 1, (0,2) and (1,2) 1 - 1/sqrt2; u1 @3: (0,2), (2,4) 1 - 1/sqrt2, (0,4) 0
    np.testing.assert_allclose(
        pu["ild@3"].loc[[0, 1]], [(1 + 2 * (1 - INV_SQRT2)) / 3, 2 * (1 - INV_SQRT2) / 3]
    )
    assert pu["ild@1"].isna().all()  # one item: no pair
    assert math.isnan(pu.loc[2, "ild@3"]) and math.isnan(pu.loc[4, "ild@3"])
    assert res.summary["ild@2"] == pytest.approx((1 + 1 - INV_SQRT2) / 2)
    assert math.isnan(res.summary["ild@1"])


def test_ild_zero_vector_and_sparse_features() -> None:
    rel = _csr([[0]], 5)
    res = ranking_metrics(np.array([[3, 0]]), rel, [2], item_features=sp.csr_matrix(FEATURES))
    assert res.per_user["ild@2"].iloc[0] == pytest.approx(1.0)  # item 3 has no features


def test_ild_matches_brute_force() -> None:
    rng = np.random.default_rng(5)
    n_users, n_items, d = 60, 25, 4
    feats = rng.standard_normal((n_items, d))
    top = np.stack([rng.permutation(n_items)[:8] for _ in range(n_users)])
    top[::7, 5:] = -1
    rel = _csr([[int(rng.integers(n_items))] for _ in range(n_users)], n_items)
    res = ranking_metrics(top, rel, [3, 8], item_features=feats)
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    for k in (3, 8):
        expected = []
        for row in top:
            items = [i for i in row[:k] if i >= 0]
            dist = [1 - unit[a] @ unit[b] for x, a in enumerate(items) for b in items[x + 1 :]]
            expected.append(np.mean(dist))
        np.testing.assert_allclose(res.per_user[f"ild@{k}"], expected, rtol=1e-10)


def test_popularity_curve(res) -> None:
    # exposure@2 sorted desc [3, 1, 1, 0, 0], 5 slots: need ceil(s * 5) slots
    assert res.curves[2] == {
        "shares": list(DEFAULT_SHARES),
        "items": [1, 1, 1, 1, 1, 1, 2, 2, 3, 3],
        "k": 2,
    }
    assert res.curves[1]["items"] == [1] * 10
    # 100% of the slots always takes every recommended item
    assert res.curves[3]["items"][-1] == round(res.summary["coverage@3"] * 5)


def test_popularity_curve_ties_and_edges() -> None:
    assert popularity_curve(np.array([2, 2, 2, 2]), [0.1, 0.5, 0.75, 1.0]) == [1, 2, 3, 4]
    assert popularity_curve(np.array([0, 10, 0]), [0.3, 1.0]) == [1, 1]
    assert popularity_curve(np.zeros(4, int)) == [0] * 10
    # 0.3 * 10 is 3.0000000000000004 in floating point: still 3 slots, i.e. 3 items
    assert popularity_curve(np.ones(10, int), [0.3]) == [3]
    with pytest.raises(ValueError):
        popularity_curve(np.ones(3, int), [0.0])
    with pytest.raises(ValueError):
        popularity_curve(np.ones(3, int), [1.5])


def test_gini_function() -> None:
    assert gini(np.array([3, 3, 3, 3])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 5])) == pytest.approx(0.75)
    assert gini(np.array([1, 3])) == pytest.approx((-1 * 1 + 1 * 3) / (2 * 4))
    assert math.isnan(gini(np.zeros(3)))
    assert math.isnan(gini(np.array([])))
    with pytest.raises(ValueError):
        gini(np.array([1, -1]))


def test_without_optional_inputs_no_extra_columns() -> None:
    res = ranking_metrics(TOP, REL, [2])
    assert "novelty@2" not in res.summary and "ild@2" not in res.summary
    assert not any(c.startswith(("novelty", "ild")) for c in res.per_user.columns)
    assert "gini@2" in res.summary and 2 in res.curves


def test_novelty_needs_user_count_and_valid_inputs() -> None:
    with pytest.raises(ValueError, match="n_train_users"):
        ranking_metrics(TOP, REL, [2], item_popularity=POP)
    with pytest.raises(ValueError, match="n_train_users"):
        ranking_metrics(TOP, REL, [2], item_popularity=POP, n_train_users=0)
    with pytest.raises(ValueError, match="non-negative"):
        ranking_metrics(TOP, REL, [2], item_popularity=-POP, n_train_users=8)
    with pytest.raises(ValueError, match="2-d"):
        ranking_metrics(TOP, REL, [2], item_features=np.ones(5))


def test_novelty_items_beyond_popularity_vector_count_as_unknown() -> None:
    # popularity only for items 0..1: items 2.. count as known by one of 4 users -> 2 bits
    res = ranking_metrics(
        np.array([[0, 3]]), _csr([[0]], 5), [2], item_popularity=np.array([4, 2]), n_train_users=4
    )
    assert res.per_user["novelty@2"].iloc[0] == pytest.approx((0 + 2) / 2)


def test_empty_lists_and_no_users() -> None:
    res = ranking_metrics(
        np.full((2, 3), -1), _csr([[0], [1]], 4), [2], item_popularity=POP[:4], n_train_users=8
    )
    assert math.isnan(res.summary["gini@2"]) and res.summary["coverage@2"] == 0.0
    assert math.isnan(res.summary["novelty@2"])
    assert res.curves[2]["items"] == [0] * 10
    none = ranking_metrics(np.zeros((0, 3), int), _csr([], 4), [2])
    assert none.summary["n_users_evaluated"] == 0 and math.isnan(none.summary["gini@2"])
