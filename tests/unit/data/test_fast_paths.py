"""Issue 21's shortcuts in reading the source and splitting give what the general paths give:
the window filter and its counts with and without rows outside the window, Parquet or CSV, and
the split's train mask compared in Arrow."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from include.recsys.config.settings import load_config
from include.recsys.data.source import Window, read_source
from include.recsys.data.split import _before

WINDOW = Window.ending_at(pd.Timestamp("2026-01-10", tz="UTC"), 5)


def _land(root, ts: list[str]) -> None:
    """One Parquet file per day of ``ts`` (strings, UTC) under ``root``, as the lake holds them."""
    df = pd.DataFrame({
        "user_id": [f"u{k % 3}" for k in range(len(ts))],
        "item_id": [f"i{k % 4}" for k in range(len(ts))],
        "event_ts": pd.to_datetime(ts, utc=True).astype("datetime64[us, UTC]"),
        "event_type": "view",
    })
    for day, part in df.groupby(df["event_ts"].dt.strftime("%Y-%m-%d")):
        folder = root / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        part.to_parquet(folder / "part-0.parquet", index=False)


@pytest.mark.parametrize("extra", [[], ["2026-01-05T00:00:00", "2026-01-09T23:59:59"]])
def test_read_source_keeps_the_window_and_counts_what_it_drops(tmp_path, extra) -> None:
    cfg = load_config({"data_dir": tmp_path})
    inside = ["2026-01-06T10:00:00", "2026-01-07T11:00:00", "2026-01-09T12:00:00"]
    _land(cfg.source, inside + extra)
    df = read_source(cfg, WINDOW, categorical=True)
    assert isinstance(df.index, pd.RangeIndex) and df.index.start == 0
    assert str(df["event_ts"].dtype) == "datetime64[us, UTC]"
    assert ((df["event_ts"] >= WINDOW.start) & (df["event_ts"] < WINDOW.end)).all()
    assert len(df) == len(inside) + len(extra)  # both extra rows lie inside [start, end)
    assert df.attrs["source_stats"]["future_rows"] == 0


def test_read_source_drops_future_and_early_rows_of_a_csv(tmp_path) -> None:
    path = tmp_path / "events.csv"
    pd.DataFrame({
        "user_id": ["a", "b", "c", "d"], "item_id": ["x", "y", "z", "x"],
        "event_ts": ["2026-01-04T23:00:00Z", "2026-01-06T00:00:00Z", "2026-01-10T00:00:00Z", "2026-01-08T00:00:00Z"],
    }).to_csv(path, index=False)
    cfg = load_config({"data_dir": tmp_path, "source_path": str(path), "source_format": "csv"})
    df = read_source(cfg, WINDOW)
    assert list(df["user_id"]) == ["b", "d"] and list(df.index) == [0, 1]
    stats = df.attrs["source_stats"]
    assert (stats["future_rows"], stats["outside_window_rows"]) == (1, 1)


def test_before_equals_the_pandas_comparison() -> None:
    values = [0, 10**6, None, 2 * 10**6, 10**6 - 1]
    ts = pa.chunked_array([pa.array(values[:2], pa.timestamp("us", tz="UTC")),
                           pa.array(values[2:], pa.timestamp("us", tz="UTC"))])
    for cutoff in (pd.Timestamp(1, unit="s", tz="UTC"), pd.Timestamp("1970-01-01 01:00:01", tz="Europe/Berlin"),
                   pd.Timestamp(1_000_000_500, unit="ns", tz="UTC")):  # the last one: through pandas
        want = (ts.to_pandas() < cutoff).to_numpy()
        got = _before(ts, cutoff)
        assert got.dtype == bool
        np.testing.assert_array_equal(got, want)
    with pytest.raises(TypeError):  # a naive cutoff against a zoned column stays an error
        _before(ts, pd.Timestamp("1970-01-01"))
