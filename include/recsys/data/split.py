"""Leak-free time-based holdout.

Everything strictly before ``cutoff = window.end - holdout_days`` trains; events at or after it
form the holdout. The relevant set of a user is the holdout items they had NOT interacted with
in training (seen items are filtered from every recommender, so they could never be hits).
Users with holdout events but no training events are cold users: counted, not scored here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from include.recsys.core.ids import CODE_COLUMNS, require_codes
from include.recsys.data.source import DICTIONARY_COLUMNS, string_columns
from include.recsys.errors import TrainingError

log = logging.getLogger(__name__)


@dataclass
class SplitStats:
    cutoff: str
    train_rows: int
    holdout_rows: int
    holdout_pairs_new: int
    holdout_users_warm: int
    holdout_users_cold: int


def time_split(df: pd.DataFrame, cutoff: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame, SplitStats]:
    """Return (train, holdout, stats); holdout keeps one row per new (user, item) pair."""
    is_train = (df["event_ts"] < cutoff).to_numpy()
    train = df.loc[is_train].reset_index(drop=True)
    if train.empty:
        raise ValueError(f"the split leaves no training events before the cutoff {cutoff}")
    later = df.loc[~is_train, ["user_id", "item_id", "event_ts"]]
    u_codes, users = pd.factorize(df["user_id"])
    i_codes, items = pd.factorize(df["item_id"])
    new, warm, cold = _new_pairs(u_codes, i_codes, len(users), len(items), is_train)
    holdout = later.loc[new].reset_index(drop=True)
    return train, holdout, _stats(cutoff, is_train, len(holdout), warm, cold)


def _new_pairs(
    u_codes: np.ndarray, i_codes: np.ndarray, n_users: int, n_items: int, is_train: np.ndarray
) -> tuple[np.ndarray, int, int]:
    """Which later events start a new (user, item) pair: the first time a pair shows up after the
    cutoff, minus pairs seen in training. Returns (mask over the later events, warm, cold users).

    A missing id (code -1) is a value of its own. Compiled
    (:func:`include.recsys.core.csr_kernel.new_pairs`): rows grouped by user, one stamp per item.
    """
    from include.recsys.core.csr_kernel import new_pairs

    u_codes, i_codes = np.ascontiguousarray(u_codes), np.ascontiguousarray(i_codes)
    is_train = np.ascontiguousarray(is_train, dtype=bool)
    for name, codes, n in (("user", u_codes, n_users), ("item", i_codes, n_items)):
        if codes.dtype.kind not in "iu" or (len(codes) and (codes.min() < -1 or codes.max() >= n)):
            # the kernel does not check its indices
            raise ValueError(f"{name} codes must be integers in [-1, {n}), got {codes.dtype} "
                             f"in [{codes.min() if len(codes) else None}, {codes.max() if len(codes) else None}]")
    if len(u_codes) >= 2**31 or n_items >= 2**30:
        raise ValueError(f"the split's kernel takes < 2**31 rows and < 2**30 items (int32 positions and keys), "
                         f"got {len(u_codes):,} rows and {n_items:,} items: shorten the window (window_days)")
    new, warm, cold = new_pairs(u_codes, i_codes, n_users, n_items, is_train)
    return new[~is_train], int(warm), int(cold)


def _stats(cutoff: pd.Timestamp, is_train: np.ndarray, new_pairs: int, warm: int, cold: int) -> SplitStats:
    stats = SplitStats(
        cutoff=cutoff.isoformat(),
        train_rows=int(is_train.sum()),
        holdout_rows=int((~is_train).sum()),
        holdout_pairs_new=new_pairs,
        holdout_users_warm=warm,
        holdout_users_cold=cold,
    )
    log.info(
        "split at %s: %d train rows, %d holdout rows -> %d new (user, item) pairs for %d warm "
        "users (%d cold users not scored)",
        cutoff, stats.train_rows, stats.holdout_rows, new_pairs, warm, cold,
    )
    return stats


def time_split_file(
    path: str | Path, cutoff: pd.Timestamp, train_path: str | Path, holdout_path: str | Path
) -> SplitStats:
    """:func:`time_split` of the Parquet file ``path``, written to ``train_path`` and
    ``holdout_path`` (the same rows, columns and order), without the whole frame in memory.

    The snapshot is split on its ``user_idx`` / ``item_idx`` codes (a snapshot without them
    raises :class:`~include.recsys.errors.IdRouteError`) and both outputs keep them. The
    training rows are copied row group by row group, string columns as Parquet dictionaries,
    so the peak is one row group plus the codes instead of the frame and its training copy.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from include.recsys.core.io import work_parquet_options, write_parquet

    path, train_path = Path(path), Path(train_path)
    require_codes(path)
    ids = pq.read_table(path, columns=["event_ts", *CODE_COLUMNS])
    u_codes = ids["user_idx"].to_numpy()
    i_codes = ids["item_idx"].to_numpy()
    n_users = int(u_codes.max(initial=-1)) + 1
    n_items = int(i_codes.max(initial=-1)) + 1
    is_train = _before(ids["event_ts"], cutoff)
    del ids
    if not is_train.any():
        raise ValueError(f"the split leaves no training events before the cutoff {cutoff}")
    new, warm, cold = _new_pairs(u_codes, i_codes, n_users, n_items, is_train)
    del u_codes, i_codes

    holdout_columns = ["user_id", "item_id", "event_ts", *CODE_COLUMNS]
    # string columns pass through as Parquet dictionaries (decoded and re-encoded once per
    # distinct value, not per row); without the Arrow schema stored, readers get plain strings
    pf = pq.ParquetFile(path, read_dictionary=string_columns(pq.read_schema(path), DICTIONARY_COLUMNS))
    train_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = train_path.with_name(f".{train_path.name}.tmp")
    later_parts = []
    start = 0
    with pq.ParquetWriter(tmp, pf.schema_arrow, store_schema=False, **work_parquet_options(pf.schema_arrow)) as writer:
        for g in range(pf.num_row_groups):
            group = pf.read_row_group(g)
            mask = is_train[start : start + group.num_rows]
            start += group.num_rows
            writer.write_table(group.filter(pa.array(mask)))
            later_parts.append(group.select(holdout_columns).filter(pa.array(~mask)))
            del group
    tmp.replace(train_path)
    later = pa.concat_tables(later_parts)
    del later_parts
    holdout = later.filter(pa.array(new))
    del later
    holdout = holdout.cast(pa.schema([  # the plain string columns the holdout file holds
        pa.field(f.name, f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in holdout.schema
    ]))
    write_parquet(holdout.to_pandas(), holdout_path)
    return _stats(cutoff, is_train, holdout.num_rows, warm, cold)


def _before(ts, cutoff: pd.Timestamp) -> np.ndarray:
    """``ts < cutoff`` for an Arrow timestamp column, as a numpy bool array (null: False).

    Compared in Arrow when both carry a time zone (one vectorised pass: converting 17M
    timestamps to a pandas column first took ~1 s); otherwise through pandas, which also
    refuses to compare a zoned column with a naive cutoff."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cutoff = pd.Timestamp(cutoff)
    if pa.types.is_timestamp(ts.type) and ts.type.tz is not None and cutoff.tzinfo is not None \
            and cutoff.nanosecond == 0:
        less = pc.less(ts, pa.scalar(cutoff.to_pydatetime(), ts.type))
        return less.fill_null(False).to_numpy(zero_copy_only=False).astype(bool, copy=False)
    return (ts.to_pandas() < cutoff).to_numpy()


def check_no_leak(train_df: pd.DataFrame, cutoff: pd.Timestamp | None) -> None:
    """Raise :class:`TrainingError` when a training event is at or after ``cutoff``."""
    if cutoff is None or train_df.empty or "event_ts" not in train_df.columns:
        return
    cutoff = pd.Timestamp(cutoff)
    late = train_df["event_ts"] >= cutoff
    if late.any():
        raise TrainingError(
            f"{int(late.sum())} training event(s) at or after the cutoff {cutoff} (newest "
            f"{train_df['event_ts'].max()}): the evaluation period would leak into training"
        )

#: Columns of the training split that :func:`train` reads (the others are not loaded).
TRAIN_COLUMNS: tuple[str, ...] = (*CODE_COLUMNS, "weight", "event_ts")


def read_training_events(
    path, *, cutoff: pd.Timestamp | None = None, need_times: bool = True
) -> pd.DataFrame:
    """The training split's columns that training uses, from a Parquet file: the int32
    ``user_idx`` / ``item_idx`` (pass the snapshot's id maps to the trainer), ``weight`` and
    ``event_ts``; no string column is loaded.

    A split without the codes raises :class:`~include.recsys.errors.IdRouteError`. With
    ``cutoff`` the leak check (:func:`check_no_leak`) runs here on the Arrow column, and
    ``need_times=False`` (no recency decay) then leaves ``event_ts`` out of the frame.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    require_codes(path, names)
    if "weight" not in names:
        raise TrainingError(f"training split {path} lacks column(s) ['weight']")
    columns = [c for c in TRAIN_COLUMNS if c in names]
    if cutoff is not None and "event_ts" in columns:
        newest = _newest_event(path)
        if newest is None:  # no usable statistics: read the column
            ts = pq.read_table(path, columns=["event_ts"])["event_ts"]
            newest = pc.max(ts).as_py() if len(ts) else None
        newest = pd.Timestamp(newest) if newest is not None else None
        if newest is not None and newest.tzinfo is None:
            newest = newest.tz_localize("UTC")  # Parquet timestamps without a zone are UTC here
        if newest is not None and newest >= pd.Timestamp(cutoff):
            check_no_leak(pq.read_table(path, columns=["event_ts"]).to_pandas(), cutoff)  # the full message
        if not need_times:
            columns.remove("event_ts")
    table = pq.read_table(path, columns=columns)
    # one frame over the Arrow buffers (no consolidation copy of 13M-row numeric columns)
    return pd.DataFrame({c: table[c].to_pandas() for c in columns}, copy=False)


def _newest_event(path) -> object | None:
    """Max ``event_ts`` of a Parquet file from its row-group statistics (None if any is missing)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    if meta.num_row_groups == 0:
        return None
    col = meta.schema.to_arrow_schema().get_field_index("event_ts")
    newest = None
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(col).statistics
        if stats is None or not stats.has_min_max:
            return None
        newest = stats.max if newest is None else max(newest, stats.max)
    return newest
