"""Exact per-row top-k of dot-product scores with seen items excluded, compiled with numba.

Two kernels:

- :func:`score_block` (used by :func:`include.recsys.scoring.recommend.topn_dense`): one block of
  users against all items, tile by tile (``users x tile_items`` scores, sized to stay in the
  L2 cache; items in decreasing-norm order, so strong candidates come first), the GEMM of each
  tile (``np.dot``: BLAS sgemm, one thread) fused with the selection. The selection keeps,
  per user, a candidate buffer of 64-bit keys ``(order-preserving score bits << 32) |
  (2**32 - 1 - item)`` -- a larger key is a better (score desc, item asc) rank, so ties go to
  the lower item id -- and a threshold ``thr`` never above the final k-th best score. A
  64-wide SIMD compare builds a bitmask per chunk whose set bits (scores >= thr) are decoded
  into column numbers four at a time without a data-dependent branch (at the 1-10% pass rates
  of later tiles, "does this chunk have a hit" is a coin flip the CPU cannot predict); the
  keys are made from those columns once per tile. When the buffer is full a quickselect keeps
  the k best and raises ``thr`` to the k-th best key's score. The first tile is
  ``FIRST_TILES`` tiles wide and seeds ``thr`` with the k-th largest of the maxima of 2k
  disjoint (strided) item groups -- k distinct unseen items score at least that much, so no
  top-k item is below it -- and is then compacted once: the exact k-th best of its 4096 scores
  is the threshold every later tile starts from. Seen items are set to -inf in each tile right
  after its GEMM (the CSR entries are remapped to scan positions and bucketed by tile with one
  counting sort per block: no per-user sort) and can never pass ``thr`` (always > -inf).
  Quickselect and the final sort use branch-free partitions. Results equal a full stable sort
  by (-score, original item id).
- :func:`topk_block`: the previous kernel (a size-k heap per row of a full score block), kept
  as a second reference.

The first call compiles the kernels (seconds); ``cache=True`` keeps the machine code in
``__pycache__`` for later processes.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.core.extending import intrinsic
from numba.cpython.unsafe.numbers import trailing_zeros

CHUNK = 64  # items per SIMD compare / bitmask

NEG_MAX = np.float32(-np.finfo(np.float32).max)  # initial threshold: every finite score passes

FIRST_TILES = 4  # the first tile is this many tiles wide: a tighter threshold from the start

UNROLL = 4  # set bits of a chunk's mask decoded without a branch (= the explicit decodes in _scan_tile)


@intrinsic
def _popcount(typingctx, src):
    """Number of set bits of an integer (one POPCNT)."""
    if not isinstance(src, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return src(src), codegen


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


@njit(nogil=True, inline="always")
def _key(bits, j):
    """Order-preserving key of (float32 bits, item j): larger key = higher score, then lower j."""
    if bits == np.uint32(0x80000000):  # -0.0 ranks as +0.0
        bits = np.uint32(0)
    b = np.uint64(bits)
    flip = ((b >> np.uint64(31)) * np.uint64(0x7FFFFFFF)) | np.uint64(0x80000000)
    return ((b ^ flip) << np.uint64(32)) | (np.uint64(0xFFFFFFFF) - np.uint64(j))


@njit(nogil=True, inline="always")
def _key_bits(key):
    """float32 bits of a key's score (inverse of the order-preserving map)."""
    hi = np.uint32(key >> np.uint64(32))
    if hi & np.uint32(0x80000000):
        return hi & np.uint32(0x7FFFFFFF)
    return ~hi


@njit(nogil=True, inline="always")
def _key_item(key):
    return np.int32(np.uint64(0xFFFFFFFF) - (key & np.uint64(0xFFFFFFFF)))


@njit(nogil=True, inline="always")
def _median3(a, b, c):
    if a < b:
        return b if b < c else (c if a < c else a)
    return a if a < c else (c if b < c else b)


@njit(nogil=True, inline="always")
def _insertion_desc(keys, lo, hi):
    for i in range(lo + 1, hi + 1):
        x = keys[i]
        j = i - 1
        while j >= lo and keys[j] < x:
            keys[j + 1] = keys[j]
            j -= 1
        keys[j + 1] = x


