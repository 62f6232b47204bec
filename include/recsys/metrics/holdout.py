"""The evaluate stage's inputs: the holdout, seen and training figures of the split files,
read once from their ``user_idx`` / ``item_idx`` codes into the snapshot's sorted id maps (no
string column is read; files without codes raise :class:`~include.recsys.errors.IdRouteError`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from include.recsys.core.ids import (
    RERUN,
    pattern_csr,
    read_codes,
    read_id_maps,
    require_codes,
    translate_codes,
)
from include.recsys.errors import IdRouteError
from include.recsys.metrics.ranking import _row_ids

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
        seen: ``(len(users), candidate items)`` distinct training pairs of each user (the seen
            filter; a binary pattern: 1.0 per pair).
        recent: per candidate item, the distinct users with a training event in the
            ``recent_days`` before the cutoff (the recent-popularity baseline).
        train_counts: distinct training items of every training user (heavy threshold).
        user_counts: distinct training items per holdout user (0: cold).
        first_ts: first training event per holdout user (NaT: none), positional.
        cutoff: the train/holdout split time.
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
    users_map: str | Path | None,
    items_map: str | Path | None,
) -> HoldoutInputs:
    """Read the split files once and build the evaluation inputs for a candidate model.

    ``bundle`` is the candidate (a :class:`~include.recsys.scoring.bundle.ModelBundle`: its
    ``user_ids`` / ``item_ids``); ``users_map`` / ``items_map`` the snapshot's sorted id maps
    that the files' ``user_idx`` / ``item_idx`` index. ``cutoff`` defaults to the newest
    training event.

    Raises:
        IdRouteError: a map is missing or not strictly sorted, a file has no codes, a code is
            missing (-1) or outside its map, or ``event_ts`` is not a timestamp.
    """
    codes = _read_codes(train_path, holdout_path, users_map, items_map, cutoff)
    users_codes, got = _relevant_and_seen(codes, bundle)
    recent, first_ts = _recent_and_first_ts(codes, bundle, users_codes, recent_days)
    inputs = HoldoutInputs(**got, recent=recent, first_ts=first_ts, cutoff=codes.cutoff)
    log.info(
        "evaluation inputs from the split's codes: %d holdout users (%d warm), %d eval items, "
        "%d relevant and %d seen pairs",
        len(inputs.users), int(inputs.warm.sum()), len(inputs.eval_items), inputs.relevant.nnz,
        inputs.seen.nnz,
    )
    return inputs


@dataclass
class _SplitCodes:
    """The split files as codes: ``hold_*`` / ``train_*`` per row (int32), ``ts`` the training
    events' times as int64 in the column's ``ts_type`` unit (NaT: int64 min)."""

    user_map: pd.Index
    item_map: pd.Index
    hold_u: np.ndarray
    hold_i: np.ndarray
    train_u: np.ndarray
    train_i: np.ndarray
    ts: np.ndarray
    ts_type: Any
    cutoff: pd.Timestamp


def _read_codes(
    train_path: str | Path,
    holdout_path: str | Path,
    users_map: str | Path | None,
    items_map: str | Path | None,
    cutoff: pd.Timestamp | None,
) -> _SplitCodes:
    """The codes and training times of the split files, checked against the id maps."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for path in (train_path, holdout_path):
        require_codes(path)
    users, items = read_id_maps(users_map, items_map, train_path)
    for name, ids in (("user", users.ids), ("item", items.ids)):
        if not (ids.is_monotonic_increasing and ids.is_unique):
            raise IdRouteError(f"the {name} id map of {train_path} is not strictly sorted: {RERUN}")
    sizes = (len(users), len(items))
    hold_u, hold_i = read_codes(holdout_path, sizes)  # int32: half the memory
    train_u, train_i = read_codes(train_path, sizes)
    ts = pq.read_table(train_path, columns=["event_ts"]).column("event_ts")
    if not pa.types.is_timestamp(ts.type):
        raise IdRouteError(f"{train_path}: event_ts is {ts.type}, not a timestamp (not a split of "
                           f"this pipeline's): {RERUN}")
    cutoff = pd.Timestamp(cutoff if cutoff is not None else pc.max(ts).as_py())
    return _SplitCodes(
        users.ids, items.ids, hold_u, hold_i, train_u, train_i,
        ts=pc.fill_null(ts.cast(pa.int64()), np.iinfo(np.int64).min).to_numpy(), ts_type=ts.type, cutoff=cutoff,
    )


