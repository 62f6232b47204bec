"""The compiled kernels over code pairs: the seen-pattern CSR equals scipy's canonical build of
the same pairs, and the split's new pairs equal their pandas definition."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from include.recsys.core.ids import csr_from_codes, pattern_csr


def _scipy_pattern(u, i, shape):
    ok = (u >= 0) & (i >= 0)
    m = sp.csr_matrix((np.ones(int(ok.sum()), np.float32), (u[ok], i[ok])), shape=shape)
    m.sum_duplicates()
    m.sort_indices()
    m.data[:] = 1.0
    return m


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("seed", range(4))
def test_pattern_matches_scipy(dtype, seed) -> None:
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 60)), int(rng.integers(1, 40)))
    n = int(rng.integers(0, 3000))
    u = rng.integers(-1, shape[0], n).astype(dtype)  # -1: a missing id, dropped
    i = rng.integers(-1, shape[1], n).astype(dtype)
    got = pattern_csr(u, i, shape)
    want = _scipy_pattern(u, i, shape)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_array_equal(got.indptr, want.indptr)
    np.testing.assert_array_equal(got.indices, want.indices)
    assert (got.data == 1.0).all()
    assert got.has_canonical_format and got.has_sorted_indices
    # scipy's own check agrees that the indices are sorted and duplicate-free
    check = sp.csr_matrix((got.data, got.indices, got.indptr), shape=shape)
    assert check.has_sorted_indices and check.has_canonical_format


def test_csr_from_codes_routes_the_pattern_and_keeps_weighted_sums() -> None:
    u = np.array([2, 0, 2, 2, -1, 1], np.int32)
    i = np.array([1, 3, 1, 0, 2, -1], np.int32)
    pattern = csr_from_codes(u, i, None, (3, 4))
    assert pattern.toarray().tolist() == [[0, 0, 0, 1], [0, 0, 0, 0], [1, 1, 0, 0]]
    weighted = csr_from_codes(u, i, np.array([1, 2, 3, 4, 5, 6], np.float32), (3, 4))
    assert weighted.toarray().tolist() == [[0, 0, 0, 2], [0, 0, 0, 0], [4, 4, 0, 0]]


def test_empty_and_out_of_range() -> None:
    empty = pattern_csr(np.zeros(0, np.int32), np.zeros(0, np.int32), (3, 2))
    assert empty.shape == (3, 2) and empty.nnz == 0 and empty.indptr.tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="outside the shape"):
        pattern_csr(np.array([3], np.int32), np.array([0], np.int32), (3, 2))
    with pytest.raises(ValueError, match="user codes but"):
        pattern_csr(np.array([0, 1], np.int32), np.array([0], np.int32), (3, 2))


def _pandas_new_pairs(u, i, n_users, n_items, is_train):
    """The split's definition with integer keys and pandas (the implementation before the kernel)."""
    import pandas as pd

    u, i = u.astype(np.int64), i.astype(np.int64)
    keys = (u + 1) * (n_items + 1) + (i + 1)
    later = pd.Series(keys[~is_train])
    new = ~later.duplicated().to_numpy() & ~later.isin(keys[is_train]).to_numpy()
    in_train = np.bincount(u[is_train] + 1, minlength=n_users + 1) > 0
    hold_users = np.unique(u[~is_train][new])
    warm = int(in_train[hold_users + 1].sum())
    return new, warm, len(hold_users) - warm


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("seed", range(6))
def test_new_pairs_match_the_pandas_definition(dtype, seed) -> None:
    from include.recsys.data.split import _new_pairs

    rng = np.random.default_rng(seed)
    n_users, n_items = int(rng.integers(1, 50)), int(rng.integers(1, 30))
    n = int(rng.integers(0, 4000))
    u = rng.integers(-1, n_users, n).astype(dtype)  # -1: a missing id, a value of its own
    i = rng.integers(-1, n_items, n).astype(dtype)
    is_train = rng.random(n) < rng.random()
    got = _new_pairs(u, i, n_users, n_items, is_train)
    want = _pandas_new_pairs(u, i, n_users, n_items, is_train)
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1:] == want[1:]
    # read-only inputs (Arrow views) give the same answer
    for a in (u, i, is_train):
        a.flags.writeable = False
    np.testing.assert_array_equal(_new_pairs(u, i, n_users, n_items, is_train)[0], want[0])


def test_new_pairs_by_hand_and_bad_codes() -> None:
    from include.recsys.data.split import _new_pairs

    # user 0 trained on item 1; later: item 1 again (not new), item 2 twice (first is new);
    # user 1 has only later rows (cold), user 2 only training rows (no holdout)
    u = np.array([0, 2, 0, 1, 0, 0, 1], np.int32)
    i = np.array([1, 0, 1, 0, 2, 2, 0], np.int32)
    is_train = np.array([True, True, False, False, False, False, False])
    new, warm, cold = _new_pairs(u, i, 3, 3, is_train)
    assert new.tolist() == [False, True, True, False, False] and (warm, cold) == (1, 1)
    with pytest.raises(ValueError, match=r"item codes must be integers in \[-1, 3\)"):
        _new_pairs(u, np.array([1, 0, 1, 0, 2, 3, 0], np.int32), 3, 3, is_train)
    with pytest.raises(ValueError, match="user codes"):
        _new_pairs(u.astype(float), i, 3, 3, is_train)
