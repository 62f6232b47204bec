"""Unit tests for ``include.recsys.metrics.ranking`` (hand-worked fixtures + reference checks)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from include.recsys.metrics.ranking import (
    PER_USER_METRICS,
    MetricsResult,
    ranking_metrics,
)
from include.recsys.scoring.baselines import popularity_topn

LOG2_3 = math.log2(3)  # discount denominator at rank 2
IDCG_2 = 1 + 1 / LOG2_3  # ideal DCG with 2 relevant items (~1.6309)
IDCG_3 = 1 + 1 / LOG2_3 + 1 / 2  # ideal DCG with 3 relevant items (~2.1309)


def _csr(rows: Sequence[Sequence[int]], n_items: int) -> sp.csr_matrix:
    """Binary CSR whose row ``u`` holds the items ``rows[u]``."""
    indptr = np.cumsum([0] + [len(r) for r in rows])
    indices = np.array([i for r in rows for i in r], dtype=np.int32)
    data = np.ones(indices.size, dtype=np.float32)
    return sp.csr_matrix((data, indices, indptr), shape=(len(rows), n_items))


# --------------------------------------------------------------------------------------
# Hand-worked fixture: 5 users, 6 items, N = 3.
#
#   user 0: relevant {1, 3}     recs [3, 0, 1]
#   user 1: relevant {0, 2, 4}  recs [1, 4, -1]   (only 2 recommendations)
#   user 2: relevant {}         recs [5, 0, 1]    (no holdout -> excluded; item 5 only here)
#   user 3: relevant {2}        recs [-1, -1, -1] (no recommendations -> all zeros)
#   user 4: relevant {4}        recs [0, 2, 4]    (fewer relevant items than k)
# --------------------------------------------------------------------------------------
N_ITEMS = 6
RELEVANT = _csr([[1, 3], [0, 2, 4], [], [2], [4]], N_ITEMS)
TOP = np.array([[3, 0, 1], [1, 4, -1], [5, 0, 1], [-1, -1, -1], [0, 2, 4]])

# Expected per-user values for evaluated users 0, 1, 3, 4 (in that order).
EXPECTED: dict[int, dict[str, list[float]]] = {
    1: {
        # u0: rank-1 item 3 is relevant -> 1 hit; idcg over min(1, 2) = 1 item = 1.
        # u1: rank-1 item 1 not relevant; u3: nothing; u4: rank-1 item 0 not relevant.
        "precision": [1.0, 0.0, 0.0, 0.0],
        "recall": [1 / 2, 0.0, 0.0, 0.0],
        "ndcg": [1.0, 0.0, 0.0, 0.0],
        "map": [1.0, 0.0, 0.0, 0.0],  # u0: P@1 = 1, / min(1, 2)
        "mrr": [1.0, 0.0, 0.0, 0.0],
        "hit_rate": [1.0, 0.0, 0.0, 0.0],
    },
    3: {
        # u0: hits at ranks 1 and 3 -> precision 2/3, recall 2/2,
        #     dcg 1 + 1/log2(4) = 1.5, idcg 1 + 1/log2(3), AP (1 + 2/3) / min(3, 2) = 5/6.
        # u1: hit at rank 2 (item 4) -> precision 1/3 (k, not 2 shown), recall 1/3,
        #     dcg 1/log2(3), idcg over 3 items = 1 + 1/log2(3) + 1/2, AP (1/2) / 3, RR 1/2.
        # u4: hit at rank 3 -> precision 1/3, recall 1/1, dcg 1/log2(4) = 0.5,
        #     idcg over min(3, 1) = 1 item = 1, AP (1/3) / 1, RR 1/3.
        "precision": [2 / 3, 1 / 3, 0.0, 1 / 3],
        "recall": [1.0, 1 / 3, 0.0, 1.0],
        "ndcg": [1.5 / IDCG_2, (1 / LOG2_3) / IDCG_3, 0.0, 0.5],
        "map": [5 / 6, 1 / 6, 0.0, 1 / 3],
        "mrr": [1.0, 1 / 2, 0.0, 1 / 3],
        "hit_rate": [1.0, 1.0, 0.0, 1.0],
    },
    5: {
        # k = 5 > N = 3: same hits as k = 3; precision divides by 5; the ideal DCG and
        # the AP normalizer use min(5, |rel|) which equals |rel| for every user here.
        "precision": [2 / 5, 1 / 5, 0.0, 1 / 5],
        "recall": [1.0, 1 / 3, 0.0, 1.0],
        "ndcg": [1.5 / IDCG_2, (1 / LOG2_3) / IDCG_3, 0.0, 0.5],
        "map": [5 / 6, 1 / 6, 0.0, 1 / 3],
        "mrr": [1.0, 1 / 2, 0.0, 1 / 3],
        "hit_rate": [1.0, 1.0, 0.0, 1.0],
    },
    10: {
        # k = 10 > catalog (6 items): only the shown items count, precision still / 10.
        "precision": [2 / 10, 1 / 10, 0.0, 1 / 10],
        "recall": [1.0, 1 / 3, 0.0, 1.0],
        "ndcg": [1.5 / IDCG_2, (1 / LOG2_3) / IDCG_3, 0.0, 0.5],
        "map": [5 / 6, 1 / 6, 0.0, 1 / 3],
        "mrr": [1.0, 1 / 2, 0.0, 1 / 3],
        "hit_rate": [1.0, 1.0, 0.0, 1.0],
    },
}


@pytest.fixture(scope="module")
def hand_result() -> MetricsResult:
    return ranking_metrics(TOP, RELEVANT, [1, 3, 5, 10])


@pytest.mark.parametrize("k", sorted(EXPECTED))
@pytest.mark.parametrize("metric", PER_USER_METRICS)
def test_hand_worked_per_user(hand_result: MetricsResult, metric: str, k: int) -> None:
    expected = EXPECTED[k][metric]
    got = hand_result.per_user[f"{metric}@{k}"].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    # The summary is the plain mean over the 4 evaluated users.
    assert hand_result.summary[f"{metric}@{k}"] == pytest.approx(np.mean(expected), abs=1e-12)


def test_hand_worked_numeric_spot_values(hand_result: MetricsResult) -> None:
    # Spelled-out numbers for the brief's example (u0: rel {1, 3}, recs [3, 0, 1], k = 3).
    row = hand_result.per_user.iloc[0]
    assert row["precision@3"] == pytest.approx(0.6666666667)
    assert row["ndcg@3"] == pytest.approx(1.5 / 1.6309297536)
    assert row["ndcg@3"] == pytest.approx(0.919720, abs=1e-6)
    assert hand_result.summary["precision@3"] == pytest.approx(1 / 3)  # (2/3+1/3+0+1/3)/4


def test_user_accounting(hand_result: MetricsResult) -> None:
    s = hand_result.summary
    assert s["n_users_evaluated"] == 4
    assert s["n_users_no_holdout"] == 1  # user 2
    assert s["n_users_no_recs"] == 1  # user 3
    assert hand_result.per_user["user_index"].tolist() == [0, 1, 3, 4]
    # user 3 (holdout, no recs) is present with zeros everywhere
    row3 = hand_result.per_user.set_index("user_index").loc[3]
    assert (row3 == 0.0).all()


def test_per_user_columns(hand_result: MetricsResult) -> None:
    expected_cols = ["user_index"] + [
        f"{m}@{k}" for k in (1, 3, 5, 10) for m in PER_USER_METRICS
    ]
    assert list(hand_result.per_user.columns) == expected_cols
    assert hand_result.per_user["user_index"].dtype == np.int64
    assert len(hand_result.per_user) == hand_result.summary["n_users_evaluated"]


def test_coverage(hand_result: MetricsResult) -> None:
    s = hand_result.summary
    # top-1 of evaluated users: {3, 1, 0} -> 3/6 (user 2's item 5 must not count).
    assert s["coverage@1"] == pytest.approx(3 / 6)
    # top-3: {3,0,1} | {1,4} | {} | {0,2,4} = {0,1,2,3,4} -> 5/6 (item 5 only from user 2).
    assert s["coverage@3"] == pytest.approx(5 / 6)
    assert s["coverage@10"] == pytest.approx(5 / 6)
    bigger = ranking_metrics(TOP, RELEVANT, [3], n_catalog=10)
    assert bigger.summary["coverage@3"] == pytest.approx(5 / 10)


def test_to_dict_is_flat_copy(hand_result: MetricsResult) -> None:
    d = hand_result.to_dict()
    assert d == hand_result.summary
    assert d is not hand_result.summary
    assert all(isinstance(v, (int, float)) for v in d.values())
    assert {"ndcg@10", "coverage@10", "n_users_evaluated"} <= set(d)


def test_relevance_is_binary_and_canonicalised() -> None:
    # Raw CSR row 0 stores item 1 twice (values 5 and 2), item 3 (value 3) and an
    # explicit zero for item 2. Only "stored nonzero" matters and each (user, item)
    # counts once: relevant = {1, 3}.
    rel = sp.csr_matrix(
        (np.array([5.0, 2.0, 3.0, 0.0]), np.array([1, 1, 3, 2]), np.array([0, 4])),
        shape=(1, 4),
    )
    res = ranking_metrics(np.array([[2, 1, 3]]), rel, [3])
    # hits at ranks 2 and 3; |rel| = 2 (not 3 or 4)
    assert res.per_user["recall@3"].iloc[0] == pytest.approx(1.0)
    assert res.per_user["precision@3"].iloc[0] == pytest.approx(2 / 3)
    assert res.per_user["mrr@3"].iloc[0] == pytest.approx(1 / 2)
    assert res.per_user["map@3"].iloc[0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert rel.nnz == 4  # caller's matrix untouched


def test_unsorted_csr_indices_are_handled() -> None:
    rel = sp.csr_matrix(
        (np.ones(3), np.array([3, 0, 1]), np.array([0, 2, 3])), shape=(2, 4)
    )  # row 0 indices [3, 0] are unsorted
    assert not rel.has_sorted_indices
    res = ranking_metrics(np.array([[0, 3], [2, 1]]), rel, [2])
    np.testing.assert_allclose(res.per_user["hit_rate@2"], [1.0, 1.0])
    np.testing.assert_allclose(res.per_user["recall@2"], [1.0, 1.0])
    assert not rel.has_sorted_indices  # caller's matrix is not modified


def test_zero_width_recommendations() -> None:
    res = ranking_metrics(np.empty((3, 0), dtype=np.int64), _csr([[0], [], [1]], 2), [1, 5])
    assert res.summary["n_users_evaluated"] == 2
    assert res.summary["n_users_no_recs"] == 2
    assert res.summary["ndcg@5"] == 0.0
    assert res.summary["coverage@5"] == 0.0


def test_no_evaluated_users_gives_nan() -> None:
    res = ranking_metrics(np.array([[0], [1]]), _csr([[], []], 2), [1])
    assert res.summary["n_users_evaluated"] == 0
    assert res.summary["n_users_no_holdout"] == 2
    assert math.isnan(res.summary["ndcg@1"])
    assert res.summary["coverage@1"] == 0.0
    assert res.per_user.empty


@pytest.mark.parametrize(
    ("top", "ks", "kwargs"),
    [
        (np.array([[0, 1]]), [0], {}),
        (np.array([[0, 1]]), [], {}),
        (np.array([[0, 1]]), [2.0], {}),
        (np.array([[0, 1], [1, 0]]), [1], {}),  # wrong number of rows
        (np.array([[0, -2]]), [1], {}),  # bad padding value
        (np.array([[0, 3]]), [1], {}),  # item outside the catalog
        (np.array([[0.0, 1.0]]), [1], {}),  # not integer
        (np.array([[0, 1]]), [1], {"n_catalog": 0}),
    ],
)
def test_invalid_inputs(top: np.ndarray, ks: list, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ranking_metrics(top, _csr([[0]], 3), ks, **kwargs)


def test_items_beyond_relevant_columns_allowed_with_larger_catalog() -> None:
    # item 4 exists in the catalog (n_catalog=5) but not in the 3-column holdout matrix:
    # never a hit, but counted for coverage; and it must not alias into the next user.
    rel = _csr([[0], [1]], 3)
    res = ranking_metrics(np.array([[4, 0], [4, 1]]), rel, [2], n_catalog=5)
    np.testing.assert_allclose(res.per_user["mrr@2"], [0.5, 0.5])
    assert res.summary["coverage@2"] == pytest.approx(3 / 5)


# --------------------------------------------------------------------------------------
# Equivalence with a straightforward pure-Python reference on random data.
# --------------------------------------------------------------------------------------
def _reference(
    top: np.ndarray, rel_sets: list[set[int]], ks: Sequence[int], n_catalog: int
) -> tuple[dict[str, float], pd.DataFrame]:
    rows: list[dict[str, float]] = []
    covered: dict[int, set[int]] = {k: set() for k in ks}
    for u, rel in enumerate(rel_sets):
        if not rel:
            continue
        recs = [int(i) for i in top[u] if i >= 0]
        row: dict[str, float] = {"user_index": u}
        for k in ks:
            head = recs[:k]
            covered[k].update(head)
            flags = [1 if i in rel else 0 for i in head]
            hits = sum(flags)
            dcg = sum(f / math.log2(r + 2) for r, f in enumerate(flags))
            idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(rel))))
            ap, seen = 0.0, 0
            for r, f in enumerate(flags):
                if f:
                    seen += 1
                    ap += seen / (r + 1)
            first = next((r + 1 for r, f in enumerate(flags) if f), None)
            row[f"precision@{k}"] = hits / k
            row[f"recall@{k}"] = hits / len(rel)
            row[f"ndcg@{k}"] = dcg / idcg
            row[f"map@{k}"] = ap / min(k, len(rel))
            row[f"mrr@{k}"] = 1 / first if first else 0.0
            row[f"hit_rate@{k}"] = 1.0 if hits else 0.0
        rows.append(row)
    df = pd.DataFrame(rows)
    summary = {c: float(df[c].mean()) for c in df.columns if c != "user_index"}
    for k in ks:
        summary[f"coverage@{k}"] = len(covered[k]) / n_catalog
    return summary, df


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_users, n_items, n_recs = 200, 30, 12
    ks = [1, 3, 5, 12, 20, 40]  # 20 > N, 40 > catalog
    rel_sets: list[set[int]] = []
    for _ in range(n_users):
        size = int(rng.choice([0, 1, 2, 4, 8, 25], p=[0.15, 0.25, 0.2, 0.2, 0.1, 0.1]))
        rel_sets.append(set(rng.choice(n_items, size=size, replace=False).tolist()))
    top = np.full((n_users, n_recs), -1, dtype=np.int64)
    for u in range(n_users):
        shown = int(rng.choice([0, 3, n_recs], p=[0.1, 0.3, 0.6]))
        top[u, :shown] = rng.choice(n_items, size=shown, replace=False)
    relevant = _csr([sorted(s) for s in rel_sets], n_items)

    res = ranking_metrics(top, relevant, ks)
    ref_summary, ref_df = _reference(top, rel_sets, ks, n_items)

    assert res.per_user["user_index"].tolist() == ref_df["user_index"].tolist()
    for col in ref_df.columns.drop("user_index"):
        np.testing.assert_allclose(res.per_user[col], ref_df[col], rtol=1e-12, atol=1e-12)
    for key, value in ref_summary.items():
        assert res.summary[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    assert res.summary["n_users_no_holdout"] == sum(not s for s in rel_sets)
    assert res.summary["n_users_no_recs"] == sum(
        bool(s) and not (top[u] >= 0).any() for u, s in enumerate(rel_sets)
    )


# --------------------------------------------------------------------------------------
# Relationship with implicit.evaluation.ranking_metrics_at_k (implicit 0.7.3).
# --------------------------------------------------------------------------------------
class _FixedRecommender:
    """Duck-typed model whose ``recommend`` returns pre-computed lists."""

    def __init__(self, top: np.ndarray) -> None:
        self.top = top

    def recommend(
        self, userid: np.ndarray, user_items: sp.csr_matrix, N: int = 10, **_: object
    ) -> tuple[np.ndarray, np.ndarray]:
        ids = np.ascontiguousarray(self.top[np.asarray(userid), :N], dtype=np.int32)
        return ids, np.zeros(ids.shape, dtype=np.float32)


def test_relationship_with_implicit() -> None:
    evaluation = pytest.importorskip("implicit.evaluation")
    rng = np.random.default_rng(7)
    n_users, n_items, k = 400, 40, 6
    rel = sp.random(n_users, n_items, density=0.1, format="csr", random_state=3)
    top = np.stack([rng.permutation(n_items)[:k] for _ in range(n_users)]).astype(np.int64)
    top[::5, 4:] = -1  # some short lists (implicit never matches -1)
    train = sp.csr_matrix((n_users, n_items), dtype=np.float32)

    theirs = evaluation.ranking_metrics_at_k(
        _FixedRecommender(top), train, rel, K=k, show_progress=False
    )
    ours = ranking_metrics(top, rel, [k])
    assert 0 < ours.summary["n_users_no_holdout"]  # implicit skips those users too

    # Same definitions: ndcg and map (AP normalized by min(K, |rel|)), macro averages.
    assert theirs["ndcg"] == pytest.approx(ours.summary[f"ndcg@{k}"], rel=1e-12)
    assert theirs["map"] == pytest.approx(ours.summary[f"map@{k}"], rel=1e-12)

    # implicit's "precision" = sum_u hits@K / sum_u min(K, |rel_u|) (micro average).
    pu = ours.per_user
    n_rel = np.diff(sp.csr_matrix(rel).indptr)[pu["user_index"].to_numpy()]
    hits = pu[f"precision@{k}"].to_numpy() * k
    assert theirs["precision"] == pytest.approx(hits.sum() / np.minimum(n_rel, k).sum())
    assert theirs["precision"] != pytest.approx(ours.summary[f"precision@{k}"])


# --------------------------------------------------------------------------------------
# popularity_topn
# --------------------------------------------------------------------------------------
# train (4 users x 5 items): u0 {0, 1}, u1 {1, 2}, u2 {1}, u3 {}
# popularity: item0 = 1, item1 = 3, item2 = 1, item3 = 0, item4 = 0
# global order (ties -> lower index): [1, 0, 2, 3, 4]
POP_TRAIN = _csr([[0, 1], [1, 2], [1], []], 5)


def test_popularity_topn_hand_worked() -> None:
    got = popularity_topn(POP_TRAIN, np.array([0, 1, 2, 3]), 3)
    np.testing.assert_array_equal(got, [[2, 3, 4], [0, 3, 4], [0, 2, 3], [1, 0, 2]])
    assert got.dtype == np.int64


def test_popularity_topn_padding_and_order_of_users() -> None:
    got = popularity_topn(POP_TRAIN, np.array([3, 0, 0]), 7)
    np.testing.assert_array_equal(
        got,
        [[1, 0, 2, 3, 4, -1, -1], [2, 3, 4, -1, -1, -1, -1], [2, 3, 4, -1, -1, -1, -1]],
    )


def test_popularity_topn_no_filter_and_edge_sizes() -> None:
    got = popularity_topn(POP_TRAIN, np.array([0, 2]), 3, filter_seen=False)
    np.testing.assert_array_equal(got, [[1, 0, 2], [1, 0, 2]])
    assert popularity_topn(POP_TRAIN, np.array([0, 1]), 0).shape == (2, 0)
    assert popularity_topn(POP_TRAIN, np.array([], dtype=np.int64), 3).shape == (0, 3)
    with pytest.raises(ValueError):
        popularity_topn(POP_TRAIN, np.array([4]), 3)
    with pytest.raises(ValueError):
        popularity_topn(POP_TRAIN, np.array([0]), -1)


def test_popularity_counts_distinct_users() -> None:
    # User 0 has item 2 stored twice (duplicate coordinates): still one user. Items 0
    # and 2 then tie at 1 user each -> lower index first.
    train = sp.csr_matrix(
        (np.ones(4), np.array([2, 2, 0, 3]), np.array([0, 2, 3, 4])), shape=(3, 4)
    )
    got = popularity_topn(train, np.array([2]), 4)
    np.testing.assert_array_equal(got, [[0, 2, 1, -1]])


def test_popularity_topn_random_properties() -> None:
    rng = np.random.default_rng(11)
    n_users, n_items, n = 300, 60, 15
    sizes = rng.choice([0, 2, 10, 50, 60], size=n_users, p=[0.1, 0.4, 0.3, 0.15, 0.05])
    weights = 1.0 / np.arange(1, n_items + 1)
    weights /= weights.sum()
    rows = [sorted(rng.choice(n_items, size=s, replace=False, p=weights).tolist()) for s in sizes]
    train = _csr(rows, n_items)
    users = rng.permutation(n_users)[:120]
    got = popularity_topn(train, users, n)

    pop = np.bincount(train.indices, minlength=n_items)
    order = sorted(range(n_items), key=lambda i: (-pop[i], i))
    for row, u in zip(got, users, strict=True):
        seen = set(rows[u])
        expected = [i for i in order if i not in seen][:n]
        expected += [-1] * (n - len(expected))
        assert row.tolist() == expected
        shown = row[row >= 0]
        assert not (set(shown.tolist()) & seen)  # never a seen item
        assert np.all(np.diff(pop[shown]) <= 0)  # non-increasing popularity
        assert np.all(row[len(shown):] == -1)  # padding only at the end
    assert (sizes[users] == n_items).any()  # a user who saw everything gets all -1


def test_popularity_topn_output_feeds_ranking_metrics() -> None:
    recs = popularity_topn(POP_TRAIN, np.arange(4), 2)  # [[2,3],[0,3],[0,2],[1,0]]
    holdout = _csr([[2], [4], [], [0]], 5)
    res = ranking_metrics(recs, holdout, [2])
    # u0 hit at rank 1, u1 miss, u2 excluded, u3 hit at rank 2
    np.testing.assert_allclose(res.per_user["mrr@2"], [1.0, 0.0, 0.5])
