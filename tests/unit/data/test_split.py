"""Unit tests for ``include.recsys.data.split.time_split`` (leak-free time holdout)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from include.recsys.data.split import time_split

CUTOFF = pd.Timestamp("2024-01-10", tz="UTC")


def _events(rows) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "event_ts"])
    df["event_ts"] = pd.to_datetime(df["event_ts"], utc=True, format="ISO8601").astype("datetime64[us, UTC]")
    df["event_type"] = "view"
    df["weight"] = 1.0
    return df


ROWS = [
    ("a", "x", "2024-01-01"),
    ("a", "y", "2024-01-09T23:59:59.999999"),  # last instant before the cutoff: train
    ("a", "y", "2024-01-10"),  # exactly at the cutoff: holdout side, but seen in training
    ("a", "z", "2024-01-10"),  # new pair at the cutoff -> holdout
    ("a", "z", "2024-01-12"),  # same new pair again -> one holdout row (the first)
    ("b", "x", "2024-01-05"),
    ("b", "w", "2024-01-15"),  # new pair -> holdout
    ("c", "x", "2024-01-11"),  # c never trained: cold user
    ("c", "y", "2024-01-12"),
    ("d", "x", "2024-01-02"),  # d only in training
]


def test_train_strictly_before_cutoff_holdout_at_or_after() -> None:
    df = _events(ROWS)
    train, holdout, stats = time_split(df, CUTOFF)
    assert (train["event_ts"] < CUTOFF).all()
    assert (holdout["event_ts"] >= CUTOFF).all()
    assert len(train) == 4 and stats.train_rows == 4
    assert stats.holdout_rows == 6  # every event at/after the cutoff
    assert list(train.columns) == list(df.columns)  # training keeps weights etc.
    assert sorted(zip(train["user_id"], train["item_id"])) == [
        ("a", "x"), ("a", "y"), ("b", "x"), ("d", "x"),
    ]
    assert stats.cutoff == CUTOFF.isoformat()


def test_holdout_excludes_pairs_seen_in_training_and_keeps_first_occurrence() -> None:
    _, holdout, stats = time_split(_events(ROWS), CUTOFF)
    got = sorted(zip(holdout["user_id"], holdout["item_id"], holdout["event_ts"].astype(str)))
    assert got == [
        ("a", "z", "2024-01-10 00:00:00+00:00"),
        ("b", "w", "2024-01-15 00:00:00+00:00"),
        ("c", "x", "2024-01-11 00:00:00+00:00"),
        ("c", "y", "2024-01-12 00:00:00+00:00"),
    ]
    assert ("a", "y") not in set(zip(holdout["user_id"], holdout["item_id"]))
    assert stats.holdout_pairs_new == 4
    assert not holdout.duplicated(["user_id", "item_id"]).any()


def test_cold_users_counted() -> None:
    _, _, stats = time_split(_events(ROWS), CUTOFF)
    assert stats.holdout_users_warm == 2  # a, b
    assert stats.holdout_users_cold == 1  # c


def test_same_item_for_other_user_is_not_filtered() -> None:
    # x was seen in training by a, but not by b: (b, x) is a new pair for b
    df = _events([("a", "x", "2024-01-01"), ("b", "y", "2024-01-02"), ("b", "x", "2024-01-11")])
    _, holdout, stats = time_split(df, CUTOFF)
    assert list(zip(holdout["user_id"], holdout["item_id"])) == [("b", "x")]
    assert (stats.holdout_users_warm, stats.holdout_users_cold) == (1, 0)


def test_everything_after_cutoff_raises() -> None:
    with pytest.raises(ValueError, match="no training events"):
        time_split(_events([("a", "x", "2024-01-11")]), CUTOFF)


def test_nothing_after_cutoff_gives_empty_holdout() -> None:
    train, holdout, stats = time_split(_events([("a", "x", "2024-01-01")]), CUTOFF)
    assert len(train) == 1 and holdout.empty
    counts = (stats.holdout_rows, stats.holdout_pairs_new, stats.holdout_users_warm, stats.holdout_users_cold)
    assert counts == (0, 0, 0, 0)


def test_file_split_matches_frame_split(tmp_path) -> None:
    """time_split_file (row groups, integer codes) writes exactly time_split's frames, and the
    holdout keeps each row's codes."""
    from dataclasses import asdict

    from include.recsys.core.ids import IdMap
    from include.recsys.data.split import time_split_file

    rng = np.random.default_rng(0)
    n = 3000
    days = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 20 * 86400, n), unit="s")
    df = pd.DataFrame({
        "user_id": pd.Series([f"u{k}" for k in rng.integers(0, 60, n)], dtype="str"),
        "item_id": pd.Series([f"i{k}" for k in rng.integers(0, 40, n)], dtype="str"),
        "event_ts": days.astype("datetime64[us, UTC]"),
        "event_type": "view",
        "weight": rng.random(n).astype("float32"),
    })
    df.loc[[5, 17, 2500], "user_id"] = None  # missing ids (code -1) get their own key, as in time_split
    df.loc[[9, 2999], "item_id"] = None
    for name in ("user", "item"):  # codes into sorted maps of the present ids, as the snapshot writes
        ids = IdMap.from_values(df[f"{name}_id"].dropna())
        df[f"{name}_idx"] = ids.index_of(df[f"{name}_id"]).astype(np.int32)
    assert (df["user_idx"] == -1).sum() == 3
    src = tmp_path / "snap.parquet"
    df.to_parquet(src, index=False, row_group_size=700)  # several row groups
    train, holdout, stats = time_split(df, CUTOFF)
    got = time_split_file(src, CUTOFF, tmp_path / "train.parquet", tmp_path / "holdout.parquet")
    assert asdict(got) == asdict(stats)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "train.parquet"), train)
    written = pd.read_parquet(tmp_path / "holdout.parquet")
    assert list(written.columns) == ["user_id", "item_id", "event_ts", "user_idx", "item_idx"]
    pd.testing.assert_frame_equal(written[["user_id", "item_id", "event_ts"]], holdout)
    codes = df.set_index(["user_id", "item_id"])[["user_idx", "item_idx"]]
    codes = codes[~codes.index.duplicated()].reindex(pd.MultiIndex.from_frame(holdout[["user_id", "item_id"]]))
    np.testing.assert_array_equal(written["user_idx"], codes["user_idx"])
    np.testing.assert_array_equal(written["item_idx"], codes["item_idx"])


def test_file_split_refuses_a_snapshot_without_codes(tmp_path) -> None:
    from include.recsys.data.split import time_split_file
    from include.recsys.errors import IdRouteError

    src = tmp_path / "snap.parquet"
    _events(ROWS).to_parquet(src, index=False)
    with pytest.raises(IdRouteError, match="snap.parquet has no user_idx/item_idx codes.*rerun the snapshot stage"):
        time_split_file(src, CUTOFF, tmp_path / "t.parquet", tmp_path / "h.parquet")


def test_file_split_without_training_rows_raises(tmp_path) -> None:
    from include.recsys.data.split import time_split_file

    src = tmp_path / "snap.parquet"
    _events([("a", "x", "2024-01-11")]).assign(user_idx=np.int32(0), item_idx=np.int32(0)).to_parquet(src, index=False)
    with pytest.raises(ValueError, match="no training events"):
        time_split_file(src, CUTOFF, tmp_path / "t.parquet", tmp_path / "h.parquet")
