"""Exact per-row top-k of a score block with seen items excluded, compiled with numba.

One pass over each row keeps a size-k min-heap ordered by (score desc, item index asc); an
element that cannot beat the heap's worst entry costs one comparison, so selection is ~1 ns
per score and runs rows in parallel on all cores (``prange``). Seen items come straight from
the CSR arrays (``indptr``/``indices``) and are set to -inf before the pass. Ties are broken
by the lower item index, so the result equals a full stable sort by (-score, item).

The first call compiles the kernel (a few seconds); ``cache=True`` keeps the machine code in
``__pycache__`` for later processes.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(inline="always")
def _worse(va, ia, vb, ib):
    """True when (va, ia) ranks below (vb, ib): lower score, or equal score and higher index."""
    return va < vb or (va == vb and ia > ib)


@njit(inline="always")
def _sift_down(hv, hi, size, pos):
    # min-heap by rank: the root is the worst entry kept
    while True:
        left = 2 * pos + 1
        if left >= size:
            return
        child = left
        right = left + 1
        if right < size and _worse(hv[right], hi[right], hv[left], hi[left]):
            child = right
        if _worse(hv[child], hi[child], hv[pos], hi[pos]):
            hv[pos], hv[child] = hv[child], hv[pos]
            hi[pos], hi[child] = hi[child], hi[pos]
            pos = child
        else:
            return


@njit(parallel=True, cache=True, nogil=True)
def topk_block(scores, indptr, indices, k, out_items, out_scores):
    """Top-k of every row of ``scores`` (float32, modified: seen entries become -inf).

    ``indptr``/``indices``: CSR of the seen items, rows aligned with ``scores``.
    ``out_items`` (int32) / ``out_scores`` (float32) have shape (n_rows, >= k) and are filled
    with the k best entries in rank order, padded with -1 / -inf.
    """
    n_rows, n_cols = scores.shape
    neg_inf = np.float32(-np.inf)
    for r in prange(n_rows):
        row = scores[r]
        for p in range(indptr[r], indptr[r + 1]):
            row[indices[p]] = neg_inf
        hv = np.empty(k, dtype=np.float32)
        hi = np.empty(k, dtype=np.int32)
        size = 0
        for j in range(n_cols):
            v = row[j]
            if v == neg_inf:
                continue
            if size < k:
                # sift up
                pos = size
                hv[pos] = v
                hi[pos] = j
                size += 1
                while pos > 0:
                    parent = (pos - 1) // 2
                    if _worse(hv[pos], hi[pos], hv[parent], hi[parent]):
                        hv[pos], hv[parent] = hv[parent], hv[pos]
                        hi[pos], hi[parent] = hi[parent], hi[pos]
                        pos = parent
                    else:
                        break
            elif _worse(hv[0], hi[0], v, j):
                hv[0] = v
                hi[0] = j
                _sift_down(hv, hi, size, 0)
        # pop the worst repeatedly: fills ranks from the back
        for slot in range(out_items.shape[1]):
            out_items[r, slot] = -1
            out_scores[r, slot] = neg_inf
        n = size
        while n > 0:
            n -= 1
            out_items[r, n] = hi[0]
            out_scores[r, n] = hv[0]
            hv[0] = hv[n]
            hi[0] = hi[n]
            _sift_down(hv, hi, n, 0)


def warm_up() -> None:
    """Compile (or load from cache) the kernel on a tiny input."""
    s = np.zeros((2, 3), dtype=np.float32)
    topk_block(s, np.zeros(3, np.int64), np.zeros(0, np.int32), 2, np.empty((2, 2), np.int32), np.empty((2, 2), np.float32))
