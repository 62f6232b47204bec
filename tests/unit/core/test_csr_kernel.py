"""The compiled seen-pattern CSR equals scipy's canonical build of the same code pairs."""

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
