"""Unit tests for ``include.recsys.data.synth`` (the seeded synthetic default data)."""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest

from include.recsys.data.synth import (
    PRESETS,
    ensure_default_data,
    generate,
    land_partitioned,
)

SPEC = replace(PRESETS["tiny"], end_date="2024-03-31")  # 40 days: 2024-02-21 .. 2024-03-31
PERIOD_START = pd.Timestamp("2024-02-21", tz="UTC")
PERIOD_END = pd.Timestamp("2024-04-01", tz="UTC")


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    return generate(SPEC)


def test_same_seed_same_frame(events) -> None:
    pd.testing.assert_frame_equal(generate(SPEC), events)
    other = generate(replace(SPEC, seed=SPEC.seed + 1))
    assert not (len(other) == len(events) and other.equals(events))


def test_schema_and_period(events) -> None:
    assert list(events.columns) == ["user_id", "item_id", "event_ts", "event_type"]
    assert str(events["event_ts"].dtype) == "datetime64[us, UTC]"
    assert events["event_ts"].is_monotonic_increasing
    assert events["event_ts"].min() >= PERIOD_START and events["event_ts"].max() < PERIOD_END
    assert events["event_ts"].dt.floor("D").nunique() == SPEC.days
    assert events["user_id"].str.match(r"^u\d+$").all() and events["item_id"].str.match(r"^i\d+$").all()
    assert events["user_id"].nunique() <= SPEC.n_users and events["item_id"].nunique() <= SPEC.n_items
    assert set(events["event_type"]) == {"view", "click", "cart", "purchase"}
    shares = events["event_type"].value_counts(normalize=True)
    assert shares["view"] > shares["click"] > shares["cart"] > shares["purchase"]
    # the duplicate share: exact copies of rows, about duplicate_share of the events
    n_base = len(events) / (1 + SPEC.duplicate_share)
    assert events.duplicated().sum() == pytest.approx(SPEC.duplicate_share * n_base, abs=2)


def test_popularity_is_power_law_ish(events) -> None:
    counts = events["item_id"].value_counts()
    top = max(1, round(0.1 * SPEC.n_items))
    assert counts.iloc[:top].sum() / len(events) > 0.40
    # and far from uniform at the bottom: the least popular half takes little
    assert counts.iloc[len(counts) // 2 :].sum() / len(events) < 0.15


def test_new_users_and_items_appear_late(events) -> None:
    span = PERIOD_END - PERIOD_START
    user_first = (events.groupby("user_id")["event_ts"].min() - PERIOD_START) / span
    assert (user_first > 2 / 3).sum() > 0  # some users join in the last third
    assert (user_first < 0.1).sum() > len(user_first) / 2  # most were there from the start
    item_first = (events.groupby("item_id")["event_ts"].min() - PERIOD_START) / span
    assert (item_first > 0.3).sum() > 0  # some items are released late


def test_land_partitioned_round_trip(tmp_path, events) -> None:
    written = land_partitioned(events, tmp_path / "lake")
    days = sorted(events["event_ts"].dt.strftime("%Y-%m-%d").unique())
    assert [p.parent.name for p in written] == [f"date={d}" for d in days]
    assert all(p.name == "part-0.parquet" for p in written)
    assert not list((tmp_path / "lake").rglob("*.tmp"))
    back = pd.concat([pd.read_parquet(p) for p in written], ignore_index=True)
    pd.testing.assert_frame_equal(back, events.reset_index(drop=True), check_dtype=False)
    one = pd.read_parquet(written[3])
    assert (one["event_ts"].dt.strftime("%Y-%m-%d") == days[3]).all()


def test_ensure_default_data_is_idempotent(tmp_path) -> None:
    root = tmp_path / "lake" / "interactions"
    info = ensure_default_data(root, SPEC)
    assert info["partitions"] == SPEC.days
    assert (info["first_day"], info["last_day"]) == ("2024-02-21", "2024-03-31")
    assert info["spec"]["end_date"] == "2024-03-31" and info["spec"]["n_users"] == SPEC.n_users
    assert info["rows"] == len(generate(SPEC))
    marker = json.loads((root / "_synth.json").read_text())
    assert marker == info

    def snapshot() -> dict[str, int]:
        return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}

    before = snapshot()
    again = ensure_default_data(root, replace(SPEC, seed=99, n_users=10))  # another spec: ignored
    assert snapshot() == before  # nothing written, nothing rewritten
    assert again["partitions"] == info["partitions"]
    assert (again["first_day"], again["last_day"]) == (info["first_day"], info["last_day"])
    assert again["spec"] == info["spec"]