@njit(nogil=True, cache=True)
def _select_top(keys, m, k):
    """Reorder ``keys[:m]`` (distinct) so that ``keys[:k]`` hold the k largest, any order.

    Quickselect with a branch-free Lomuto partition (``store += x >= p``): the keys are
    random-looking, so a data-dependent branch would mispredict half the time.
    """
    lo = 0
    hi = m - 1
    while hi - lo >= 16:
        p = _median3(keys[lo], keys[(lo + hi) >> 1], keys[hi])
        store = lo
        for i in range(lo, hi + 1):
            x = keys[i]
            keys[i] = keys[store]
            keys[store] = x
            store += x >= p
        if store == k:
            return
        if store > k:
            hi = store - 1
        else:
            lo = store
    _insertion_desc(keys, lo, hi)


@njit(nogil=True, cache=True)
def _sort_desc(keys, m):
    """Sort ``keys[:m]`` (distinct) in decreasing order: branch-free quicksort + insertion."""
    stack = np.empty(128, np.int64)
    stack[0] = 0
    stack[1] = m - 1
    sp = 2
    while sp > 0:
        hi = stack[sp - 1]
        lo = stack[sp - 2]
        sp -= 2
        while hi - lo >= 12:
            mid = (lo + hi) >> 1
            p = _median3(keys[lo], keys[mid], keys[hi])
            if keys[lo] == p:
                keys[lo] = keys[hi]
            elif keys[mid] == p:
                keys[mid] = keys[hi]
            keys[hi] = p  # pivot parked at the end
            store = lo
            for i in range(lo, hi):
                x = keys[i]
                keys[i] = keys[store]
                keys[store] = x
                store += x > p
            keys[hi] = keys[store]
            keys[store] = p
            # loop on the larger side, push the smaller one: the stack stays O(log m)
            if store - lo < hi - store:
                stack[sp] = lo
                stack[sp + 1] = store - 1
                sp += 2
                lo = store + 1
            else:
                stack[sp] = store + 1
                stack[sp + 1] = hi
                sp += 2
                hi = store - 1
        _insertion_desc(keys, lo, hi)


@njit(nogil=True, cache=True)
def _compact(buf, m, k):
    """Keep the k best keys of ``buf[:m]`` in ``buf[:k]``; return the k-th best's score bits."""
    _select_top(buf, m, k)
    worst = buf[0]
    for q in range(1, k):
        if buf[q] < worst:
            worst = buf[q]
    return _key_bits(worst)


@njit(nogil=True, cache=True)
def _scan_tile(tile, j0, k, bufs, counts, thrs, first, gmax, gkeys, item_of, hits):
    """Append the keys of a (rows x width) score tile's scores >= thr (seen items already
    -inf). (~80 lines: the hot per-row loop stays in one compiled function.)

    Column ``c`` of the tile is item position ``j0 + c``; keys carry the original item id
    ``item_of[position]``. Per 64-score chunk the compare builds a bitmask whose set bits are
    decoded into ``hits`` (column numbers) four at a time without a branch (a zero mask
    writes harmless entries past the count); a loop runs only for chunks with more than four.
    The keys are made from ``hits`` once per tile, or when the buffer would overflow.
    """
    neg_inf = np.float32(-np.inf)
    rows, width = tile.shape
    cap = bufs.shape[1] - CHUNK
    thr_bits = thrs.view(np.uint32)  # bit-casts the compaction thresholds without allocating
    low = np.empty(1, np.float32)
    low_bits = low.view(np.uint32)
    full = width - width % CHUNK
    one = np.uint64(1)
    for r in range(rows):
        row = tile[r]
        bits = row.view(np.uint32)
        thr = thrs[r]
        m = counts[r]
        buf = bufs[r]
        if first and width >= k:
            # G >= k strided groups: each group holds an item scoring >= its max, so the k-th
            # largest group max is a lower bound of the k-th best score (-inf when fewer than
            # k groups have an unseen item). 2k groups of ~width/2k give a tight bound cheaply.
            groups = gkeys.shape[0] if width >= gkeys.shape[0] else k
            g = gmax[:groups]
            g[:] = neg_inf
            for base in range(0, width - groups + 1, groups):
                part = row[base : base + groups]
                for q in range(groups):
                    x = part[q]
                    y = g[q]
                    g[q] = x if x > y else y  # a select, not a branch: the loop vectorizes
            gk = gkeys[:groups]
            gbits = g.view(np.uint32)
            for q in range(groups):
                gk[q] = _key(gbits[q], q)
            _select_top(gk, groups, k)
            low_key = gk[0]
            for q in range(1, k):
                if gk[q] < low_key:
                    low_key = gk[q]
            low_bits[0] = _key_bits(low_key)
            if low[0] > thr:
                thr = low[0]
        n = 0
        for c in range(0, full, CHUNK):
            part = row[c : c + CHUNK]
            mask = np.uint64(0)
            for t in range(CHUNK):
                mask |= np.uint64(part[t] >= thr) << np.uint64(t)
            cnt = _popcount(mask)
            hits[n] = c + trailing_zeros(mask)
            mask &= mask - one
            hits[n + 1] = c + trailing_zeros(mask)
            mask &= mask - one
            hits[n + 2] = c + trailing_zeros(mask)
            mask &= mask - one
            hits[n + 3] = c + trailing_zeros(mask)
            mask &= mask - one
            q = n + UNROLL
            while mask:
                hits[q] = c + trailing_zeros(mask)
                q += 1
                mask &= mask - one
            n += cnt
            if m + n >= cap:
                for i in range(n):
                    buf[m + i] = _key(bits[hits[i]], item_of[j0 + hits[i]])
                thr_bits[r] = _compact(buf, m + n, k)
                thr = thrs[r]
                m = k
                n = 0
        for t in range(full, width):
            if row[t] >= thr:
                hits[n] = t
                n += 1
        for i in range(n):
            buf[m + i] = _key(bits[hits[i]], item_of[j0 + hits[i]])
        m += n
        counts[r] = m
        thrs[r] = thr
        # after the first tile the exact k-th best so far is a much tighter bound than the
        # group one: one early compaction saves most later appends
        if m >= cap or (first and m > k):
            thr_bits[r] = _compact(buf, m, k)
            counts[r] = k


