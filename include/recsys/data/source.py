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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.recsys.config.settings import PipelineConfig
from include.recsys.errors import EmptyWindowError, InputTypeError, SourceError

log = logging.getLogger(__name__)


REQUIRED_COLUMNS = ("user_id", "item_id", "event_ts")

#: String columns the Parquet reader returns as pandas categoricals (see ``_read_parquet_window``).
DICTIONARY_COLUMNS = ("user_id", "item_id", "event_type")

SNAPSHOT_COLUMNS = ["user_id", "item_id", "event_ts", "event_type", "weight"]

#: The snapshot's ``event_ts`` dtype (microseconds, UTC), whatever the source stores.
SNAPSHOT_TS_DTYPE = "datetime64[us, UTC]"

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
    import pyarrow as pa
    import pyarrow.parquet as pq

    def read(f: Path) -> Any:
        try:
            # string ids and types come as Parquet dictionaries (pandas categoricals): each
            # distinct string is decoded once per row group instead of once per row
            schema = pq.read_schema(f)
            as_dict = string_columns(schema, DICTIONARY_COLUMNS) if categorical else []
            return pq.read_table(f, read_dictionary=as_dict)
        except (pa.ArrowException, OSError) as exc:  # truncated / corrupted / not Parquet
            raise SourceError(f"cannot read Parquet file {f}: {exc}") from exc

    tables = []
    id_kinds: dict[str, tuple[str, Path]] = {}  # id column -> (string | integer, first file)
    # a few files decode at once (pyarrow releases the GIL; one daily file is too small to keep
    # every core busy on its own); results and errors come in file order, checked in order
    with ThreadPoolExecutor(max_workers=min(4, len(files))) as pool:
        for f, table in zip(files, pool.map(read, files)):
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
    if df["event_ts"].dtype != SNAPSHOT_TS_DTYPE:  # Parquet timestamps already are (no copy)
        try:
            ts = pd.to_datetime(df["event_ts"], utc=True)
        except (ValueError, TypeError):
            try:  # every value parsed alone (the per-file checks found none unparsable): mixed formats
                ts = pd.to_datetime(df["event_ts"], utc=True, format="mixed")
            except (ValueError, TypeError) as exc:
                raise SourceError(f"column event_ts of {path} is not a timestamp: {exc}") from exc
        df["event_ts"] = ts.astype(SNAPSHOT_TS_DTYPE)
    future = (df["event_ts"] >= window.end).to_numpy()
    early = (df["event_ts"] < window.start).to_numpy()
    in_window = ~(future | early) & df["event_ts"].notna().to_numpy()
    # what the window filter drops, for the input validation (clock skew, misfiled rows)
    source_stats = {
        "future_rows": int(future.sum()),
        "outside_window_rows": int(early.sum()),
        "extra_columns": sorted(str(c) for c in df.columns if c not in (*SNAPSHOT_COLUMNS, "rating")),
    }
    del future, early
    if not in_window.all():  # the partitions read overlap the window: usually every row is in it
        df = df.loc[in_window].reset_index(drop=True)
    elif not isinstance(df.index, pd.RangeIndex) or df.index.start != 0 or df.index.step != 1:
        df = df.reset_index(drop=True)
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
    """Confidence weight per row: an explicit ``weight`` or ``rating`` column, else per event type.

    The frame returned shares the input's column buffers (no copy of 17M-row columns) and a
    categorical ``event_type`` is weighted through its codes (no hashing of the rows)."""
    if "weight" in df.columns:
        w = df["weight"].astype("float32")
    elif "rating" in df.columns:
        w = df["rating"].astype("float32")
    elif "event_type" in df.columns:
        # map the few distinct types, not every row (Series.map on strings is slow at 20M rows)
        types_col = df["event_type"]
        if isinstance(types_col.dtype, pd.CategoricalDtype):
            codes, types = types_col.cat.codes.to_numpy(), types_col.cat.categories
        else:
            codes, types = pd.factorize(types_col)
        per_type = np.array([event_weights.get(t, 1.0) for t in types] + [1.0], dtype=np.float32)
        w = pd.Series(per_type[codes], index=df.index)  # code -1 (missing type) -> 1.0
    else:
        w = pd.Series(np.ones(len(df), dtype=np.float32), index=df.index)
    columns = {c: df[c] for c in SNAPSHOT_COLUMNS if c != "weight" and c in df.columns}
    if "event_type" not in columns:
        columns["event_type"] = pd.Series("event", index=df.index)
    columns["weight"] = w
    return pd.DataFrame(columns, copy=False)[SNAPSHOT_COLUMNS]
