"""The (user, item) pattern of integer code pairs as a canonical CSR, compiled with numba.

:func:`pattern_arrays` is the kernel of :func:`include.recsys.core.ids.pattern_csr`, the binary
case of :func:`include.recsys.core.ids.csr_from_codes` (the run's seen pattern: every snapshot
pair, 17M rows on preset l): two stable counting sorts (by item, then by user) leave every
row's items ascending, so duplicates are adjacent and one pass drops them; no per-row sort, no COO -> CSR conversion, no data array. On preset l's 17.1M
snapshot pairs (11.2M distinct) 0.38 s against 0.80 s for scipy's ``csr_matrix((ones, (u, i)))``
+ ``sum_duplicates`` + ``sort_indices``, the same CSR (alternated in one process, best of 5). The
weighted case stays with scipy: summing duplicates in another order could move float sums by
an ulp.

The first call compiles the kernel (~1 s); ``cache=True`` keeps the machine code in
``__pycache__`` for later processes (:func:`warm_up`, run by the image build).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def pattern_arrays(u, i, n_rows, n_cols):
    """(indptr int64 (n_rows + 1), indices int32): the distinct pairs with both codes >= 0,
    rows in order, each row's items ascending."""
    n = len(u)
    item_ptr = np.zeros(n_cols + 1, np.int64)
    row_ptr = np.zeros(n_rows + 1, np.int64)
    for q in range(n):
        if u[q] >= 0 and i[q] >= 0:
            item_ptr[i[q] + 1] += 1
            row_ptr[u[q] + 1] += 1
    for c in range(n_cols):
        item_ptr[c + 1] += item_ptr[c]
    for r in range(n_rows):
        row_ptr[r + 1] += row_ptr[r]
    # the users of the pairs, grouped by item (stable counting sort on the item)
    by_item = np.empty(item_ptr[n_cols], np.int32)
    cursor = item_ptr[:n_cols].copy()
    for q in range(n):
        if u[q] >= 0 and i[q] >= 0:
            c = i[q]
            by_item[cursor[c]] = u[q]
            cursor[c] += 1
    # walking the items in order, each row receives its items ascending
    cols = np.empty(row_ptr[n_rows], np.int32)
    at = row_ptr[:n_rows].copy()
    for c in range(n_cols):
        for p in range(item_ptr[c], item_ptr[c + 1]):
            r = by_item[p]
            cols[at[r]] = c
            at[r] += 1
    # duplicates are adjacent: keep the first of each run, in place (the write never passes
    # the read)
    indptr = np.zeros(n_rows + 1, np.int64)
    w = 0
    for r in range(n_rows):
        start = w
        for p in range(row_ptr[r], row_ptr[r + 1]):
            c = cols[p]
            if w == start or cols[w - 1] != c:
                cols[w] = c
                w += 1
        indptr[r + 1] = w
    return indptr, cols[:w].copy()


def warm_up() -> None:
    """Compile (or load from cache) the kernel for the code dtypes the stages pass."""
    for dtype in (np.int32, np.int64):
        codes = np.zeros(2, dtype)
        pattern_arrays(codes, codes, 1, 1)
