"""The snapshot: the window's events, deduplicated, active users only, sorted by time, with
every row's int32 ``user_idx`` / ``item_idx`` into the sorted id maps built on the way
(:mod:`include.recsys.core.ids`). Everything runs on integer codes; ids stay categoricals."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from include.recsys.config.settings import PipelineConfig
from include.recsys.core.ids import CODE_COLUMNS, IdMap, _sorted_factorize, compact_codes
from include.recsys.core.memory import release_memory
from include.recsys.data.source import (
    DICTIONARY_COLUMNS,
    Window,
    add_weights,
    read_source,
)
from include.recsys.errors import EmptyWindowError

log = logging.getLogger(__name__)


@dataclass
class SnapshotStats:
    rows_read: int
    duplicates_dropped: int
    inactive_rows_dropped: int
    rows: int
    users: int
    items: int
    seconds: float
    # seen by read_source before the window filter (for the input validation)
    future_rows: int = 0
    outside_window_rows: int = 0
    null_id_rows: int = 0
    extra_columns: list[str] = field(default_factory=list)


@dataclass
class IndexedSnapshot:
    """A snapshot frame with its sorted id maps: ``frame`` holds the snapshot columns plus
    ``user_idx`` / ``item_idx`` (int32, each row's position in ``users`` / ``items``; -1 for a
    missing item id). String ids and types read from Parquet are pandas categoricals here;
    :func:`write_snapshot_parquet` stores them as plain strings."""

    frame: pd.DataFrame
    stats: SnapshotStats
    users: IdMap
    items: IdMap

    def plain_frame(self) -> pd.DataFrame:
        """The frame as the written snapshot reads back: no codes, plain string id columns
        (for the benchmarks and tests that work on a frame of string ids)."""
        df = self.frame.drop(columns=list(CODE_COLUMNS))
        for c in DICTIONARY_COLUMNS:
            if isinstance(df[c].dtype, pd.CategoricalDtype):
                df[c] = df[c].astype(df[c].cat.categories.dtype)
        return df


def _time_user_order(ts: np.ndarray, user_codes: np.ndarray, n_users: int) -> np.ndarray:
    """Stable order of rows by (event_ts, user code), NaT last.

    One stable argsort of a combined int64 key when it fits (landed data is nearly time-ordered,
    so the sort is close to linear); ``np.lexsort`` otherwise. Ties keep source order.
    """
    nat = ts == np.iinfo(np.int64).min
    valid = ts[~nat]
    lo = int(valid.min()) if len(valid) else 0
    hi = int(valid.max()) + 1 if len(valid) else 1  # NaT sorts as hi (after every timestamp)
    span, width = hi - lo + 1, n_users + 1
    if span < (np.iinfo(np.int64).max // width):
        key = np.where(nat, hi, ts) - lo
        key *= width
        key += user_codes + 1
        return np.argsort(key, kind="stable")
    return np.lexsort((user_codes, np.where(nat, np.iinfo(np.int64).max, ts)))


def _duplicated_in_order(
    order: np.ndarray, ts: np.ndarray, user_codes: np.ndarray, *rest: np.ndarray
) -> np.ndarray:
    """Exact duplicate rows (first occurrence in source order kept), given ``order`` by
    (event_ts, user) with ties in source order: duplicates share (event_ts, user), so only rows
    in runs of equal (event_ts, user) are compared on the remaining columns."""
    t, u = ts[order], user_codes[order]
    same = (t[1:] == t[:-1]) & (u[1:] == u[:-1])
    in_run = np.zeros(len(order), bool)
    in_run[1:] |= same
    in_run[:-1] |= same
    dup = np.zeros(len(order), bool)
    cand = order[in_run]  # in sorted order, so a run's first row comes first
    if len(cand):
        cols = {"t": ts[cand], "u": user_codes[cand]}
        cols.update({f"c{k}": np.asarray(c)[cand] for k, c in enumerate(rest)})
        sub = pd.DataFrame(cols)
        dup[cand] = sub.duplicated().to_numpy()
    return dup


def build_indexed_snapshot(cfg: PipelineConfig, window: Window) -> IndexedSnapshot:
    """Source -> window -> weights -> exact-duplicate drop -> active users, sorted by time,
    with the sorted id maps and every row's integer codes.

    Ids read as Parquet dictionaries are ranked from their distinct values, other ids hashed
    once (``pd.factorize``); dedupe, the active-user filter and the sort run on integer codes,
    and one take (of categorical codes, for Parquet) puts the rows into time order.
    """
    t0 = time.perf_counter()
    raw = read_source(cfg, window, categorical=True)
    rows_read = len(raw)
    source_stats = dict(raw.attrs.get("source_stats") or {})
    df = add_weights(raw, cfg.event_weights)
    del raw
    release_memory()  # the raw frame's buffers go back before the second peak (codes, sort, take)
    # codes in sorted id order: (event_ts, user code) sorts as (event_ts, user_id), and the
    # distinct ids are the sorted id maps (no second pass over the strings)
    user_codes, users = _sorted_factorize(df["user_id"])
    item_codes, items = _sorted_factorize(df["item_id"])
    type_codes = pd.factorize(df["event_type"])[0]
    ts = df["event_ts"].array.asi8  # microseconds (read_source makes it datetime64[us, UTC])
    order = _time_user_order(ts, user_codes, len(users))
    # exact duplicates only: a view and a click of one item in the same second are two events
    keep = ~_duplicated_in_order(
        order, ts, user_codes, item_codes, type_codes, df["weight"].to_numpy(np.float32, na_value=np.nan)
    )
    dups = rows_read - int(keep.sum())
    before = rows_read - dups
    cut = window.end - pd.Timedelta(days=cfg.active_days)
    recent = ts >= cut.tz_convert("UTC").tz_localize(None).to_datetime64().astype("datetime64[us]").view(np.int64)
    ok = keep & (user_codes >= 0)  # a null user is never active
    counts = np.bincount(user_codes[ok & recent], minlength=len(users))
    keep = ok & (counts[np.where(ok, user_codes, 0)] >= cfg.active_min_events)
    if not keep.any():
        raise EmptyWindowError(
            f"no user has >= {cfg.active_min_events} events in the last {cfg.active_days} days "
            f"of the window {window} ({before} events read)"
        )
    order = order[keep[order]]  # the kept rows, in (event_ts, user) order
    del keep, ok, recent, counts, type_codes
    # id maps of the kept rows only (still sorted), and the codes renumbered into them
    u = user_codes[order]
    i = item_codes[order]
    del user_codes, item_codes
    used_users, u = compact_codes(u, len(users), np.int32)
    used_items, i = compact_codes(i, len(items), np.int32)
    users, items = IdMap(pd.Index(users[used_users])), IdMap(pd.Index(items[used_items]))
    df = df.take(order).reset_index(drop=True)
    df["user_idx"], df["item_idx"] = u, i
    del u, i
    stats = SnapshotStats(
        rows_read=rows_read,
        duplicates_dropped=dups,
        inactive_rows_dropped=before - len(df),
        rows=len(df),
        users=len(users),
        items=len(items),
        seconds=time.perf_counter() - t0,
        **source_stats,
    )
    log.info(
        "snapshot %s: %d rows read, %d duplicates dropped, %d inactive-user rows dropped -> "
        "%d rows, %d users, %d items in %.2fs (%.0f rows/s)",
        window, rows_read, dups, stats.inactive_rows_dropped, stats.rows, stats.users,
        stats.items, stats.seconds, rows_read / max(stats.seconds, 1e-9),
    )
    return IndexedSnapshot(df, stats, users, items)


def write_snapshot_parquet(df: pd.DataFrame, path: Path | str) -> Path:
    """Write a snapshot frame atomically; categorical id columns are stored as the plain
    strings they stand for.

    The categoricals go to Parquet as Arrow dictionaries (Parquet's own dictionary pages, no
    string per row materialised) and the Arrow schema is not stored, so every reader gets the
    plain string columns back, exactly as if the frame had held strings. Statistics and
    dictionary pages only where a reader uses them (:func:`~include.recsys.core.io.work_parquet_options`).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from include.recsys.core.io import work_parquet_options

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    table = pa.Table.from_pandas(df, preserve_index=False)
    pq.write_table(table, tmp, store_schema=False, **work_parquet_options(table.schema))
    tmp.replace(path)
    return path