@njit(nogil=True, cache=True)
def _finish(bufs, counts, k, out_items, out_scores):
    """Best k keys per row in rank order into the outputs; -1 / -inf padding."""
    width = out_items.shape[1]
    score_bits = out_scores.view(np.uint32)
    for r in range(bufs.shape[0]):
        m = counts[r]
        buf = bufs[r]
        if m > k:
            _select_top(buf, m, k)
            m = k
        _sort_desc(buf, m)
        for s in range(m):
            key = buf[s]
            out_items[r, s] = _key_item(key)
            score_bits[r, s] = _key_bits(key)
        for s in range(m, width):
            out_items[r, s] = -1
            out_scores[r, s] = -np.inf


@njit(nogil=True)
def _tiles(n_items, width):
    """(j0, j1): the item positions of each tile, ``width`` wide (the last one may be less)."""
    for j0 in range(0, n_items, width):
        yield j0, min(j0 + width, n_items)


@njit(nogil=True, inline="always")
def _tile_scores(user_factors, item_factors, j0, j1, tile):
    """Scores of every row against items ``j0:j1`` (BLAS sgemm), into ``tile`` when that is
    the tile's width, else into a new array (the last, narrower tile)."""
    t = tile if j1 - j0 == tile.shape[1] else np.empty((user_factors.shape[0], j1 - j0), np.float32)
    np.dot(user_factors, item_factors[j0:j1].T, t)
    return t


@njit(nogil=True, inline="always")
def _mask_seen(tile, t0, t1, width, starts, seen_row, seen_col):
    """-inf at the seen entries of item tiles ``t0:t1`` (side by side in ``tile``)."""
    neg_inf = np.float32(-np.inf)
    for ti in range(t0, t1):
        shift = (ti - t0) * width
        for e in range(starts[ti], starts[ti + 1]):
            tile[seen_row[e], seen_col[e] + shift] = neg_inf


