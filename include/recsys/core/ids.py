"""The one id route: external ids -> int32 codes into sorted id maps, and back.

The snapshot stage writes every row's ``user_idx`` / ``item_idx`` (:data:`CODE_COLUMNS`) into the
sorted maps ``users.parquet`` / ``items.parquet`` beside it; later stages join, group and build
matrices on those codes, and a file without them is refused (:class:`IdRouteError`), never read
through the string ids. Code ``-1`` means "no id" everywhere."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from include.recsys.errors import IdRouteError

log = logging.getLogger(__name__)


#: Integer-code columns the snapshot and the split files carry next to the string ids.
CODE_COLUMNS = ("user_idx", "item_idx")

RERUN = "rerun the snapshot stage for this interval (and the stages after it)"


def compact_codes(codes: np.ndarray, n: int, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """``(present, new_codes)``: which of the ``n`` ids ``codes`` use, and the codes renumbered
    into the used ids only (their order kept; -1 stays -1), as ``dtype`` (default: the codes').

    Codes that already use every id come back as they are (no copy when the dtype matches)."""
    codes = np.asarray(codes)
    dtype = codes.dtype if dtype is None else np.dtype(dtype)
    present = np.bincount(codes[codes >= 0], minlength=n) > 0
    if present.all():
        return present, codes.astype(dtype, copy=False)
    remap = np.full(n + 1, -1, dtype)  # last slot: code -1 stays -1
    remap[:-1][present] = np.arange(int(present.sum()), dtype=dtype)
    return present, remap[codes]


def translate_codes(codes: np.ndarray, from_ids: pd.Index, to_ids: pd.Index, dtype=np.int64) -> np.ndarray:
    """Codes into ``from_ids`` -> codes into ``to_ids`` (-1: an id ``to_ids`` lacks, or code -1).

    Each distinct id is looked up once (``to_ids.get_indexer(from_ids)``), the rows are one
    integer gather through it."""
    lookup = np.append(pd.Index(to_ids).get_indexer(pd.Index(from_ids)), -1).astype(dtype, copy=False)
    return lookup[codes]


def _sort_codes(codes: np.ndarray, uniques: pd.Index) -> tuple[np.ndarray, pd.Index]:
    """Codes into the distinct ``uniques`` -> codes into ``uniques`` sorted (-1 stays -1)."""
    ids, order = pd.Index(uniques).sort_values(return_indexer=True)
    rank = np.empty(len(order) + 1, np.int64)
    rank[order] = np.arange(len(order), dtype=np.int64)
    rank[-1] = -1  # code -1 (missing id) stays -1
    return rank[codes], ids


def _sorted_factorize(values: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """``pd.factorize(values, sort=True)``; a categorical is ranked from its categories (no
    hashing of the rows; categories unused by the rows stay in the uniques)."""
    if not isinstance(values.dtype, pd.CategoricalDtype):
        return pd.factorize(values, sort=True)
    return _sort_codes(values.cat.codes.to_numpy(), values.cat.categories)


def encode(df: pd.DataFrame) -> tuple[pd.DataFrame, IdMap, IdMap]:
    """``df`` with int32 ``user_idx`` / ``item_idx`` into its own sorted id maps, and the maps.

    What the snapshot stage gives the pipeline, for frames that do not come from a snapshot
    (tests, benchmarks, other data sets) on their way into training."""
    users, u = IdMap.factorize(df["user_id"])
    items, i = IdMap.factorize(df["item_id"])
    out = df.copy(deep=False)
    out["user_idx"], out["item_idx"] = u.astype(np.int32), i.astype(np.int32)
    return out, users, items


def require_codes(path: Path | str, names: list[str] | None = None) -> None:
    """Raise :class:`IdRouteError` unless the Parquet file ``path`` has :data:`CODE_COLUMNS`."""
    if names is None:
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
    missing = [c for c in CODE_COLUMNS if c not in names]
    if missing:
        raise IdRouteError(f"{path} has no {'/'.join(missing)} codes into the snapshot's id maps: {RERUN}")


def read_codes(path: Path | str, sizes: tuple[int, int] | None = None, *,
               allow_missing: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The ``user_idx`` / ``item_idx`` columns of a Parquet file (as stored, int32; null -> -1).

    With ``sizes`` (the lengths of the user and item maps) a code outside ``[0, size)`` raises
    :class:`IdRouteError`; ``allow_missing`` lets -1 (a missing id) through."""
    import pyarrow.parquet as pq

    require_codes(path)
    table = pq.read_table(path, columns=list(CODE_COLUMNS))
    out = tuple((col.fill_null(-1) if col.null_count else col).to_numpy()
                for col in (table.column(c) for c in CODE_COLUMNS))
    del table
    if sizes is not None:
        lo = -1 if allow_missing else 0
        for name, codes, n in zip(CODE_COLUMNS, out, sizes, strict=True):
            if len(codes) and (int(codes.min()) < lo or int(codes.max()) >= n):
                raise IdRouteError(f"{path}: {name} outside [{lo}, {n}) of the id map beside it "
                                   f"(missing ids, or maps of another snapshot): {RERUN}")
    return out  # type: ignore[return-value]


def read_id_maps(users: Path | str | None, items: Path | str | None, data: Path | str) -> tuple[IdMap, IdMap]:
    """The sorted user and item maps of ``data`` (a snapshot or split file); a map that is not
    given or not there raises :class:`IdRouteError`."""
    for name, path in (("user", users), ("item", items)):
        if not path or not Path(path).exists():
            raise IdRouteError(f"{data}: no {name} id map ({path or 'none given'}): {RERUN}")
    return IdMap.read(users, "user"), IdMap.read(items, "item")


@dataclass
class IdMap:
    """External ids in index order; ``index_of`` maps external ids to indices (-1 if unknown)."""

    ids: pd.Index

    @classmethod
    def from_values(cls, values: pd.Series) -> IdMap:
        return cls(pd.Index(pd.unique(values)).sort_values())

    @classmethod
    def factorize(cls, values: pd.Series) -> tuple[IdMap, np.ndarray]:
        """``(from_values(values), index_of(values))`` in one hashing pass instead of two.

        ``pd.factorize`` (Arrow's dictionary encoding for string columns) gives codes in order
        of first appearance; only the distinct ids are then sorted and the codes remapped, so
        the map and the indices equal the two-pass result. A categorical column uses its codes
        directly (the map holds the categories present, in the categories' dtype). Missing ids
        fall back to the two-pass route, which keeps NaN as an id.
        """
        if isinstance(values.dtype, pd.CategoricalDtype):
            codes = np.asarray(values.cat.codes, dtype=np.int64)
            uniques = pd.Index(values.cat.categories)
            if len(codes) and codes.min() >= 0:
                present, codes = compact_codes(codes, len(uniques))  # unused categories are not ids
                uniques = uniques[present]
        else:
            codes, uniques = pd.factorize(values)
            codes = np.asarray(codes, dtype=np.int64)
            if uniques.dtype == object:  # as pd.unique: a plain array, so pd.Index infers "str"
                uniques = uniques.to_numpy()
        if len(codes) and codes.min() < 0:
            ids = cls.from_values(values)
            return ids, ids.index_of(values)
        codes, ids = _sort_codes(codes, pd.Index(uniques))
        return cls(ids), codes

    def index_of(self, values: pd.Series | pd.Index | np.ndarray) -> np.ndarray:
        return self.ids.get_indexer(values)

    def __len__(self) -> int:
        return len(self.ids)

    def to_frame(self, name: str) -> pd.DataFrame:
        return pd.DataFrame({f"{name}_index": np.arange(len(self.ids), dtype=np.int64), f"{name}_id": self.ids})

    @classmethod
    def read(cls, path: Path | str, name: str) -> IdMap:
        return cls(pd.Index(pd.read_parquet(path)[f"{name}_id"]))


def interaction_matrix(
    df: pd.DataFrame,
    users: IdMap,
    items: IdMap,
    *,
    value: str | None = "weight",
    codes: tuple[np.ndarray, np.ndarray] | None = None,
):
    """CSR (users x items) of the summed ``value`` (or 1.0 per pair when ``value`` is None).

    Rows whose user or item is not in the maps are dropped. float32, sorted indices.
    ``codes``: the rows' ``(users.index_of(user_id), items.index_of(item_id))`` when the caller
    has them already (:meth:`IdMap.factorize`): the string lookups are the slow part.
    """
    if codes is None:
        codes = users.index_of(df["user_id"]), items.index_of(df["item_id"])
    data = df[value].to_numpy(np.float32) if value else None
    return csr_from_codes(codes[0], codes[1], data, (len(users), len(items)))


def csr_from_codes(u: np.ndarray, i: np.ndarray, data: np.ndarray | None, shape: tuple[int, int]):
    """CSR float32 of ``data`` summed per (u, i) (None: 1.0 per pair); rows with a -1 dropped.

    Canonical: sorted indices, one entry per pair (what implicit's ALS expects).
    """
    if data is None:  # the pattern: two counting sorts, compiled (core.csr_kernel)
        return pattern_csr(u, i, shape)
    ok = (u >= 0) & (i >= 0)
    if not ok.all():
        u, i, data = u[ok], i[ok], data[ok]
    m = sp.csr_matrix((data, (u, i)), shape=shape, dtype=np.float32)
    m.sum_duplicates()
    m.sort_indices()
    return m


def pattern_csr(u: np.ndarray, i: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """Binary canonical CSR (float32 ones, sorted indices, one entry per distinct pair) of the
    code pairs ``(u, i)``; pairs with a -1 (or any negative code) are dropped. Codes must be
    below ``shape``: out-of-range codes raise ``ValueError`` (the compiled kernel,
    :func:`include.recsys.core.csr_kernel.pattern_arrays`, does not check)."""
    from include.recsys.core.csr_kernel import pattern_arrays

    n_rows, n_cols = int(shape[0]), int(shape[1])
    u = np.ascontiguousarray(u)
    i = np.ascontiguousarray(i)
    if len(u) != len(i):
        raise ValueError(f"{len(u)} user codes but {len(i)} item codes")
    if len(u) and (int(u.max()) >= n_rows or int(i.max()) >= n_cols):
        raise ValueError(f"codes outside the shape {shape}: max user {int(u.max())}, max item {int(i.max())}")
    indptr, indices = pattern_arrays(u, i, n_rows, n_cols)
    m = pattern_matrix(indptr, indices, (n_rows, n_cols))
    m.has_sorted_indices = True
    m.has_canonical_format = True
    return m


def reindex_csr(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray, col_lookup: np.ndarray,
                n_cols: int) -> sp.csr_matrix:
    """Binary canonical CSR (float32 ones, sorted indices) whose row ``r`` is row ``rows[r]`` of
    the CSR pattern (``indptr``, ``indices``) (-1: an empty row), each column code ``c`` mapped to
    ``col_lookup[c]`` (-1: dropped).

    Re-indexes a pattern built once into other id maps (a model's users and items) with
    integer gathers only: no COO -> CSR conversion, no duplicate summing (a lookup that is
    one-to-one, as id maps are, cannot create duplicates). ``indptr`` / ``indices`` may be
    memory-mapped; only the rows asked for are read.
    """
    rows = np.asarray(rows, dtype=np.int64)
    ok = rows >= 0
    safe = np.where(ok, rows, 0)
    starts = np.where(ok, np.asarray(indptr[safe], dtype=np.int64), 0)
    lengths = np.where(ok, np.asarray(indptr[safe + 1], dtype=np.int64) - starts, 0)
    ptr = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=ptr[1:])
    total = int(ptr[-1])
    if len(rows) and total and ok.all() and (np.diff(rows) == 1).all():  # a contiguous range: one slice
        codes = np.asarray(indices[int(starts[0]) : int(starts[0]) + total])
    else:
        codes = np.asarray(indices)[np.repeat(starts - ptr[:-1], lengths) + np.arange(total, dtype=np.int64)]
    cols = np.asarray(col_lookup)[codes]
    keep = cols >= 0
    if not keep.all():
        ptr = np.concatenate(([0], np.cumsum(keep, dtype=np.int64)))[ptr]
        cols = cols[keep]
    m = pattern_matrix(ptr, cols, (len(rows), n_cols))
    m.sort_indices()  # the target item order may differ from the source's
    return m


def pattern_matrix(indptr: np.ndarray, indices: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """Binary CSR (float32 ones) over ``indptr`` / ``indices``, with int32 index arrays when
    the sizes allow (as scipy picks them). Sorting is the caller's business."""
    index = np.int32 if max(len(indices), *shape) < np.iinfo(np.int32).max else np.int64
    return sp.csr_matrix((np.ones(len(indices), np.float32), np.asarray(indices).astype(index, copy=False),
                          np.asarray(indptr).astype(index, copy=False)), shape=shape)


def _binary_csr(matrix: sp.spmatrix | sp.sparray, name: str) -> sp.csr_matrix:
    """Copy ``matrix`` to a canonical CSR (sorted, no duplicates, no explicit zeros)."""
    if not sp.issparse(matrix):
        raise TypeError(f"{name} must be a scipy.sparse matrix, got {type(matrix).__name__}")
    csr = sp.csr_matrix(matrix, copy=True)
    csr.sum_duplicates()  # also sorts indices
    csr.eliminate_zeros()
    return csr
