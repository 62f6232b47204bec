"""Unit tests for ``include.recsys.scoring.recommend``: exact top-n, filtered ranking, bundles.

Most factor matrices hold small integers stored as float32: every dot product is then exact
whatever the BLAS kernel or block shape, so ties are real ties and the brute-force reference
(float64 full sort, seen items excluded, ties by lower item index) must match bit for bit.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from include.recsys.scoring.bundle import ModelBundle
from include.recsys.scoring.recommend import (
    Recommendations,
    ranked_filtered,
    recommend,
    topn_dense,
)

# --- helpers ------------------------------------------------------------------------------


def _int_factors(rng: np.random.Generator, rows: int, f: int) -> np.ndarray:
    return rng.integers(-3, 4, size=(rows, f)).astype(np.float32)


def _random_seen(rng: np.random.Generator, n_users: int, n_items: int, p: float) -> sp.csr_matrix:
    dense = rng.random((n_users, n_items)) < p
    m = sp.csr_matrix(dense.astype(np.float32))
    m.sort_indices()
    return m


def _brute_topn(uf: np.ndarray, vf: np.ndarray, seen: sp.csr_matrix, n: int):
    """Full sort per user: score desc, item index asc; seen excluded; -1 / -inf padding."""
    n_users = uf.shape[0]
    scores = uf.astype(np.float64) @ vf.astype(np.float64).T
    dense_seen = seen.toarray() != 0
    items = np.full((n_users, n), -1, dtype=np.int64)
    vals = np.full((n_users, n), -np.inf)
    for u in range(n_users):
        cand = np.flatnonzero(~dense_seen[u])
        order = cand[np.lexsort((cand, -scores[u, cand]))][:n]
        items[u, : order.size] = order
        vals[u, : order.size] = scores[u, order]
    return items, vals


def _brute_ranked_filtered(order: np.ndarray, seen: sp.csr_matrix, n: int) -> np.ndarray:
    dense_seen = seen.toarray() != 0
    out = np.full((seen.shape[0], n), -1, dtype=np.int64)
    for r in range(seen.shape[0]):
        keep = [i for i in order if not dense_seen[r, i]][:n]
        out[r, : len(keep)] = keep
    return out


def _check_topn(uf, vf, seen, n, block_size):
    items, scores = topn_dense(uf, vf, seen, n, block_size=block_size)
    ref_items, ref_scores = _brute_topn(uf, vf, seen, n)
    assert items.dtype == np.int32 and scores.dtype == np.float32
    assert items.shape == scores.shape == (uf.shape[0], n)
    np.testing.assert_array_equal(items, ref_items)
    np.testing.assert_array_equal(scores, ref_scores.astype(np.float32))
    return items, scores


# --- topn_dense -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [1, 5, 17])
def test_topn_dense_matches_brute_force_with_ties(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    n_users, n_items, f = 23, 40, 3
    uf = _int_factors(rng, n_users, f)
    base = _int_factors(rng, 15, f)
    # duplicate item rows: many exact score ties, also across the top-n boundary
    vf = base[rng.integers(0, len(base), n_items)]
    seen = _random_seen(rng, n_users, n_items, 0.3)
    items, _ = _check_topn(uf, vf, seen, n, block_size=7)  # 4 blocks, last one partial
    # sanity: the fixture really has ties inside the returned lists
    scores = uf @ vf.T
    assert any(len(set(scores[u, items[u]])) < n for u in range(n_users)) or n == 1


def test_topn_dense_tie_at_boundary_takes_lower_index() -> None:
    # one user, all items score 1 except item 5 (score 2): top 3 must be 5, 0, 1
    uf = np.array([[1.0]], dtype=np.float32)
    vf = np.ones((8, 1), dtype=np.float32)
    vf[5] = 2.0
    seen = sp.csr_matrix((1, 8), dtype=np.float32)
    items, scores = topn_dense(uf, vf, seen, 3)
    assert items.tolist() == [[5, 0, 1]]
    assert scores.tolist() == [[2.0, 1.0, 1.0]]


def test_topn_dense_user_with_two_unseen_items_is_padded() -> None:
    rng = np.random.default_rng(3)
    n_users, n_items, n = 6, 12, 5
    uf, vf = _int_factors(rng, n_users, 4), _int_factors(rng, n_items, 4)
    dense = np.zeros((n_users, n_items), dtype=np.float32)
    dense[2, :] = 1
    dense[2, [3, 9]] = 0  # user 2 has seen all but items 3 and 9
    dense[4, :] = 1  # user 4 has seen everything
    seen = sp.csr_matrix(dense)
    items, scores = _check_topn(uf, vf, seen, n, block_size=4)
    assert sorted(items[2, :2].tolist()) == [3, 9]
    assert items[2, 2:].tolist() == [-1] * 3
    assert np.isneginf(scores[2, 2:]).all() and np.isfinite(scores[2, :2]).all()
    assert items[4].tolist() == [-1] * n and np.isneginf(scores[4]).all()


def test_topn_dense_n_larger_than_catalog() -> None:
    rng = np.random.default_rng(4)
    n_users, n_items, n = 9, 6, 10
    uf = _int_factors(rng, n_users, 2)
    vf = _int_factors(rng, 3, 2)[rng.integers(0, 3, n_items)]  # ties again
    seen = _random_seen(rng, n_users, n_items, 0.25)
    items, scores = _check_topn(uf, vf, seen, n, block_size=2)
    # every unseen item appears exactly once, then padding
    for u in range(n_users):
        unseen = set(np.flatnonzero(seen[u].toarray().ravel() == 0).tolist())
        got = items[u][items[u] >= 0]
        assert set(got.tolist()) == unseen and len(got) == len(unseen)
        assert (items[u, len(unseen):] == -1).all()


@pytest.mark.parametrize("block_size", [1, 3, 50, 4096])
def test_topn_dense_result_independent_of_block_size(block_size: int) -> None:
    rng = np.random.default_rng(5)
    uf, vf = _int_factors(rng, 50, 4), _int_factors(rng, 30, 4)
    seen = _random_seen(rng, 50, 30, 0.2)
    _check_topn(uf, vf, seen, 8, block_size=block_size)


def test_topn_dense_continuous_factors_close_to_reference() -> None:
    rng = np.random.default_rng(6)
    uf = rng.normal(size=(40, 8)).astype(np.float32)
    vf = rng.normal(size=(60, 8)).astype(np.float32)
    seen = _random_seen(rng, 40, 60, 0.2)
    items, scores = topn_dense(uf, vf, seen, 10, block_size=16)
    ref_items, ref_scores = _brute_topn(uf, vf, seen, 10)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
    # returned items carry the scores they claim and are never seen
    exact = uf.astype(np.float64) @ vf.astype(np.float64).T
    np.testing.assert_allclose(np.take_along_axis(exact, items, axis=1), scores, rtol=1e-5, atol=1e-5)
    assert not (seen.toarray()[np.arange(40)[:, None], items] != 0).any()
    # continuous random scores have no near-ties here: the lists are identical
    np.testing.assert_array_equal(items, ref_items)


# --- the fused tile kernel: item tiles, compactions, threads ------------------------------------


@pytest.mark.parametrize("tile_items", [1, 7, 64, 100, 333, 5000])
@pytest.mark.parametrize("n", [1, 3, 40, 150])
def test_topn_dense_item_tiles_match_brute_force(tile_items: int, n: int) -> None:
    # 700 items in several tiles (tile edges inside and at the end), few distinct factor rows
    # (ties everywhere), n up to beyond the candidate buffer (compactions), users who have seen
    # nothing / almost everything / everything
    rng = np.random.default_rng(tile_items * 1000 + n)
    n_users, n_items, f = 37, 700, 4
    uf = _int_factors(rng, n_users, f)
    vf = _int_factors(rng, 25, f)[rng.integers(0, 25, n_items)]
    dense = (rng.random((n_users, n_items)) < 0.3).astype(np.float32)
    dense[0] = 0
    dense[1] = 1
    dense[2] = 1
    dense[2, rng.choice(n_items, 5, replace=False)] = 0
    _check_topn(uf, vf, sp.csr_matrix(dense), n, block_size=10)


@pytest.mark.parametrize("direction", [1, -1])
def test_topn_dense_monotone_scores_force_compactions(direction: int) -> None:
    # scores rising with the item index: every item beats the running threshold, so the
    # candidate buffer fills and is compacted again and again; falling: the first tile holds
    # the answer and later tiles must add nothing
    n_items = 3000
    vf = (direction * np.arange(n_items, dtype=np.float32))[:, None]
    uf = np.array([[1.0], [2.0], [0.5]], dtype=np.float32)
    seen = sp.csr_matrix(np.eye(3, n_items, k=n_items - 3 if direction == 1 else 0))
    for n in (1, 5, 100, 400):
        _check_topn(uf, vf, seen, n, block_size=2)
        items, _ = topn_dense(uf, vf, seen, n, tile_items=256)
        ref, _ = _brute_topn(uf, vf, seen, n)
        np.testing.assert_array_equal(items, ref)


def test_topn_dense_zero_and_negative_scores() -> None:
    # all-zero scores: pure tie-break by item index; all-negative scores: the sign handling of
    # the order-preserving keys; -0.0 ranks as +0.0
    rng = np.random.default_rng(8)
    seen = _random_seen(rng, 6, 90, 0.3)
    _check_topn(np.zeros((6, 3), np.float32), _int_factors(rng, 90, 3), seen, 12, block_size=4)
    uf = np.abs(_int_factors(rng, 6, 3)) + 1
    vf = -np.abs(_int_factors(rng, 90, 3)) - 1
    _check_topn(uf, vf, seen, 12, block_size=4)
    neg0 = np.zeros((1, 1), np.float32)
    items, scores = topn_dense(neg0, np.array([[-0.0], [0.0], [-0.0]], np.float32),
                               sp.csr_matrix((1, 3)), 3)
    assert items.tolist() == [[0, 1, 2]] and scores.tolist() == [[0.0, 0.0, 0.0]]


def test_topn_dense_unsorted_seen_indices_and_threads() -> None:
    rng = np.random.default_rng(9)
    uf, vf = _int_factors(rng, 300, 5), _int_factors(rng, 400, 5)
    seen = _random_seen(rng, 300, 400, 0.2)
    # same matrix, row entries stored in reverse order
    rev = sp.csr_matrix(
        (seen.data.copy(), seen.indices.copy(), seen.indptr.copy()), shape=seen.shape
    )
    for r in range(rev.shape[0]):
        lo, hi = rev.indptr[r], rev.indptr[r + 1]
        rev.indices[lo:hi] = rev.indices[lo:hi][::-1].copy()
    rev.has_sorted_indices = False
    ref_items, ref_scores = _brute_topn(uf, vf, seen, 20)
    for threads in (1, 2, 3):
        items, scores = topn_dense(uf, vf, rev, 20, block_size=7, tile_items=64, threads=threads)
        np.testing.assert_array_equal(items, ref_items)
        np.testing.assert_array_equal(scores, ref_scores.astype(np.float32))


def test_topn_dense_matches_previous_heap_kernel() -> None:
    from include.recsys.scoring.topk import topk_block

    rng = np.random.default_rng(10)
    n_users, n_items, n = 200, 2500, 30
    uf, vf = _int_factors(rng, n_users, 6), _int_factors(rng, n_items, 6)
    seen = _random_seen(rng, n_users, n_items, 0.1)
    scores_all = uf @ vf.T
    old_items = np.empty((n_users, n), np.int32)
    old_scores = np.empty((n_users, n), np.float32)
    topk_block(scores_all, seen.indptr, seen.indices, n, old_items, old_scores)
    items, scores = topn_dense(uf, vf, seen, n)
    np.testing.assert_array_equal(items, old_items)
    np.testing.assert_array_equal(scores, old_scores)


def test_topn_dense_rejects_bad_arguments() -> None:
    uf, vf = np.zeros((2, 2), np.float32), np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="n must be"):
        topn_dense(uf, vf, sp.csr_matrix((2, 3)), -1)
    with pytest.raises(ValueError, match="seen has shape"):
        topn_dense(uf, vf, sp.csr_matrix((2, 4)), 1)
    with pytest.raises(ValueError, match="block_size and tile_items"):
        topn_dense(uf, vf, sp.csr_matrix((2, 3)), 1, tile_items=0)
    bad = sp.csr_matrix((2, 3), dtype=np.float32)
    bad.indices = np.array([5], dtype=np.int32)  # forged: the kernel must never index with it
    bad.indptr = np.array([0, 1, 1], dtype=np.int32)
    bad.data = np.ones(1, np.float32)
    with pytest.raises(ValueError, match="outside"):
        topn_dense(uf, vf, bad, 1)


# --- ranked_filtered ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("n", [1, 4, 25])
def test_ranked_filtered_matches_brute_force(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    n_rows, n_items = 15, 20
    order = rng.permutation(n_items)
    seen = _random_seen(rng, n_rows, n_items, 0.4)
    dense = seen.toarray()
    dense[0, :] = 1  # saw everything
    dense[1, :] = 0  # saw nothing
    dense[2, :] = 1
    dense[2, order[-2:]] = 0  # only the two least-ranked items unseen
    seen = sp.csr_matrix(dense)
    got = ranked_filtered(order, seen, n)
    assert got.dtype == np.int32 and got.shape == (n_rows, n)
    np.testing.assert_array_equal(got, _brute_ranked_filtered(order, seen, n))
    assert (got[0] == -1).all()
    assert got[1, : min(n, n_items)].tolist() == order[: min(n, n_items)].tolist()


def test_ranked_filtered_empty_inputs() -> None:
    assert ranked_filtered(np.arange(3), sp.csr_matrix((0, 3)), 2).shape == (0, 2)
    assert ranked_filtered(np.arange(3), sp.csr_matrix((2, 3)), 0).shape == (2, 0)


# --- recommend / Recommendations / ModelBundle ------------------------------------------------


def _toy_bundle() -> ModelBundle:
    """3 users x 5 items, integer factors; popularity 5 > 4 = 4 > 1 > 0 (items c, a, d, e, b)."""
    uf = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    vf = np.array([[3, 0], [2, 1], [0, 3], [1, 2], [2, 2]], dtype=np.float32)
    seen = sp.csr_matrix(np.array([[1, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]], np.float32))
    return ModelBundle(
        user_ids=pd.Index(["u1", "u2", "u3"]),
        item_ids=pd.Index(["a", "b", "c", "d", "e"]),
        user_factors=uf,
        item_factors=vf,
        item_popularity=np.array([4, 0, 5, 4, 1], dtype=np.int64),
        seen=seen,
    )


def test_recommend_known_and_unknown_users() -> None:
    b = _toy_bundle()
    users = pd.Index(["u2", "new1", "u1", "new2"])
    seen = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "new1", "new1", "ghost"],
            "item_id": ["a", "c", "c", "zz", "a"],  # zz: not in the catalogue, ignored
        }
    )
    recs = recommend(b, users, seen, 3, block_size=1)
    assert recs.from_model.tolist() == [True, False, True, False]
    ids = recs.item_ids(b)
    # u2 = (0, 1): scores a0 b1 c3 d2 e2, c seen -> d, e (tie, lower index first), b
    assert ids[0].tolist() == ["d", "e", "b"]
    assert recs.scores[0].tolist() == [2.0, 2.0, 1.0]
    # u1 = (1, 0): scores a3 b2 c0 d1 e2, a seen -> b, e (tie: b first), d
    assert ids[2].tolist() == ["b", "e", "d"]
    # unknown users: popularity order c, a, d, e, b; seen filtered for new1
    assert ids[1].tolist() == ["a", "d", "e"]
    assert ids[3].tolist() == ["c", "a", "d"]
    np.testing.assert_allclose(recs.scores[3], [1.0, 0.8, 0.8])
    np.testing.assert_allclose(recs.scores[1], [0.8, 0.8, 0.2])


def test_recommend_padding_when_user_has_seen_almost_everything() -> None:
    b = _toy_bundle()
    seen = pd.DataFrame({"user_id": ["u3"] * 4 + ["x"] * 5, "item_id": list("abcd") + list("abcde")})
    recs = recommend(b, pd.Index(["u3", "x"]), seen, 3)
    ids = recs.item_ids(b)
    assert ids[0].tolist() == ["e", None, None]
    assert ids[1].tolist() == [None, None, None]
    frame = recs.to_frame(b)
    assert frame["user_id"].tolist() == ["u3"]  # padded slots dropped


def test_recommendations_to_frame() -> None:
    b = _toy_bundle()
    recs = recommend(b, pd.Index(["u1", "u2", "nobody"]), pd.DataFrame({"user_id": [], "item_id": []}), 4)
    frame = recs.to_frame(b)
    assert list(frame.columns) == ["user_id", "rank", "item_id", "score", "source"]
    assert len(frame) == 12
    for _, g in frame.groupby("user_id"):
        assert g["rank"].tolist() == [1, 2, 3, 4]
        assert g["score"].is_monotonic_decreasing
    assert set(frame.loc[frame["user_id"] == "nobody", "source"]) == {"fallback"}
    assert set(frame.loc[frame["user_id"] != "nobody", "source"]) == {"model"}
    assert frame["score"].dtype == np.float32
    # to_frame agrees with item_ids
    u2 = frame.loc[frame["user_id"] == "u2", "item_id"].tolist()
    assert u2 == recs.item_ids(b)[1].tolist() == ["c", "d", "e", "b"]


def _two_users() -> Recommendations:
    """p: item 4 then padding (model); q: items 0, 1 (fallback)."""
    return Recommendations(
        pd.Index(["p", "q"]),
        np.array([[4, -1], [0, 1]], dtype=np.int32),
        np.array([[0.5, -np.inf], [2.0, 1.0]], dtype=np.float32),
        np.array([True, False]),
    )


def test_recommendations_to_frame_direct() -> None:
    b = _toy_bundle()
    recs = _two_users()
    frame = recs.to_frame(b)
    assert frame.to_dict("list") == {
        "user_id": ["p", "q", "q"],
        "rank": [1, 1, 2],
        "item_id": ["e", "a", "b"],
        "score": [0.5, 2.0, 1.0],
        "source": ["model", "fallback", "fallback"],
    }


def test_recommendations_to_frame_constants_int_ids_and_empty() -> None:
    b = _toy_bundle()
    recs = _two_users()
    frame = recs.to_frame(b, model_name="m", model_version="7")
    assert list(frame.columns) == ["user_id", "rank", "item_id", "score", "source", "model_name", "model_version"]
    assert frame["model_name"].tolist() == ["m"] * 3 and frame["model_version"].tolist() == ["7"] * 3
    # the string columns are the same pandas string dtype a plain pandas build gives
    plain = pd.DataFrame({"user_id": ["p"], "item_id": ["e"], "source": ["model"], "model_name": ["m"]})
    for col in plain.columns:
        assert frame[col].dtype == plain[col].dtype, col
    assert frame["rank"].dtype == np.int16 and frame["score"].dtype == np.float32
    # integer user ids stay integers
    ints = Recommendations(pd.Index([10, 20]), recs.items, recs.scores, recs.from_model).to_frame(b)
    assert ints["user_id"].tolist() == [10, 20, 20] and ints["user_id"].dtype == np.int64
    # no users: an empty frame with the same columns
    empty = Recommendations(pd.Index([], dtype=str), np.empty((0, 2), np.int32), np.empty((0, 2), np.float32),
                            np.empty(0, bool)).to_frame(b, model_name="m")
    assert len(empty) == 0 and list(empty.columns)[-1] == "model_name"


def test_bundle_save_load_round_trip(tmp_path) -> None:
    b = _toy_bundle()
    folder = b.save(tmp_path / "bundle")
    meta = json.loads((folder / "bundle.json").read_text())
    assert meta == {"format": 1, "n_users": 3, "n_items": 5, "factors": 2}
    got = ModelBundle.load(folder)
    assert got.user_ids.tolist() == ["u1", "u2", "u3"]
    assert got.item_ids.tolist() == ["a", "b", "c", "d", "e"]
    np.testing.assert_array_equal(got.user_factors, b.user_factors)
    np.testing.assert_array_equal(got.item_factors, b.item_factors)
    assert got.user_factors.dtype == got.item_factors.dtype == np.float32
    np.testing.assert_array_equal(got.item_popularity, b.item_popularity)
    assert got.seen is not None and got.seen.shape == (3, 5)
    np.testing.assert_array_equal(got.seen.toarray() != 0, b.seen.toarray() != 0)
    np.testing.assert_array_equal(got.popular_order, b.popular_order)
    pairs = got.seen_pairs(pd.Index(["u2", "u1", "zzz"]))
    assert sorted(zip(pairs["user_id"], pairs["item_id"])) == [("u1", "a"), ("u2", "c")]
    # same recommendations from the loaded bundle
    empty = pd.DataFrame({"user_id": [], "item_id": []})
    a = recommend(b, pd.Index(["u1", "u3", "new"]), empty, 5)
    c = recommend(got, pd.Index(["u1", "u3", "new"]), empty, 5)
    np.testing.assert_array_equal(a.items, c.items)
    np.testing.assert_array_equal(a.scores, c.scores)


def test_bundle_round_trip_without_seen_and_int_ids(tmp_path) -> None:
    b = _toy_bundle()
    b.seen = None
    b.user_ids = pd.Index([10, 20, 30], dtype="int64")
    b.item_ids = pd.Index([100, 200, 300, 400, 500], dtype="int64")
    got = ModelBundle.load(b.save(tmp_path / "b"))
    assert got.seen is None
    assert got.user_ids.dtype == np.int64 and got.user_ids.tolist() == [10, 20, 30]
    assert got.item_ids.tolist() == [100, 200, 300, 400, 500]
    assert got.seen_pairs(pd.Index([10])).empty


def test_bundle_load_refuses_pickled_arrays(tmp_path) -> None:
    folder = _toy_bundle().save(tmp_path / "bundle")
    evil = np.empty(2, dtype=object)
    evil[:] = [{"x": 1}, "payload"]
    np.savez(folder / "factors.npz", user_factors=evil, item_factors=np.zeros((5, 2), np.float32))
    with pytest.raises(ValueError, match="(?i)pickle"):
        ModelBundle.load(folder)