@njit(nogil=True, cache=True)
def score_block(user_factors, item_factors, item_of, position, indptr, indices, k, tile_items,
                cap, out_items, out_scores):
    """Exact top-k items of each row of ``user_factors`` (float32, C order), seen excluded.

    ``item_factors`` (n_items, f) float32 C order, rows in scan order (best: decreasing
    norm, so the first tile already holds strong candidates and the threshold starts high);
    ``item_of[p]``: original id of the item at position p, ``position`` its inverse.
    ``indptr`` (rows + 1) / ``indices``: CSR of the seen original ids, rows aligned with
    ``user_factors`` (``indptr`` may start at any offset). ``cap`` > k: keys buffered per row
    between compactions. Scores are computed ``rows x tile_items`` at a time with BLAS (limit
    BLAS to one thread when several blocks run in parallel). Fills ``out_items`` (int32,
    original ids) / ``out_scores`` (float32) of shape (rows, >= k). Releases the GIL.
    """
    n = user_factors.shape[0]
    n_items = item_factors.shape[0]
    width = max(min(tile_items, n_items), 1)
    n_tiles = (n_items + width - 1) // width
    # seen items bucketed by tile (a counting sort on the tile of each scan position; items
    # past the last tile are excluded ones): per tile, its (row, column) pairs
    base = indptr[0]
    total = indptr[n] - base
    seen_pos = np.empty(total, np.int32)
    starts = np.zeros(n_tiles + 2, np.int64)
    for q in range(total):
        p = position[indices[base + q]]
        seen_pos[q] = p
        if p < n_items:
            starts[p // width + 2] += 1
    for t in range(2, n_tiles + 2):
        starts[t] += starts[t - 1]
    seen_row = np.empty(starts[n_tiles + 1], np.int32)
    seen_col = np.empty(starts[n_tiles + 1], np.int32)
    for r in range(n):
        for q in range(indptr[r] - base, indptr[r + 1] - base):
            p = seen_pos[q]
            if p < n_items:
                t = p // width
                dst = starts[t + 1]
                seen_row[dst] = r
                seen_col[dst] = p - t * width
                starts[t + 1] = dst + 1
    counts = np.zeros(n, np.int64)
    thrs = np.full(n, NEG_MAX, np.float32)
    bufs = np.empty((n, cap + CHUNK), np.uint64)
    hits = np.empty(cap + CHUNK + UNROLL, np.int64)
    gmax = np.empty(2 * k, np.float32)
    gkeys = np.empty(2 * k, np.uint64)
    # the first tile is FIRST_TILES tiles wide (out of L2, read twice): the exact k-th best of
    # its 4x more scores is a much tighter threshold for every later tile, which then passes
    # ~4x fewer candidates (and compacts less)
    w0 = min(FIRST_TILES * width, n_items)
    first = np.empty((n, w0), np.float32)
    np.dot(user_factors, item_factors[:w0].T, first)
    _mask_seen(first, 0, (w0 + width - 1) // width, width, starts, seen_row, seen_col)
    _scan_tile(first, 0, k, bufs, counts, thrs, True, gmax, gkeys, item_of, hits)
    tile = np.empty((n, width), np.float32)
    for j0 in range(w0, n_items, width):
        j1 = min(j0 + width, n_items)
        t = _tile_scores(user_factors, item_factors, j0, j1, tile)
        _mask_seen(t, j0 // width, j0 // width + 1, width, starts, seen_row, seen_col)
        _scan_tile(t, j0, k, bufs, counts, thrs, False, gmax, gkeys, item_of, hits)
    _finish(bufs, counts, k, out_items, out_scores)


@njit(nogil=True, cache=True)
def gemm_block(user_factors, item_factors, tile_items):
    """The bare products of :func:`score_block` in its regular tiles (no wide first tile, no
    selection): a floor probe."""
    n = user_factors.shape[0]
    n_items = item_factors.shape[0]
    width = max(min(tile_items, n_items), 1)
    tile = np.empty((n, width), np.float32)
    acc = np.float32(0.0)
    for j0, j1 in _tiles(n_items, width):
        acc += _tile_scores(user_factors, item_factors, j0, j1, tile)[0, 0]
    return acc


def warm_up() -> None:
    """Compile (or load from cache) the kernels on tiny inputs (the seen-pattern kernel of
    :mod:`include.recsys.core.csr_kernel` too: the image build and the benchmarks call this)."""
    from include.recsys.core.csr_kernel import warm_up as pattern_warm_up

    pattern_warm_up()
    s = np.zeros((2, 3), dtype=np.float32)
    topk_block(s, np.zeros(3, np.int64), np.zeros(0, np.int32), 2, np.empty((2, 2), np.int32),
               np.empty((2, 2), np.float32))
    uf = np.zeros((2, 2), dtype=np.float32)
    ids = np.arange(3, dtype=np.int32)
    score_block(uf, np.zeros((3, 2), np.float32), ids, ids, np.zeros(3, np.int64),
                np.zeros(0, np.int32), 2, 2, 4, np.empty((2, 2), np.int32),
                np.empty((2, 2), np.float32))
    gemm_block(uf, np.zeros((3, 2), np.float32), 2)
