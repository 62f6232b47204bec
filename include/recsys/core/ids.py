"""TODO docstring."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

log = logging.getLogger(__name__)


#: Integer-code columns the snapshot and the split files carry next to the string ids.
CODE_COLUMNS = ("user_idx", "item_idx")


def _sorted_factorize(values: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """``pd.factorize(values, sort=True)``; a categorical is ranked from its categories (no
    hashing of the rows; categories unused by the rows stay in the uniques)."""
    if not isinstance(values.dtype, pd.CategoricalDtype):
        return pd.factorize(values, sort=True)
    cats = values.cat.categories
    order = cats.argsort()
    rank = np.empty(len(cats) + 1, np.int64)
    rank[order] = np.arange(len(cats))
    rank[-1] = -1  # code -1 (missing id) stays -1
    return rank[values.cat.codes.to_numpy()], cats[order]


def _present_map(uniques, codes: np.ndarray) -> tuple[pd.Index, np.ndarray]:
    """(the ids ``codes`` use, in their sorted order; old code -> new int32 code, -1 -> -1)."""
    present = np.bincount(codes[codes >= 0], minlength=len(uniques)) > 0
    remap = np.full(len(uniques) + 1, -1, np.int32)  # last slot: code -1 stays -1
    remap[:-1][present] = np.arange(int(present.sum()), dtype=np.int32)
    return pd.Index(uniques[present]), remap


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
                present = np.bincount(codes, minlength=len(uniques)) > 0
                if not present.all():  # unused categories are not ids
                    remap = np.cumsum(present) - 1
                    codes, uniques = remap[codes], uniques[present]
        else:
            codes, uniques = pd.factorize(values)
            codes = np.asarray(codes, dtype=np.int64)
            if uniques.dtype == object:  # as pd.unique: a plain array, so pd.Index infers "str"
                uniques = uniques.to_numpy()
        if len(codes) and codes.min() < 0:
            ids = cls.from_values(values)
            return ids, ids.index_of(values)
        ids, order = pd.Index(uniques).sort_values(return_indexer=True)
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order), dtype=np.int64)
        return cls(ids), rank[codes]

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
    import scipy.sparse as sp

    ok = (u >= 0) & (i >= 0)
    if not ok.all():
        u, i = u[ok], i[ok]
        data = data[ok] if data is not None else None
    binary = data is None
    data = np.ones(len(u), np.float32) if binary else data
    m = sp.csr_matrix((data, (u, i)), shape=shape, dtype=np.float32)
    m.sum_duplicates()
    m.sort_indices()
    if binary:
        m.data[:] = 1.0
    return m


def _binary_csr(matrix: sp.spmatrix | sp.sparray, name: str) -> sp.csr_matrix:
    """Copy ``matrix`` to a canonical CSR (sorted, no duplicates, no explicit zeros)."""
    if not sp.issparse(matrix):
        raise TypeError(f"{name} must be a scipy.sparse matrix, got {type(matrix).__name__}")
    csr = sp.csr_matrix(matrix, copy=True)
    csr.sum_duplicates()  # also sorts indices
    csr.eliminate_zeros()
    return csr
