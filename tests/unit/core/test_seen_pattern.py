"""The seen pattern built once per run and re-indexed into a model's id maps
(:func:`include.recsys.core.ids.reindex_csr`) and the work-folder Parquet options
(:func:`include.recsys.core.io.work_parquet_options`): same matrices, same values read back."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from include.recsys.core.ids import csr_from_codes, reindex_csr
from include.recsys.core.io import work_parquet_options
from include.recsys.data.split import _newest_event


def _pairs(seed: int = 5, n_users: int = 40, n_items: int = 30, n: int = 600):
    rng = np.random.default_rng(seed)
    u = rng.integers(-1, n_users, n)  # -1: a missing id, dropped everywhere
    i = rng.integers(-1, n_items, n)
    return u, i, n_users, n_items


def _reference(u, i, rows, lookup, n_cols):
    """The per-consumer route reindex_csr replaces: translate every pair, then COO -> CSR."""
    row_of = np.full(int(max(u.max(), 0)) + 2, -1)
    row_of[rows[rows >= 0]] = np.flatnonzero(rows >= 0)
    uu = np.where(u >= 0, row_of[np.where(u >= 0, u, 0)], -1)
    ii = np.where(i >= 0, lookup[np.where(i >= 0, i, 0)], -1)
    return csr_from_codes(uu, ii, None, (len(rows), n_cols))


@pytest.mark.parametrize("rows_kind", ["contiguous", "permuted with missing", "empty"])
def test_reindex_csr_equals_translating_every_pair(rows_kind: str) -> None:
    u, i, n_users, n_items = _pairs()
    pattern = csr_from_codes(u, i, None, (n_users, n_items))
    rng = np.random.default_rng(1)
    rows = {
        "contiguous": np.arange(7, 23),
        "permuted with missing": np.concatenate((rng.permutation(n_users)[:25], [-1, -1])),
        "empty": np.arange(0),
    }[rows_kind]
    # the model's items: a permuted subset of the snapshot's (a dropped item maps to -1)
    lookup = np.full(n_items, -1)
    kept = rng.permutation(n_items)[:20]
    lookup[kept] = np.arange(20)
    got = reindex_csr(pattern.indptr, pattern.indices, rows, lookup, 20)
    want = _reference(u, i, rows, lookup, 20)
    assert got.shape == want.shape and got.dtype == np.float32
    assert got.has_sorted_indices
    np.testing.assert_array_equal(got.indptr, want.indptr)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.data, np.ones(want.nnz, np.float32))


def test_reindex_csr_reads_memory_mapped_arrays(tmp_path) -> None:
    u, i, n_users, n_items = _pairs(seed=9)
    pattern = csr_from_codes(u, i, None, (n_users, n_items))
    np.save(tmp_path / "indptr.npy", pattern.indptr)
    np.save(tmp_path / "indices.npy", pattern.indices)
    indptr = np.load(tmp_path / "indptr.npy", mmap_mode="r")
    indices = np.load(tmp_path / "indices.npy", mmap_mode="r")
    rows, lookup = np.arange(10, 30), np.arange(n_items)
    got = reindex_csr(indptr, indices, rows, lookup, n_items)
    assert (got != pattern[10:30]).nnz == 0


def test_work_parquet_options_keep_values_and_the_event_ts_statistics(tmp_path) -> None:
    df = pd.DataFrame({
        "user_id": pd.Categorical(["b", "a", "b", None]),
        "item_id": ["x", "y", "z", "x"],
        "event_ts": pd.to_datetime(["2026-01-01", "2026-01-03", "2026-01-02", "2026-01-04"], utc=True),
        "weight": np.array([1.0, 2.0, 3.0, 4.0], np.float32),
        "user_idx": np.array([1, 0, 1, -1], np.int32),
    })
    table = pa.Table.from_pandas(df, preserve_index=False)
    opts = work_parquet_options(table.schema)
    assert sorted(opts["use_dictionary"]) == ["item_id", "user_id"]
    assert sorted(opts["write_statistics"]) == ["event_ts", "user_idx", "weight"]
    path = tmp_path / "f.parquet"
    pq.write_table(table, path, store_schema=False, **opts)
    back = pq.read_table(path)
    plain = pq.read_table(_plain(table, tmp_path / "plain.parquet"))
    assert back.equals(plain)  # the same values and types as a default write
    meta = pq.ParquetFile(path).metadata.row_group(0)
    names = [meta.column(k).path_in_schema for k in range(meta.num_columns)]
    assert meta.column(names.index("user_id")).statistics is None or not meta.column(
        names.index("user_id")).statistics.has_min_max
    # the leak check still reads the newest event from the statistics
    assert pd.Timestamp(_newest_event(path)) == pd.Timestamp("2026-01-04", tz="UTC")


def _plain(table: pa.Table, path) -> str:
    pq.write_table(table, path, store_schema=False)
    return str(path)
