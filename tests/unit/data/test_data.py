"""Unit tests for ``include.recsys.data.source``: windows, source readers, snapshot, CSR."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include.recsys.config.settings import load_config
from include.recsys.core.ids import IdMap, interaction_matrix
from include.recsys.data.snapshot import build_indexed_snapshot
from include.recsys.data.source import Window, read_source
from include.recsys.data.synth import PRESETS, generate, land_partitioned
from include.recsys.errors import EmptyWindowError, SourceError

PROJECT_ROOT = Path(__file__).resolve().parents[3]
TINY = replace(PRESETS["tiny"], end_date="2024-03-31")  # events 2024-02-21 .. 2024-03-31


def _ts(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC")


@pytest.fixture(scope="module")
def tiny_events() -> pd.DataFrame:
    return generate(TINY)


@pytest.fixture
def lake(tmp_path, tiny_events) -> Path:
    root = tmp_path / "lake"
    land_partitioned(tiny_events, root)
    return root


# --- Window ---------------------------------------------------------------------------------


def test_window_ending_at_naive_is_utc() -> None:
    w = Window.ending_at(datetime(2024, 3, 10), 7)
    assert w.end == _ts("2024-03-10") and w.start == _ts("2024-03-03")
    assert str(w.end.tz) == "UTC"
    assert str(w) == "[2024-03-03T00:00:00+00:00, 2024-03-10T00:00:00+00:00)"


def test_window_ending_at_converts_other_zones() -> None:
    end = datetime(2024, 3, 10, 2, 0, tzinfo=timezone(timedelta(hours=2)))
    w = Window.ending_at(end, 1)
    assert w.end == _ts("2024-03-10 00:00") and str(w.end.tz) == "UTC"
    assert w.start == _ts("2024-03-09 00:00")
    w2 = Window.ending_at(pd.Timestamp("2024-03-10 12:30", tz="US/Eastern"), 2)
    assert w2.end == _ts("2024-03-10 16:30") and w2.end - w2.start == pd.Timedelta(days=2)


# --- read_source: parquet -------------------------------------------------------------------


def test_read_source_parquet_reads_only_the_window(tmp_path, lake, tiny_events) -> None:
    window = Window(_ts("2024-03-15 12:00"), _ts("2024-03-25 06:00"))
    # partitions outside the window are unreadable garbage: reading them would raise
    for day in ("2024-03-10", "2024-03-14", "2024-03-26", "2024-03-31"):
        (lake / f"date={day}" / "part-0.parquet").write_bytes(b"not parquet at all")
    cfg = load_config({"data_dir": tmp_path, "source_path": str(lake)})
    df = read_source(cfg, window)
    expected = tiny_events[
        (tiny_events["event_ts"] >= window.start) & (tiny_events["event_ts"] < window.end)
    ]
    assert len(df) == len(expected) > 0
    assert df["event_ts"].min() >= window.start and df["event_ts"].max() < window.end
    assert str(df["event_ts"].dtype) == "datetime64[us, UTC]"
    key = ["event_ts", "user_id", "item_id", "event_type"]
    got = df[key].sort_values(key, ignore_index=True)
    want = expected[key].sort_values(key, ignore_index=True)
    assert got.astype(str).equals(want.astype(str))


def test_read_source_default_source_is_lake_under_data_dir(tmp_path, tiny_events) -> None:
    land_partitioned(tiny_events, tmp_path / "lake" / "interactions")
    cfg = load_config({"data_dir": tmp_path})
    df = read_source(cfg, Window.ending_at(datetime(2024, 3, 1), 3))
    assert len(df) == int(
        ((tiny_events["event_ts"] >= _ts("2024-02-27")) & (tiny_events["event_ts"] < _ts("2024-03-01"))).sum()
    )


def test_missing_source_names_the_path(tmp_path) -> None:
    missing = tmp_path / "nowhere" / "interactions"
    cfg = load_config({"data_dir": tmp_path, "source_path": str(missing)})
    with pytest.raises(SourceError, match="nowhere/interactions"):
        read_source(cfg, Window.ending_at(datetime(2024, 3, 1), 3))


def test_source_folder_without_partitions(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    cfg = load_config({"data_dir": tmp_path, "source_path": str(tmp_path / "empty")})
    with pytest.raises(SourceError, match="no date=YYYY-MM-DD partitions") as exc:
        read_source(cfg, Window.ending_at(datetime(2024, 3, 1), 3))
    assert not isinstance(exc.value, EmptyWindowError)


def test_parquet_with_wrong_columns_names_the_missing_one(tmp_path) -> None:
    df = pd.DataFrame(
        {"user": ["a"], "item_id": ["x"], "event_ts": [_ts("2024-03-01 10:00")]}
    )
    land_partitioned(df, tmp_path / "src")
    cfg = load_config({"data_dir": tmp_path, "source_path": str(tmp_path / "src")})
    with pytest.raises(SourceError, match="user_id"):
        read_source(cfg, Window.ending_at(datetime(2024, 3, 2), 3))


def test_csv_with_wrong_columns_names_the_missing_one(tmp_path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("user_id,item,when\na,x,2024-03-01T10:00:00Z\n")
    cfg = load_config({"data_dir": tmp_path, "source_path": str(path), "source_format": "csv"})
    with pytest.raises(SourceError, match="item_id") as exc:
        read_source(cfg, Window.ending_at(datetime(2024, 3, 2), 3))
    assert "event_ts" in str(exc.value)


def test_empty_window_parquet(tmp_path, lake) -> None:
    cfg = load_config({"data_dir": tmp_path, "source_path": str(lake)})
    with pytest.raises(EmptyWindowError):
        read_source(cfg, Window.ending_at(datetime(2023, 1, 1), 7))


def test_empty_window_csv(tmp_path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,event_ts\na,x,2024-03-01T10:00:00Z\n")
    cfg = load_config({"data_dir": tmp_path, "source_path": str(path), "source_format": "csv"})
    with pytest.raises(EmptyWindowError, match="no events in the window"):
        read_source(cfg, Window.ending_at(datetime(2024, 3, 1, 10), 3))  # end is exclusive
    assert len(read_source(cfg, Window.ending_at(datetime(2024, 3, 1, 10, 0, 1), 3))) == 1


# --- MovieLens ------------------------------------------------------------------------------


def _movielens_ratings() -> Path:
    root = os.environ.get("RECSYS_MOVIELENS_DIR")
    folder = Path(root) if root else PROJECT_ROOT / ".." / "shared" / "datasets" / "movielens-latest-small"
    path = folder / "ratings.csv"
    if not path.exists():
        pytest.skip(f"MovieLens ratings.csv not found at {path} (set RECSYS_MOVIELENS_DIR)")
    return path


def test_movielens_reader_on_the_real_file(tmp_path) -> None:
    path = _movielens_ratings()
    window = Window.ending_at(datetime(2018, 9, 25), 365)
    cfg = load_config({"data_dir": tmp_path, "source_path": str(path), "source_format": "movielens"})
    df = read_source(cfg, window)
    raw = pd.read_csv(path)
    ts = pd.to_datetime(raw["timestamp"], unit="s", utc=True)
    expected = raw[(ts >= window.start) & (ts < window.end)]
    assert len(df) == len(expected) > 1000
    assert list(df.columns) == ["user_id", "item_id", "event_ts", "event_type", "weight"]
    assert df["user_id"].dtype == np.int64 and df["item_id"].dtype == np.int64
    assert str(df["event_ts"].dtype) == "datetime64[us, UTC]"
    assert set(df["event_type"]) == {"rating"}
    assert df["weight"].dtype == np.float32
    assert np.isclose(df["weight"].sum(), expected["rating"].sum())
    assert set(df["user_id"]) == set(expected["userId"])
    assert df["event_ts"].max() < window.end

    snap, stats = _plain_snapshot(cfg, window)
    assert stats.rows_read == len(expected)
    assert stats.duplicates_dropped == 0  # one rating per (user, movie)
    assert stats.rows == len(snap) > 0 and stats.users == snap["user_id"].nunique()


def test_movielens_reader_rejects_other_csv(tmp_path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,timestamp\n1,2,1537800000\n")
    cfg = load_config({"data_dir": tmp_path, "source_path": str(path), "source_format": "movielens"})
    with pytest.raises(SourceError, match="rating"):
        read_source(cfg, Window.ending_at(datetime(2018, 9, 25), 30))


# --- build_indexed_snapshot -----------------------------------------------------------------


def _plain_snapshot(cfg, window: Window) -> tuple[pd.DataFrame, object]:
    """The snapshot frame as written (plain string ids, no codes) and its stats."""
    snap = build_indexed_snapshot(cfg, window)
    return snap.plain_frame(), snap.stats


END = "2024-01-31"


def _snapshot_source(tmp_path) -> Path:
    """Hand-made events for a window [2024-01-01, 2024-01-31), active = >= 2 events since 01-24."""
    rows = [
        # user a: 2 distinct recent events (+1 exact duplicate) and an old one -> active, 3 rows
        ("a", "x", "2024-01-25T10:00:00Z", "view"),
        ("a", "x", "2024-01-25T10:00:00Z", "view"),  # exact duplicate
        ("a", "y", "2024-01-30T23:59:59Z", "purchase"),
        ("a", "z", "2024-01-05T00:00:00Z", "click"),
        # user b: 1 recent event, many old ones -> inactive, 5 rows dropped
        ("b", "x", "2024-01-28T00:00:00Z", "view"),
        ("b", "y", "2024-01-02T00:00:00Z", "view"),
        ("b", "y", "2024-01-03T00:00:00Z", "view"),
        ("b", "y", "2024-01-04T00:00:00Z", "view"),
        ("b", "z", "2024-01-10T00:00:00Z", "click"),
        # user c: 2 recent rows that are one event twice -> inactive after dedupe
        ("c", "y", "2024-01-26T08:00:00Z", "cart"),
        ("c", "y", "2024-01-26T08:00:00Z", "cart"),
        # user d: a view and a click of the same item in the same second: two events, active
        ("d", "z", "2024-01-29T12:00:00Z", "view"),
        ("d", "z", "2024-01-29T12:00:00Z", "click"),
        ("d", "w", "2024-01-24T00:00:00Z", "odd-type"),  # exactly at the activity boundary
        # outside the window: never read
        ("a", "w", "2024-01-31T00:00:00Z", "view"),
        ("e", "x", "2023-12-31T23:59:59Z", "view"),
    ]
    path = tmp_path / "events.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "event_ts", "event_type"]).to_csv(path, index=False)
    return path


def test_snapshot_drops_duplicates_and_inactive_users(tmp_path) -> None:
    path = _snapshot_source(tmp_path)
    cfg = load_config(
        {
            "data_dir": tmp_path,
            "source_path": str(path),
            "source_format": "csv",
            "window_days": 30,
            "active_days": 7,
            "active_min_events": 2,
        }
    )
    window = Window.ending_at(datetime(2024, 1, 31), 30)
    df, stats = _plain_snapshot(cfg, window)
    assert stats.rows_read == 14
    assert stats.duplicates_dropped == 2
    assert stats.inactive_rows_dropped == 5 + 1  # b's 5 rows, c's remaining row
    assert (stats.rows, stats.users, stats.items) == (6, 2, 4)
    assert list(df.columns) == ["user_id", "item_id", "event_ts", "event_type", "weight"]
    assert df["event_ts"].is_monotonic_increasing
    got = sorted(zip(df["user_id"], df["item_id"], df["event_type"], df["weight"].tolist()))
    assert got == [
        ("a", "x", "view", 1.0),
        ("a", "y", "purchase", 5.0),
        ("a", "z", "click", 2.0),
        ("d", "w", "odd-type", 1.0),  # unlisted event type weighs 1
        ("d", "z", "click", 2.0),
        ("d", "z", "view", 1.0),
    ]


def test_snapshot_no_active_user_is_an_empty_window(tmp_path) -> None:
    path = _snapshot_source(tmp_path)
    cfg = load_config(
        {"data_dir": tmp_path, "source_path": str(path), "source_format": "csv", "active_min_events": 50}
    )
    with pytest.raises(EmptyWindowError, match=">= 50 events"):
        _plain_snapshot(cfg, Window.ending_at(datetime(2024, 1, 31), 30))


def test_snapshot_on_synthetic_lake_counts_duplicates(tmp_path, lake, tiny_events) -> None:
    cfg = load_config({"data_dir": tmp_path, "source_path": str(lake), "window_days": 40})
    window = Window.ending_at(datetime(2024, 4, 1), 40)
    df, stats = _plain_snapshot(cfg, window)
    assert stats.rows_read == len(tiny_events)
    assert stats.duplicates_dropped == int(tiny_events.duplicated().sum()) > 0
    assert not df.duplicated().any()
    recent = df["event_ts"] >= window.end - pd.Timedelta(days=cfg.active_days)
    counts = df.loc[recent].groupby("user_id").size()
    assert set(counts.index) == set(df["user_id"])
    assert (counts >= cfg.active_min_events).all()


# --- interaction_matrix ---------------------------------------------------------------------


def test_interaction_matrix_sums_duplicate_pairs() -> None:
    df = pd.DataFrame(
        {
            "user_id": ["a", "a", "b", "a", "zz"],
            "item_id": ["x", "x", "y", "y", "x"],
            "weight": [1.0, 2.5, 3.0, 1.0, 9.0],
        }
    )
    users = IdMap(pd.Index(["a", "b"]))  # "zz" unknown -> dropped
    items = IdMap.from_values(df["item_id"])
    m = interaction_matrix(df, users, items)
    assert m.dtype == np.float32 and m.shape == (2, 2) and m.has_sorted_indices
    assert m.nnz == 3
    assert m.toarray().tolist() == [[3.5, 1.0], [0.0, 3.0]]
    b = interaction_matrix(df, users, items, value=None)
    assert b.toarray().tolist() == [[1.0, 1.0], [0.0, 1.0]]


def test_idmap_round_trip(tmp_path) -> None:
    ids = IdMap.from_values(pd.Series([30, 10, 20, 10]))
    assert ids.ids.tolist() == [10, 20, 30]
    assert ids.index_of(np.array([20, 99, 10])).tolist() == [1, -1, 0]
    frame = ids.to_frame("user")
    assert frame.to_dict("list") == {"user_index": [0, 1, 2], "user_id": [10, 20, 30]}
    frame.to_parquet(tmp_path / "users.parquet")
    assert IdMap.read(tmp_path / "users.parquet", "user").ids.tolist() == [10, 20, 30]


# --- the indexed snapshot (integer codes beside the string ids) ------------------------------


def test_indexed_snapshot_codes_index_the_sorted_id_maps(tmp_path, lake, tiny_events) -> None:
    cfg = load_config({"data_dir": tmp_path, "source_path": str(lake), "window_days": 40})
    window = Window.ending_at(datetime(2024, 4, 1), 40)
    snap = build_indexed_snapshot(cfg, window)
    df = snap.frame
    assert df["user_idx"].dtype == np.int32 and df["item_idx"].dtype == np.int32
    # ids read from Parquet are categoricals here (written back as plain strings)
    assert isinstance(df["user_id"].dtype, pd.CategoricalDtype)
    plain, stats = _plain_snapshot(cfg, window)
    assert plain["user_id"].dtype == tiny_events["user_id"].dtype  # the plain strings again
    # the maps are exactly the sorted distinct ids of the kept rows (what from_values gives)
    assert snap.users.ids.equals(IdMap.from_values(plain["user_id"]).ids)
    assert snap.items.ids.equals(IdMap.from_values(plain["item_id"]).ids)
    assert (snap.users.ids[df["user_idx"]] == plain["user_id"].to_numpy()).all()
    assert (snap.items.ids[df["item_idx"]] == plain["item_id"].to_numpy()).all()
    assert (snap.stats.users, snap.stats.items) == (len(snap.users), len(snap.items))
    assert stats.rows == snap.stats.rows and stats.duplicates_dropped == snap.stats.duplicates_dropped
    # the snapshot as written reads back as the plain frame plus the codes
    from include.recsys.data.snapshot import write_snapshot_parquet

    back = pd.read_parquet(write_snapshot_parquet(df, tmp_path / "snap.parquet"))
    pd.testing.assert_frame_equal(back.drop(columns=["user_idx", "item_idx"]), plain)
    np.testing.assert_array_equal(back["user_idx"], df["user_idx"])


def test_snapshot_order_is_time_then_user_with_source_order_for_ties(tmp_path) -> None:
    """(event_ts, user_id) order, ties in source order; a row without a time is outside every window."""
    rows = [
        ("b", "x", "2024-01-30T10:00:00Z", "view"),
        ("a", "y", "2024-01-30T10:00:00Z", "view"),
        ("b", "z", "2024-01-30T10:00:00Z", "click"),  # tie with row 0: stays after it
        ("b", "x", "2024-01-30T10:00:00Z", "view"),  # exact duplicate of row 0: dropped
        ("a", "x", "2024-01-29T00:00:00Z", "view"),
        ("a", "z", None, "view"),
    ]
    path = tmp_path / "events.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "event_ts", "event_type"]).to_csv(path, index=False)
    cfg = load_config({"data_dir": tmp_path, "source_path": str(path), "source_format": "csv",
                       "active_days": 7, "active_min_events": 1})
    window = Window.ending_at(datetime(2024, 1, 31), 30)
    snap = build_indexed_snapshot(cfg, window)
    got = list(zip(snap.frame["user_id"], snap.frame["item_id"], snap.frame["event_type"]))
    assert got == [("a", "x", "view"), ("a", "y", "view"), ("b", "x", "view"), ("b", "z", "click")]
    assert snap.stats.duplicates_dropped == 1
