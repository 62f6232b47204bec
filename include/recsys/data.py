"""Read the interaction source for a window, keep active users, dedupe, build id maps and CSR.

Source formats: date-partitioned Parquet (``date=YYYY-MM-DD/*.parquet``, the default), a CSV
file with the contract's columns, or a MovieLens ``ratings.csv`` (userId, movieId, rating,
timestamp in seconds). All are normalised to the snapshot schema:

    user_id, item_id (string or int64, as the source has them), event_ts (timestamp[us, UTC]),
    event_type (string), weight (float32 > 0)

Each file's column types are checked as it is read: a wrong type (a string in ``weight``, an
unparsable ``event_ts``, a fractional id, ids changing kind between files) raises
:class:`InputTypeError` naming the file, column, first bad row and value (no retry).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.recsys.config import PipelineConfig

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("user_id", "item_id", "event_ts")
#: String columns the Parquet reader returns as pandas categoricals (see ``_read_parquet_window``).
DICTIONARY_COLUMNS = ("user_id", "item_id", "event_type")
SNAPSHOT_COLUMNS = ["user_id", "item_id", "event_ts", "event_type", "weight"]


class SourceError(ValueError):
    """The interaction source is missing, unreadable or does not match the contract."""


class EmptyWindowError(SourceError):
    """The source has no events in the requested window."""


class InputTypeError(SourceError):
    """A source column holds a value of the wrong type (a string in ``weight``, an unparsable
    ``event_ts``, a fractional id, ...). A data error: retrying cannot help, the DAG fails the
    task at once. Names the file, the column, the first bad row (0-based data row of that
    file; CSV: and its line) and its value."""

    def __init__(self, file: Path | str, column: str, row: int, value: Any, expected: str,
                 n_bad: int | None = None, *, csv: bool = False) -> None:
        self.file, self.column, self.row, self.value, self.expected = str(file), column, row, value, expected
        where = f"row {row}" + (f" (line {row + 2})" if csv else "")
        count = f"; {n_bad} bad value(s) in this file" if n_bad and n_bad > 1 else ""
        super().__init__(
            f"{file}: column {column!r} must hold {expected}, but {where} holds {value!r}{count}. "
            "Fix the source (or its producer) and rerun; retrying will not help."
        )


#: What each typed contract column must hold (the ids: string or integer, checked apart).
EXPECTED = {
    "weight": "numbers", "rating": "numbers",
    "event_ts": "timestamps (a timestamp column or ISO-8601 strings)",
    "event_type": "strings",
}
NUMERIC_COLUMNS = ("weight", "rating")


@dataclass(frozen=True)
class Window:
    """A training window [start, end) in UTC."""

    start: pd.Timestamp
    end: pd.Timestamp

    @classmethod
    def ending_at(cls, end: datetime | pd.Timestamp, days: int) -> Window:
        end_ts = pd.Timestamp(end)
        end_ts = end_ts.tz_localize("UTC") if end_ts.tzinfo is None else end_ts.tz_convert("UTC")
        return cls(start=end_ts - pd.Timedelta(days=days), end=end_ts)

    def __str__(self) -> str:
        return f"[{self.start.isoformat()}, {self.end.isoformat()})"


def _read_parquet_window(root: Path, window: Window, categorical: bool = False) -> pd.DataFrame:
    """Read only the date partitions that overlap the window (``categorical``: string ids and
    types as pandas categoricals, read from Parquet's dictionaries)."""
    first = window.start.strftime("%Y-%m-%d")
    last = (window.end - pd.Timedelta(microseconds=1)).strftime("%Y-%m-%d")
    files = [
        f
        for d in sorted(root.glob("date=*"))
        if first <= d.name[len("date=") :] <= last
        for f in sorted(d.glob("*.parquet"))
    ]
    if not files:
        if not any(root.glob("date=*")):
            raise SourceError(f"source {root} holds no date=YYYY-MM-DD partitions")
        raise EmptyWindowError(f"no partitions of {root} overlap the window {window}")
    import pyarrow.parquet as pq

    import pyarrow as pa

    tables = []
    id_kinds: dict[str, tuple[str, Path]] = {}  # id column -> (string | integer, first file)
    for f in files:
        try:
            # string ids and types come as Parquet dictionaries (pandas categoricals): each
            # distinct string is decoded once per row group instead of once per row
            schema = pq.read_schema(f)
            as_dict = string_columns(schema, DICTIONARY_COLUMNS) if categorical else []
            table = pq.read_table(f, read_dictionary=as_dict)
        except (pa.ArrowException, OSError) as exc:  # truncated / corrupted / not Parquet
            raise SourceError(f"cannot read Parquet file {f}: {exc}") from exc
        tables.append(_check_parquet_types(table, f, id_kinds))

    try:
        # permissive: float32 and float64 weights (or timestamp units) of two files unify
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise SourceError(f"partitions of {root} disagree on their schema: {exc}") from exc
    return table.to_pandas()


def _arrow_kind(t: Any) -> str:
    """string / integer / float / timestamp / null / bool / other, for an Arrow type."""
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    for kind, test in (("string", pa.types.is_string), ("string", pa.types.is_large_string),
                       ("integer", pa.types.is_integer), ("float", pa.types.is_floating),
                       ("float", pa.types.is_decimal), ("timestamp", pa.types.is_timestamp),
                       ("timestamp", pa.types.is_date), ("null", pa.types.is_null),
                       ("bool", pa.types.is_boolean)):
        if test(t):
            return kind
    return "other"


def _first_bad(values: pd.Series, ok: np.ndarray) -> tuple[int, Any, int]:
    """(row, value, count) of the non-null values where ``ok`` is False."""
    bad = np.flatnonzero(values.notna().to_numpy() & ~ok)
    if not len(bad):
        return -1, None, 0
    value = values.iloc[int(bad[0])]
    return int(bad[0]), value.item() if isinstance(value, np.generic) else value, len(bad)


def _as_numbers(values: pd.Series, file: Path | str, column: str, csv: bool = False) -> pd.Series:
    """``values`` as float64, or InputTypeError at the first value that is not a number."""
    if values.dtype == bool or values.dtype == "boolean":
        row, value, n = _first_bad(values, np.zeros(len(values), bool))
        raise InputTypeError(file, column, row, value, EXPECTED[column], n, csv=csv)
    parsed = pd.to_numeric(values.astype(object), errors="coerce")
    row, value, n = _first_bad(values, parsed.notna().to_numpy())
    if n:
        raise InputTypeError(file, column, row, value, EXPECTED[column], n, csv=csv)
    return parsed.astype("float64")


def _check_timestamps(values: pd.Series, file: Path | str, csv: bool = False) -> pd.Series:
    """``event_ts`` parsed (UTC), or InputTypeError at its first value that is not a timestamp.
    Numbers are refused: epoch units are ambiguous (MovieLens seconds have their own reader)."""
    if pd.api.types.is_numeric_dtype(values.dtype) or values.dtype == bool:
        row, value, n = _first_bad(values, np.zeros(len(values), bool))
        if n:
            raise InputTypeError(file, "event_ts", row, value, EXPECTED["event_ts"], n, csv=csv)
    try:  # one vectorised parse (one format); the per-value scan only when it fails
        return pd.to_datetime(values, utc=True)
    except (ValueError, TypeError):
        parsed = pd.to_datetime(values.astype(object), utc=True, errors="coerce", format="mixed")
    row, value, n = _first_bad(values, parsed.notna().to_numpy())
    if n:
        raise InputTypeError(file, "event_ts", row, value, EXPECTED["event_ts"], n, csv=csv)
    return parsed  # mixed formats, each value parsable


def _check_ids(values: pd.Series, file: Path | str, column: str, csv: bool = False) -> None:
    """Ids are strings or integers: a float column fails at its first fractional value (or
    its first value: a float id column is the wrong type even when every value is whole)."""
    if pd.api.types.is_float_dtype(values.dtype):
        frac = values.to_numpy(dtype="float64", na_value=np.nan) % 1 != 0
        row, value, n = _first_bad(values, ~frac)
        if not n:
            row, value, n = _first_bad(values, np.zeros(len(values), bool))
        if n:
            raise InputTypeError(file, column, row, value, "string or integer ids", n, csv=csv)
    elif values.dtype == bool or pd.api.types.is_datetime64_any_dtype(values.dtype):
        row, value, n = _first_bad(values, np.zeros(len(values), bool))
        if n:
            raise InputTypeError(file, column, row, value, "string or integer ids", n, csv=csv)


def check_frame_types(df: pd.DataFrame, file: Path | str, *, csv: bool = False) -> pd.DataFrame:
    """The typed contract columns of one source file (CSV, or a Parquet file read to pandas):
    ids string or integer, ``weight`` / ``rating`` numeric (numeric strings become numbers),
    ``event_ts`` parsable; else :class:`InputTypeError` naming the first bad row and value."""
    for column in ("user_id", "item_id"):
        if column in df.columns:
            _check_ids(df[column], file, column, csv)
    for column in NUMERIC_COLUMNS:
        if column in df.columns and (not pd.api.types.is_numeric_dtype(df[column].dtype) or df[column].dtype == bool):
            df[column] = _as_numbers(df[column], file, column, csv)
    if "event_ts" in df.columns and not pd.api.types.is_datetime64_any_dtype(df["event_ts"].dtype):
        df["event_ts"] = _check_timestamps(df["event_ts"], file, csv)
    if "event_type" in df.columns and df["event_type"].notna().any():
        kind = pd.api.types.infer_dtype(df["event_type"], skipna=True)
        if kind not in ("string", "empty", "categorical"):
            ok = df["event_type"].map(lambda v: isinstance(v, str)).to_numpy(bool)
            row, value, n = _first_bad(df["event_type"], ok)
            raise InputTypeError(file, "event_type", row, value, EXPECTED["event_type"], n, csv=csv)
    return df


def _check_parquet_types(table: Any, file: Path, id_kinds: dict[str, tuple[str, Path]]) -> Any:
    """One Parquet file's column types (Arrow schema first: only a wrongly typed column is
    read to pandas and scanned for its first bad value). Ids must keep one kind across files."""
    import pyarrow as pa

    if table.num_rows == 0:
        return table
    kinds = {name: _arrow_kind(table.schema.field(name).type) for name in table.column_names}
    for column in ("user_id", "item_id"):
        kind = kinds.get(column)
        if kind in ("string", "integer"):
            first = id_kinds.setdefault(column, (kind, file))
            if first[0] != kind:
                raise InputTypeError(
                    file, column, 0, table.column(column)[0].as_py(),
                    f"{first[0]} ids like the earlier file {first[1]} (this file has {kind} ids)",
                )
        elif kind not in (None, "null"):
            _check_ids(table.column(column).to_pandas(), file, column)
            row, value = 0, table.column(column)[0].as_py()
            raise InputTypeError(file, column, row, value, "string or integer ids")
    for column in NUMERIC_COLUMNS:
        if kinds.get(column) not in (None, "null", "integer", "float"):
            numbers = _as_numbers(table.column(column).to_pandas(), file, column)
            table = table.set_column(table.column_names.index(column), column, pa.array(numbers, pa.float64()))
    if kinds.get("event_ts") not in (None, "null", "timestamp"):
        _check_timestamps(table.column("event_ts").to_pandas(), file)
    if kinds.get("event_type") not in (None, "null", "string"):
        values = table.column("event_type").to_pandas()
        row, value, n = _first_bad(values, np.zeros(len(values), bool))
        if n:
            raise InputTypeError(file, "event_type", row, value, EXPECTED["event_type"], n)
    return table


def string_columns(schema, names) -> list[str]:
    """Those of ``names`` that are (large) string columns of the Arrow ``schema``."""
    import pyarrow as pa

    def is_str(t) -> bool:
        return pa.types.is_string(t) or pa.types.is_large_string(t)

    return [c for c in names if c in schema.names and is_str(schema.field(c).type)]


def _movielens_ints(df: pd.DataFrame, path: Path, column: str) -> pd.Series:
    """A MovieLens integer column (ids, epoch seconds), or InputTypeError at its first
    value that is not a whole number."""
    values = df[column]
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.astype("int64")
    parsed = pd.to_numeric(values.astype(object), errors="coerce")
    whole = parsed.notna().to_numpy() & (parsed.fillna(0).to_numpy() % 1 == 0)
    row, value, n = _first_bad(values, whole)
    if n:
        raise InputTypeError(path, column, row, value, "integers (MovieLens ratings.csv)", n, csv=True)
    return parsed.astype("int64")


def _read_movielens(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path)  # typed below, so a bad value is named instead of a bare ValueError
    missing = {"userId", "movieId", "rating", "timestamp"} - set(df.columns)
    if missing:
        raise SourceError(f"{path} is not a MovieLens ratings file: missing column(s) {sorted(missing)}")
    if not pd.api.types.is_numeric_dtype(df["rating"].dtype):
        df["rating"] = _as_numbers(df["rating"].rename("rating"), path, "rating", csv=True)
    return pd.DataFrame(
        {
            "user_id": _movielens_ints(df, path, "userId"),
            "item_id": _movielens_ints(df, path, "movieId"),
            "event_ts": pd.to_datetime(_movielens_ints(df, path, "timestamp"), unit="s", utc=True),
            "event_type": "rating",
            "weight": df["rating"].astype("float32"),
        }
    )


def read_source(cfg: PipelineConfig, window: Window, *, categorical: bool = False) -> pd.DataFrame:
    """Read the configured source, restricted to the window, in the snapshot's raw schema.

    ``categorical``: a Parquet source's string ``user_id`` / ``item_id`` / ``event_type`` come
    as pandas categoricals (decoded once per distinct value; what the snapshot builder uses).
    """
    path = cfg.source
    if not path.exists():
        raise SourceError(f"interaction source {path} does not exist")
    if cfg.source_format == "parquet":
        df = _read_parquet_window(path, window, categorical)
    elif cfg.source_format == "movielens":
        df = _read_movielens(path)
    else:
        try:
            df = pd.read_csv(path)
        except UnicodeDecodeError as exc:
            raise SourceError(f"CSV {path} is not valid UTF-8: {exc}") from exc
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise SourceError(f"cannot parse CSV {path}: {exc}") from exc
        df = check_frame_types(df, path, csv=True)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise SourceError(
            f"source {path} lacks required column(s) {missing}; it has {list(df.columns)}"
        )
    try:
        ts = pd.to_datetime(df["event_ts"], utc=True)
    except (ValueError, TypeError):
        try:  # every value parsed alone (the per-file checks found none unparsable): mixed formats
            ts = pd.to_datetime(df["event_ts"], utc=True, format="mixed")
        except (ValueError, TypeError) as exc:
            raise SourceError(f"column event_ts of {path} is not a timestamp: {exc}") from exc
    df["event_ts"] = ts.astype("datetime64[us, UTC]")
    in_window = (df["event_ts"] >= window.start) & (df["event_ts"] < window.end)
    # what the window filter drops, for the input validation (clock skew, misfiled rows)
    source_stats = {
        "future_rows": int((df["event_ts"] >= window.end).sum()),
        "outside_window_rows": int((df["event_ts"] < window.start).sum()),
        "extra_columns": sorted(str(c) for c in df.columns if c not in (*SNAPSHOT_COLUMNS, "rating")),
    }
    df = df.loc[in_window].reset_index(drop=True)
    source_stats["null_id_rows"] = int((df["user_id"].isna() | df["item_id"].isna()).sum())
    df.attrs["source_stats"] = source_stats
    if df.empty:
        raise EmptyWindowError(f"source {path} has no events in the window {window}")
    return df


def read_segments(cfg: PipelineConfig) -> pd.Series | None:
    """User attribute ``segment`` indexed by user_id (None when no segment table is configured)."""
    path = cfg.segments_source
    if path is None:
        return None
    if not path.exists():
        raise SourceError(f"user segment table {path} does not exist")
    df = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    missing = {"user_id", "segment"} - set(df.columns)
    if missing:
        raise SourceError(f"user segment table {path} lacks column(s) {sorted(missing)}")
    df = df.dropna(subset=["user_id", "segment"]).drop_duplicates("user_id", keep="last")
    return pd.Series(df["segment"].astype(str).to_numpy(), index=pd.Index(df["user_id"]), name="segment")


def add_weights(df: pd.DataFrame, event_weights: dict[str, float]) -> pd.DataFrame:
    """Confidence weight per row: an explicit ``weight`` or ``rating`` column, else per event type."""
    if "weight" in df.columns:
        w = df["weight"].astype("float32")
    elif "rating" in df.columns:
        w = df["rating"].astype("float32")
    elif "event_type" in df.columns:
        # map the few distinct types, not every row (Series.map on strings is slow at 20M rows)
        codes, types = pd.factorize(df["event_type"])
        per_type = np.array([event_weights.get(t, 1.0) for t in types] + [1.0], dtype=np.float32)
        w = pd.Series(per_type[codes], index=df.index)  # code -1 (missing type) -> 1.0
    else:
        w = pd.Series(np.ones(len(df), dtype=np.float32), index=df.index)
    out = df.assign(weight=w)
    if "event_type" not in out.columns:
        out["event_type"] = "event"
    return out[SNAPSHOT_COLUMNS]


def keep_active_users(df: pd.DataFrame, window: Window, days: int, min_events: int) -> pd.DataFrame:
    """Keep every event of users with >= ``min_events`` events in the last ``days`` of the window."""
    return df.loc[_active_mask(df, window, days, min_events)].reset_index(drop=True)


def _active_mask(
    df: pd.DataFrame, window: Window, days: int, min_events: int, user_codes: np.ndarray | None = None
) -> np.ndarray:
    """Rows of users with >= ``min_events`` events in the last ``days`` (on integer codes)."""
    codes = pd.factorize(df["user_id"])[0] if user_codes is None else user_codes
    recent = (df["event_ts"] >= window.end - pd.Timedelta(days=days)).to_numpy()
    ok = codes >= 0
    counts = np.bincount(codes[recent & ok], minlength=int(codes.max()) + 1 if len(codes) else 0)
    return ok & (counts[np.where(ok, codes, 0)] >= min_events)


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


#: Integer-code columns the snapshot and the split files carry next to the string ids.
CODE_COLUMNS = ("user_idx", "item_idx")


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


def build_snapshot(cfg: PipelineConfig, window: Window) -> tuple[pd.DataFrame, SnapshotStats]:
    """Source -> window -> weights -> exact-duplicate drop -> active users. Sorted by time.

    The snapshot schema only (see :func:`build_indexed_snapshot` for the id maps and codes).
    """
    snap = build_indexed_snapshot(cfg, window)
    df = snap.frame.drop(columns=list(CODE_COLUMNS))
    for c in DICTIONARY_COLUMNS:  # the plain string columns the written snapshot has
        if isinstance(df[c].dtype, pd.CategoricalDtype):
            df[c] = df[c].astype(df[c].cat.categories.dtype)
    return df, snap.stats


def build_indexed_snapshot(cfg: PipelineConfig, window: Window) -> IndexedSnapshot:
    """:func:`build_snapshot` plus the sorted id maps and every row's integer codes.

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
    release_memory()
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
    user_map = _present_map(users, u)
    item_map = _present_map(items, i)
    df = df.take(order).reset_index(drop=True)
    df["user_idx"] = user_map[1][u]
    df["item_idx"] = item_map[1][i]
    stats = SnapshotStats(
        rows_read=rows_read,
        duplicates_dropped=dups,
        inactive_rows_dropped=before - len(df),
        rows=len(df),
        users=len(user_map[0]),
        items=len(item_map[0]),
        seconds=time.perf_counter() - t0,
        **source_stats,
    )
    log.info(
        "snapshot %s: %d rows read, %d duplicates dropped, %d inactive-user rows dropped -> "
        "%d rows, %d users, %d items in %.2fs (%.0f rows/s)",
        window, rows_read, dups, stats.inactive_rows_dropped, stats.rows, stats.users,
        stats.items, stats.seconds, rows_read / max(stats.seconds, 1e-9),
    )
    return IndexedSnapshot(df, stats, IdMap(user_map[0]), IdMap(item_map[0]))


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


# --- id maps and matrices ------------------------------------------------------------------


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


def release_memory() -> None:
    """Give freed Arrow buffers back to the OS.

    pyarrow's allocator (mimalloc) keeps freed pages for reuse: after a stage has dropped a
    20M-row frame the process still holds hundreds of MB, which the next stage run in the same
    process (``dag.test``, a reused worker) stacks its own peak on. Great Expectations' global
    context (which keeps the last validated frame alive) is dropped first. Called at stage ends.
    """
    import gc
    import sys

    import pyarrow as pa

    gx_factory = sys.modules.get("great_expectations.data_context.data_context.context_factory")
    if gx_factory is not None:
        # GX keeps the last context as its global "project": an ephemeral context keeps its
        # pandas datasource, whose batch holds the whole validated frame (GB on the snapshot)
        gx_factory.project_manager.set_project(None)
    gc.collect()
    pa.default_memory_pool().release_unused()
    try:  # glibc keeps freed numpy/pandas heap in its arenas until trimmed
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def write_snapshot_parquet(df: pd.DataFrame, path: Path | str) -> Path:
    """Write a snapshot frame atomically; categorical id columns are stored as the plain
    strings they stand for.

    The categoricals go to Parquet as Arrow dictionaries (Parquet's own dictionary pages, no
    string per row materialised) and the Arrow schema is not stored, so every reader gets the
    plain string columns back, exactly as if the frame had held strings.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp, store_schema=False)
    tmp.replace(path)
    return path


def write_parquet(df: pd.DataFrame, path: Path | str) -> Path:
    """Write a Parquet file atomically (temp name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path