def _relevant_and_seen(codes: _SplitCodes, bundle: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """(the holdout users' codes, the :class:`HoldoutInputs` fields of the holdout users, the
    eval item space, the relevant and seen matrices and the training counts)."""
    user_map, item_map = codes.user_map, codes.item_map
    n_u, n_i = len(user_map), len(item_map)
    hu, hi = codes.hold_u, codes.hold_i
    users_codes = np.flatnonzero(np.bincount(hu, minlength=n_u))  # sorted, distinct
    users = user_map[users_codes]
    row_of = np.full(n_u, -1, dtype=np.int64)
    row_of[users_codes] = np.arange(users_codes.size)
    warm = translate_codes(users_codes, user_map, bundle.user_ids) >= 0
    item_pos = translate_codes(np.arange(n_i), item_map, bundle.item_ids)  # snapshot item -> model item
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
    del row_of, eval_col

    # distinct training (user, item) pairs of every snapshot user: one canonical binary CSR
    pairs = pattern_csr(codes.train_u, codes.train_i, (n_u, n_i))
    counts = np.diff(pairs.indptr).astype(np.int64)
    held = pairs[users_codes]
    del pairs

    def seen_for(model: Any) -> sp.csr_matrix:
        return _remap_columns(held, translate_codes(np.arange(n_i), item_map, model.item_ids), len(model.item_ids))

    return users_codes, {
        "users": users,
        "warm": warm,
        "eval_items": eval_items,
        "relevant": relevant,
        "seen": _remap_columns(held, item_pos, n_model),
        "train_counts": counts[counts > 0],
        "user_counts": counts[users_codes],
        "_seen_for": seen_for,
    }


def _recent_and_first_ts(
    codes: _SplitCodes, bundle: Any, users_codes: np.ndarray, recent_days: float
) -> tuple[np.ndarray, pd.Series]:
    """(distinct recent users per candidate item, first training event per holdout user)."""
    tu, ti, ts, n_i = codes.train_u, codes.train_i, codes.ts, len(codes.item_map)
    # recent popularity: distinct (user, item) pairs in [cutoff - recent_days, cutoff)
    since, until = _time_bounds(codes.cutoff, recent_days, codes.ts_type.unit)
    window = (ts >= since) & (ts < until)
    keys = _distinct(tu[window].astype(np.int64) * n_i + ti[window])
    per_code = np.bincount(keys % n_i, minlength=n_i).astype(np.int64)
    # per model item; an item the snapshot map lacks (code -1) takes the appended 0
    model_codes = translate_codes(np.arange(len(bundle.item_ids)), bundle.item_ids, codes.item_map)
    recent = np.append(per_code, 0)[model_codes]
    del window, keys

    # first training event per user (NaT events ignored, as groupby's min does)
    nat, never = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    valid = ts != nat
    first = np.full(len(codes.user_map), never, dtype=np.int64)
    np.minimum.at(first, tu[valid], ts[valid])
    first = first[users_codes]
    first[first == never] = nat
    first_ts = pd.Series(first.view(f"datetime64[{codes.ts_type.unit}]"))  # the column's dtype:
    if codes.ts_type.tz is not None:  # UTC instants, shown in the column's time zone
        first_ts = first_ts.dt.tz_localize("UTC").dt.tz_convert(codes.ts_type.tz)
    return recent, first_ts


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
