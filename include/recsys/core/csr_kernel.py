"""Compiled (numba) kernels over (user, item) integer code pairs: the pattern as a canonical
CSR, and the split's new holdout pairs.

:func:`pattern_arrays` is the kernel of :func:`include.recsys.core.ids.pattern_csr`, the binary
case of :func:`include.recsys.core.ids.csr_from_codes` (the run's seen pattern: every snapshot
pair, 17M rows on preset l): two stable counting sorts (by item, then by user) leave every
row's items ascending, so duplicates are adjacent and one pass drops them; no per-row sort, no COO -> CSR conversion, no data array. On preset l's 17.1M
snapshot pairs (11.2M distinct) 0.38 s against 0.80 s for scipy's ``csr_matrix((ones, (u, i)))``
+ ``sum_duplicates`` + ``sort_indices``, the same CSR (alternated in one process, best of 5). The
weighted case stays with scipy: summing duplicates in another order could move float sums by
an ulp.

:func:`new_pairs` is the kernel of the split (:mod:`include.recsys.data.split`): which later
events start a (user, item) pair the user had neither in training nor earlier after the cutoff.
One stable counting sort groups the rows by user (each user's rows stay in time order); per
user, a stamp per item marks the training pairs, then the first later occurrence of each
other pair. On preset l's 17.1M snapshot rows 0.22 s against 0.8-0.9 s for integer keys with
pandas' ``duplicated`` + ``isin`` (the same mask and counts; back to back, best of 3).

The first call compiles a kernel (~1 s); ``cache=True`` keeps the machine code in
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


@njit(cache=True, nogil=True)
def new_pairs(u, i, n_users, n_items, is_train):
    """(new bool per row, warm users, cold users) for codes ``u`` in [-1, n_users) and ``i`` in
    [-1, n_items) (-1, a missing id, is a value of its own). ``new[r]``: row ``r`` is after the
    cutoff (``is_train[r]`` False), its pair is not among the training rows, and no earlier
    later row has it. Warm / cold: the users with a new pair who do / do not have a training
    row. Needs fewer than 2**31 rows and 2**30 items (int32 positions and keys)."""
    n = len(u)
    # stable counting sort of the rows by user (+1: code -1 is slot 0); each sorted slot keeps
    # its row and a key (item + 1) * 2 + in-training, so the per-user passes read sequentially
    ptr = np.zeros(n_users + 2, np.int64)
    for r in range(n):
        ptr[u[r] + 2] += 1
    for k in range(n_users + 1):
        ptr[k + 1] += ptr[k]
    row = np.empty(n, np.int32)
    key = np.empty(n, np.int32)
    for r in range(n):
        k = u[r] + 1
        p = ptr[k]
        row[p] = r
        key[p] = (i[r] + 1) * 2 + (1 if is_train[r] else 0)
        ptr[k] = p + 1
    # ptr[k] is now the end of user slot k (its start: the previous slot's end, or 0)
    stamp = np.zeros(n_items + 1, np.int64)  # per item: 2k + 1 in training, 2k + 2 seen later
    new = np.zeros(n, np.bool_)
    warm = 0
    cold = 0
    start = 0
    for k in range(n_users + 1):
        end = ptr[k]
        in_train = 2 * k + 1
        later = 2 * k + 2
        trained = False
        for p in range(start, end):
            v = key[p]
            if v & 1:
                stamp[v >> 1] = in_train
                trained = True
        any_new = False
        for p in range(start, end):
            v = key[p]
            if not v & 1:
                s = stamp[v >> 1]
                if s != in_train and s != later:
                    new[row[p]] = True
                    stamp[v >> 1] = later
                    any_new = True
        if any_new:
            if trained:
                warm += 1
            else:
                cold += 1
        start = end
    return new, warm, cold


def warm_up() -> None:
    """Compile (or load from cache) the kernels for the code dtypes the stages pass, writable
    and read-only (codes straight from an Arrow column are read-only numpy views: numba
    compiles those separately)."""
    for dtype in (np.int32, np.int64):
        for writeable in (True, False):
            codes = np.zeros(2, dtype)
            codes.flags.writeable = writeable
            pattern_arrays(codes, codes, 1, 1)
            new_pairs(codes, codes, 1, 1, np.zeros(2, np.bool_))
