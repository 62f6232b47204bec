"""TODO docstring."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from include.recsys.metrics.ranking import _row_ids
from include.recsys.metrics.slices import recent_item_popularity

log = logging.getLogger(__name__)


@dataclass
class HoldoutInputs:
    """Everything the pipeline's evaluate stage scores on, built by :func:`holdout_inputs`.

    Attributes:
        users: the holdout users (sorted external ids); row ``r`` of every matrix below.
        warm: bool per user: known to the candidate (has training events).
        eval_items: the eval item space: the candidate's items (its index order), then the
            holdout items the candidate does not know (sorted); one more dummy column follows.
        relevant: ``(len(users), len(eval_items) + 1)`` holdout matrix (entries: event counts).
        seen: ``(len(users), candidate items)`` training pairs of each user (the seen filter).
        recent: per candidate item, the distinct users with a training event in the
            ``recent_days`` before the cutoff (:func:`recent_item_popularity`).
        train_counts: distinct training items of every training user (heavy threshold).
        user_counts: distinct training items per holdout user (0: cold).
        first_ts: first training event per holdout user (NaT: none), positional.
        cutoff: the train/holdout split time.
        source: ``"codes"`` (the split files' ``user_idx`` / ``item_idx`` into the snapshot's id
            maps) or ``"strings"`` (the string ids: files without codes).
    """

    users: pd.Index
    warm: np.ndarray
    eval_items: pd.Index
    relevant: sp.csr_matrix
    seen: sp.csr_matrix
    recent: np.ndarray
    train_counts: np.ndarray
    user_counts: np.ndarray
    first_ts: pd.Series
    cutoff: pd.Timestamp
    source: str
    _seen_for: Callable[[Any], sp.csr_matrix] | None = field(default=None, repr=False)

    def seen_for(self, bundle: Any) -> sp.csr_matrix:
        """The seen filter (same pairs as :attr:`seen`) in another model's item space: rows
        are :attr:`users`, columns ``bundle.item_ids``; items it lacks are dropped."""
        if self._seen_for is None:
            raise RuntimeError("these inputs were not built by holdout_inputs")
        return self._seen_for(bundle)

    def to_eval_space(self, items: np.ndarray, item_ids: pd.Index) -> np.ndarray:
        """Item indices of a model with ``item_ids`` (``-1`` padded) -> eval item indices.

        Items outside the eval space go to the never-relevant dummy column ``len(eval_items)``.
        """
        pos = self.eval_items.get_indexer(pd.Index(item_ids))
        pos = np.where(pos < 0, len(self.eval_items), pos).astype(np.int64)
        items = np.asarray(items)
        return np.where(items >= 0, pos[np.maximum(items, 0)], -1)


def holdout_inputs(
    train_path: str | Path,
    holdout_path: str | Path,
    bundle: Any,
    *,
    recent_days: float,
    cutoff: pd.Timestamp | None = None,
    users_map: str | Path | None = None,
    items_map: str | Path | None = None,
) -> HoldoutInputs:
    """Read the split files once and build the evaluation inputs for a candidate model.

    ``bundle`` is the candidate (a :class:`~include.recsys.scoring.bundle.ModelBundle`: its
    ``user_ids`` / ``item_ids``). With the snapshot's
    id maps (``users_map`` / ``items_map``) and split files that carry ``user_idx`` /
    ``item_idx`` (all valid), everything is built from those integer codes: no string column
    is read. Otherwise (older work folders, hand-made files, missing ids) the string ids are
    used. Both routes give the same inputs (``tests/unit/test_evaluate_inputs.py``).

    Raises:
        ValueError: if a file lacks the columns it needs.
    """
    got = None
    if users_map and items_map:
        got = _inputs_from_codes(
            train_path, holdout_path, bundle, recent_days, cutoff, users_map, items_map
        )
    if got is None:
        got = _inputs_from_strings(train_path, holdout_path, bundle, recent_days, cutoff)
    log.info(
        "evaluation inputs from %s: %d holdout users (%d warm), %d eval items, %d relevant and "
        "%d seen pairs",
        got.source, len(got.users), int(got.warm.sum()), len(got.eval_items), got.relevant.nnz,
        got.seen.nnz,
    )
    return got


def _by_id(s: pd.Series) -> pd.Series:
    """A groupby result keyed by a categorical id column, re-keyed by the plain ids."""
    if isinstance(s.index, pd.CategoricalIndex):
        s.index = pd.Index(s.index.categories.take(s.index.codes), name=s.index.name)
    return s


def _inputs_from_strings(
    train_path: str | Path,
    holdout_path: str | Path,
    bundle: Any,
    recent_days: float,
    cutoff: pd.Timestamp | None,
) -> HoldoutInputs:
    """:func:`holdout_inputs` from the string ids (files without integer codes)."""
    from include.recsys.scoring.recommend import seen_matrix

    item_ids = bundle.item_ids

    # string ids as categoricals (Parquet dictionaries): the lookups below (isin, get_indexer,
    # drop_duplicates, groupby) run on integer codes, with no 13M-row string columns in memory
    train_df = pd.read_parquet(
        train_path, columns=["user_id", "item_id", "event_ts"], read_dictionary=["user_id", "item_id"]
    )
    holdout = pd.read_parquet(holdout_path, columns=["user_id", "item_id"])
    cutoff = pd.Timestamp(cutoff if cutoff is not None else train_df["event_ts"].max())
    users = pd.Index(pd.unique(holdout["user_id"])).sort_values()
    warm = np.asarray(users.isin(bundle.user_ids), dtype=bool)
    seen_df = train_df.loc[train_df["user_id"].isin(users), ["user_id", "item_id"]]
    eval_items = item_ids.append(pd.Index(pd.unique(holdout["item_id"])).difference(item_ids))
    rows = users.get_indexer(holdout["user_id"])
    cols = eval_items.get_indexer(holdout["item_id"])
    relevant = sp.csr_matrix(
        (np.ones(len(holdout), np.float32), (rows, cols)), shape=(len(users), len(eval_items) + 1)
    )
    relevant.sum_duplicates()
    del holdout, rows, cols

    def seen_for(model: Any) -> sp.csr_matrix:
        return seen_matrix(model, users, seen_df)

    seen = seen_for(bundle)
    recent = recent_item_popularity(train_df, item_ids, cutoff, recent_days)
    pairs = train_df[["user_id", "item_id"]].drop_duplicates()
    counts = _by_id(pairs.groupby("user_id", observed=True).size())
    del pairs
    first_ts = _by_id(train_df.groupby("user_id", observed=True)["event_ts"].min()).reindex(users)
    del train_df
    return HoldoutInputs(
        users=users,
        warm=warm,
        eval_items=eval_items,
        relevant=relevant,
        seen=seen,
        recent=recent,
        train_counts=counts.to_numpy(),
        user_counts=counts.reindex(users).fillna(0).to_numpy().astype(np.int64),
        first_ts=first_ts.reset_index(drop=True),
        cutoff=cutoff,
        source="strings",
        _seen_for=seen_for,
    )


def _code_positions(codes_map: pd.Index, ids: pd.Index) -> np.ndarray:
    """Per code of the sorted ``codes_map``: the position of that id in ``ids`` (-1: absent)."""
    out = np.full(len(codes_map), -1, dtype=np.int64)
    at = codes_map.get_indexer(pd.Index(ids))
    ok = at >= 0
    out[at[ok]] = np.flatnonzero(ok)
    return out


def _remap_columns(m: sp.csr_matrix, position: np.ndarray, n_cols: int) -> sp.csr_matrix:
    """``m`` with column ``c`` moved to ``position[c]`` (dropped where -1), canonical CSR."""
    cols = position[m.indices]
    keep = cols >= 0
    if keep.all():
        out = sp.csr_matrix((m.data.copy(), cols.astype(np.int32), m.indptr.copy()), shape=(m.shape[0], n_cols))
    else:
        row_len = np.bincount(_row_ids(m.indptr)[keep], minlength=m.shape[0])
        indptr = np.concatenate([[0], np.cumsum(row_len)]).astype(m.indptr.dtype)
        out = sp.csr_matrix(
            (m.data[keep], cols[keep].astype(np.int32), indptr), shape=(m.shape[0], n_cols)
        )
    kept = position[position >= 0]
    if kept.size > 1 and not bool(np.all(np.diff(kept) > 0)):  # order changed within rows
        out.has_sorted_indices = False
    out.sort_indices()
    out.has_canonical_format = True
    return out


def _inputs_from_codes(
    train_path: str | Path,
    holdout_path: str | Path,
    bundle: Any,
    recent_days: float,
    cutoff: pd.Timestamp | None,
    users_map: str | Path,
    items_map: str | Path,
) -> HoldoutInputs | None:
    """:func:`holdout_inputs` from the ``user_idx`` / ``item_idx`` codes; None when the files
    lack them, a code is missing (-1) or out of range, or the maps are not strictly sorted
    (the string route then decides, with its own semantics)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from include.recsys.core.ids import CODE_COLUMNS, IdMap

    for path in (train_path, holdout_path):
        if not set(CODE_COLUMNS) <= set(pq.read_schema(path).names):
            log.info("%s has no %s columns: evaluation inputs from the string ids", path, CODE_COLUMNS)
            return None
    user_map, item_map = IdMap.read(users_map, "user").ids, IdMap.read(items_map, "item").ids
    for name, ids in (("user", user_map), ("item", item_map)):
        if not (ids.is_monotonic_increasing and ids.is_unique):
            log.warning("%s id map is not strictly sorted: evaluation inputs from the string ids", name)
            return None
    n_u, n_i = len(user_map), len(item_map)
    hold = pq.read_table(holdout_path, columns=list(CODE_COLUMNS))
    train = pq.read_table(train_path, columns=[*CODE_COLUMNS, "event_ts"])
    arrays = {}
    for label, table in (("holdout", hold), ("train", train)):
        for col, n in zip(CODE_COLUMNS, (n_u, n_i), strict=True):
            c = pc.fill_null(table.column(col), -1).to_numpy()  # int32: half the memory
            if c.size and (int(c.min()) < 0 or int(c.max()) >= n):
                log.warning(
                    "%s %s holds missing or out-of-range codes (id map of %d): evaluation inputs "
                    "from the string ids", label, col, n,
                )
                return None
            arrays[label, col] = c
    hu, hi = arrays["holdout", "user_idx"], arrays["holdout", "item_idx"]
    tu, ti = arrays["train", "user_idx"], arrays["train", "item_idx"]
    ts_type = train.schema.field("event_ts").type
    if not pa.types.is_timestamp(ts_type):
        log.warning("%s: event_ts is %s, not a timestamp: evaluation inputs from the string ids", train_path, ts_type)
        return None
    ts = train.column("event_ts")
    if cutoff is None:
        cutoff = pd.Timestamp(pc.max(ts).as_py())
    cutoff = pd.Timestamp(cutoff)
    ts_int = pc.fill_null(ts.cast(pa.int64()), np.iinfo(np.int64).min).to_numpy()
    del hold, train, ts, arrays

    users_codes = np.flatnonzero(np.bincount(hu, minlength=n_u))  # sorted, distinct
    users = user_map[users_codes]
    row_of = np.full(n_u, -1, dtype=np.int64)
    row_of[users_codes] = np.arange(users_codes.size)
    warm = _code_positions(user_map, bundle.user_ids)[users_codes] >= 0
    item_pos = _code_positions(item_map, bundle.item_ids)
    n_model = len(bundle.item_ids)
    extra = np.flatnonzero(np.bincount(hi[item_pos[hi] < 0], minlength=n_i))
    eval_col = item_pos.copy()
    eval_col[extra] = n_model + np.arange(extra.size)
    eval_items = bundle.item_ids.append(item_map[extra])
    relevant = sp.csr_matrix(
        (np.ones(hu.size, np.float32), (row_of[hu], eval_col[hi])),
        shape=(users.size, len(eval_items) + 1),
    )
    relevant.sum_duplicates()
    del hu, hi, row_of, eval_col

    # distinct training (user, item) pairs of every snapshot user: one canonical CSR
    pairs = sp.csr_matrix((np.ones(tu.size, np.float32), (tu, ti)), shape=(n_u, n_i))
    pairs.sum_duplicates()
    counts = np.diff(pairs.indptr).astype(np.int64)
    held = pairs[users_codes]
    del pairs

    def seen_for(model: Any) -> sp.csr_matrix:
        return _remap_columns(held, _code_positions(item_map, model.item_ids), len(model.item_ids))

    seen = _remap_columns(held, item_pos, n_model)

    # recent popularity: distinct (user, item) pairs in [cutoff - recent_days, cutoff)
    since, until = _time_bounds(cutoff, recent_days, ts_type.unit)
    window = (ts_int >= since) & (ts_int < until)
    keys = _distinct(tu[window].astype(np.int64) * n_i + ti[window])
    per_code = np.bincount(keys % n_i, minlength=n_i).astype(np.int64)
    model_codes = item_map.get_indexer(bundle.item_ids)
    recent = np.where(model_codes >= 0, per_code[np.maximum(model_codes, 0)], 0).astype(np.int64)
    del window, keys

    # first training event per user (NaT events ignored, as groupby's min does)
    nat, never = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    valid = ts_int != nat
    first = np.full(n_u, never, dtype=np.int64)
    np.minimum.at(first, tu[valid], ts_int[valid])
    first = first[users_codes]
    first[first == never] = nat
    first_ts = pd.Series(first.view(f"datetime64[{ts_type.unit}]"))  # the column's dtype:
    if ts_type.tz is not None:  # UTC instants, shown in the column's time zone
        first_ts = first_ts.dt.tz_localize("UTC").dt.tz_convert(ts_type.tz)
    return HoldoutInputs(
        users=users,
        warm=warm,
        eval_items=eval_items,
        relevant=relevant,
        seen=seen,
        recent=recent,
        train_counts=counts[counts > 0],
        user_counts=counts[users_codes],
        first_ts=first_ts,
        cutoff=cutoff,
        source="codes",
        _seen_for=seen_for,
    )


def _distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (``np.unique`` without its hash table, much slower here)."""
    out = np.sort(values)
    if out.size:
        out = out[np.concatenate([[True], out[1:] != out[:-1]])]
    return out


def _time_bounds(cutoff: pd.Timestamp, days: float, unit: str) -> tuple[int, int]:
    """``[cutoff - days, cutoff)`` as integer bounds on timestamps stored in ``unit`` (UTC):
    ``ts >= lo and ts < hi`` on the integers is the same test on the instants."""
    cut = pd.Timestamp(cutoff)
    cut = cut.tz_localize("UTC") if cut.tzinfo is None else cut.tz_convert("UTC")
    per = int(pd.Timedelta(1, unit=unit).value)  # nanoseconds per stored unit

    def ceil_units(t: pd.Timestamp) -> int:
        return -(-int(t.value) // per)

    return ceil_units(cut - pd.Timedelta(days=float(days))), ceil_units(cut)
