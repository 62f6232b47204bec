"""Bad-input matrix: each case is input -> expected behaviour, and nothing published is lost.

Library level on tiny data in tmp_path: ``pipeline.snapshot`` / ``validate_input`` /
``validate_output`` with a CURRENT table published beforehand; every failing case asserts the
domain error (SourceError / DataValidationError / OutputValidationError, which the DAG turns
into a no-retry failure), the message naming the check, and CURRENT unchanged.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include.recsys.config.settings import PipelineConfig
from include.recsys.core.run import RunContext
from include.recsys.data.synth import land_partitioned
from include.recsys.errors import (
    DataValidationError,
    InputTypeError,
    OutputValidationError,
    SourceError,
)
from include.recsys.stages.snapshot import snapshot
from include.recsys.stages.validate_input import validate_input
from include.recsys.stages.validate_output import validate_output
from include.recsys.tables.current import point_current, read_current
from include.recsys.tables.versions import write_version
from include.recsys.validation.history import history_path, read_history

END = datetime(2026, 11, 22, tzinfo=timezone.utc)
DAYS = 14
N_USERS, N_ITEMS, PER_DAY = 40, 30, 80


def events(seed: int = 0, per_day: int = PER_DAY, users: int = N_USERS) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = per_day * DAYS
    start = pd.Timestamp(END) - pd.Timedelta(days=DAYS)
    day = np.repeat(np.arange(DAYS), per_day)
    ts = start + pd.to_timedelta(day * 86400 + rng.integers(0, 86400, n), unit="s")
    return pd.DataFrame(
        {
            "user_id": pd.array([f"u{u}" for u in rng.integers(0, users, n)], dtype="str"),
            "item_id": pd.array([f"i{i}" for i in rng.integers(0, N_ITEMS, n)], dtype="str"),
            "event_ts": pd.Series(ts).astype("datetime64[us, UTC]"),
            "event_type": pd.array(rng.choice(["view", "click", "purchase"], n), dtype="str"),
        }
    )


@pytest.fixture
def env(tmp_path, monkeypatch):
    # no MLflow here (it is exercised by the e2e runs): record what would be logged
    logged: list[str] = []
    monkeypatch.setattr("include.recsys.stages.validate_input._log_validation_to_mlflow", lambda cfg, rc: logged.append(rc.run_id))
    cfg = PipelineConfig(
        data_dir=tmp_path / "data", window_days=DAYS, holdout_days=3, active_days=DAYS,
        active_min_events=1, top_n=5,
    )
    # a table is already served: no bad input may lose it
    root = cfg.recommendations_root
    table = pd.DataFrame({
        "user_id": ["u1"] * 2, "rank": np.array([1, 2], np.int16), "item_id": ["i1", "i2"],
        "score": np.array([0.9, 0.5], np.float32), "source": "model", "model_name": "m", "model_version": "1",
    })
    fallback = pd.DataFrame({"rank": np.array([1], np.int16), "item_id": ["i1"], "score": np.array([1.0], np.float32)})
    write_version(root, "v0", table, fallback, {"top_n": 2})
    point_current(root, "v0", reason="test setup")
    return cfg


def rc(run: str = "r1") -> RunContext:
    return RunContext("recsys_nightly_retrain", run, END, END)


def land(cfg: PipelineConfig, df: pd.DataFrame) -> Path:
    land_partitioned(df, cfg.source)
    return cfg.source


def run_input(cfg: PipelineConfig, run: str = "r1"):
    snap = snapshot(cfg, rc(run))
    return snap, validate_input(cfg, rc(run), snap)


def fails_input(cfg: PipelineConfig, run: str = "r1") -> DataValidationError:
    with pytest.raises(DataValidationError) as info:
        run_input(cfg, run)
    assert read_current(cfg.recommendations_root) == "v0"
    assert read_history(history_path(cfg.data_dir, "recsys_nightly_retrain")) == [] or run != "r1"
    return info.value


def fails_source(cfg: PipelineConfig, match: str) -> SourceError:
    with pytest.raises(SourceError, match=match) as info:
        snapshot(cfg, rc())
    assert read_current(cfg.recommendations_root) == "v0"
    return info.value


def checks(err: DataValidationError) -> set[str]:
    return {r["check"] for r in err.report.errors}


# --------------------------------------------------------------------------- clean baseline


def test_clean_input_passes_first_run_notes_no_baseline_and_records_history(env):
    land(env, events())
    snap, out = run_input(env)
    assert out["success"] and out["counts"]["failed"] == 0
    report = json.loads(Path(out["report"]).read_text())
    assert any("no baseline" in n for n in report["notes"])
    assert Path(out["data_docs"]).name == "index.html" and Path(out["data_docs"]).exists()
    assert Path(out["report"]).with_suffix(".html").exists()
    hist = read_history(history_path(env.data_dir, "recsys_nightly_retrain"))
    assert [h["run_id"] for h in hist] == ["r1"] and hist[0]["rows"] == snap["stats"]["rows"]
    run_input(env, "r1")  # a retry replaces its own line
    assert len(read_history(history_path(env.data_dir, "recsys_nightly_retrain"))) == 1


# --------------------------------------------------------------------------- the matrix


def test_bad_input_empty_window(env):
    old = events()
    old["event_ts"] = old["event_ts"] - pd.Timedelta(days=60)
    land(env, old)
    fails_source(env, "window")


def test_bad_input_missing_newest_partition(env):
    land(env, events())
    newest = sorted(env.source.glob("date=*"))[-1]
    for f in newest.iterdir():
        f.unlink()
    newest.rmdir()
    err = fails_input(env)
    assert "freshness" in checks(err)
    assert "2026-11-21" in str(err)  # the bound: the window's last day


def test_bad_input_renamed_column(env):
    land(env, events().rename(columns={"user_id": "uid"}))
    fails_source(env, r"user_id")


def test_bad_input_id_column_of_wrong_type(env):
    # issue 16: a float id column fails when the file is read (a SourceError: no retry), naming
    # the file, the column, the first bad row and its value (before: the GX dtype check)
    df = events()
    df["item_id"] = np.arange(len(df), dtype="float64") % N_ITEMS + 0.5
    land(env, df)
    err = fails_source(env, "column 'item_id' must hold string or integer ids")
    assert isinstance(err, InputTypeError) and err.column == "item_id" and err.row == 0 and err.value == 0.5
    assert err.file.endswith("date=2026-11-08/part-0.parquet") and "row 0 holds 0.5" in str(err)


def test_bad_input_nulls_in_ids(env):
    df = events()
    df["user_id"] = df["user_id"].astype(object)
    df.loc[:4, "user_id"] = None
    df["item_id"] = df["item_id"].astype(object)
    df.loc[100:102, "item_id"] = None
    land(env, df)
    err = fails_input(env)
    assert "null_id_rows" in checks(err)
    assert "observed 8 > bound 0" in str(err)


def test_bad_input_negative_or_absurd_weights(env):
    df = events().assign(weight=np.float32(1.0))
    df.loc[0, "weight"] = -1.0
    df.loc[1, "weight"] = 1e9
    land(env, df)
    err = fails_input(env)
    assert {"weight_positive_finite", "weight_plausible"} <= checks(err)
    assert "outside (-inf, 1000]" in str(err)


def test_bad_input_events_dated_in_the_future(env):
    df = events()
    newest = df["event_ts"] >= pd.Timestamp(END) - pd.Timedelta(days=1)
    idx = df.index[newest][:3]
    land(env, df)  # partitions first, then future-dated rows in the newest partition (clock skew)
    part = sorted(env.source.glob("date=*"))[-1] / "part-0.parquet"
    day = pd.read_parquet(part)
    day.loc[:2, "event_ts"] = pd.Timestamp(END) + pd.Timedelta(hours=2)
    day.to_parquet(part, index=False)
    assert len(idx) == 3
    err = fails_input(env)
    assert "future_rows" in checks(err)
    assert "observed 3 > bound 0" in str(err)


def test_bad_input_events_outside_the_window(env):
    """Misfiled old rows in a window partition: dropped by the snapshot, warned in the report;
    a frame that still holds them fails the GX window check (test_validate covers the count)."""
    land(env, events())
    part = sorted(env.source.glob("date=*"))[-2] / "part-0.parquet"
    day = pd.read_parquet(part)
    day.loc[:1, "event_ts"] = pd.Timestamp(END) - pd.Timedelta(days=90)
    day.to_parquet(part, index=False)
    snap, out = run_input(env)
    assert out["success"] and out["warnings"] >= 1
    report = json.loads(Path(out["report"]).read_text())
    warned = [r for r in report["results"] if r["check"] == "outside_window_rows"]
    assert warned[0]["success"] is False and warned[0]["observed_value"] == 2
    from include.recsys.validation.input import validate_interactions

    frame = pd.read_parquet(snap["snapshot"])
    frame.loc[0, "event_ts"] = pd.Timestamp(END) - pd.Timedelta(days=90)
    with pytest.raises(DataValidationError, match="event_ts: 1 of"):
        validate_interactions(frame, window_start=pd.Timestamp(snap["window_start"]), window_end=END)


def test_bad_input_same_day_loaded_twice(env):
    land(env, events())
    newest = sorted(env.source.glob("date=*"))[-1]
    (newest / "part-1.parquet").write_bytes((newest / "part-0.parquet").read_bytes())
    err = fails_input(env)
    assert "duplicate_rate" in checks(err)
    assert "bound 0.01" in str(err)


@pytest.mark.parametrize(("factor", "bound"), [(10, "[0.5, 3.0]"), (0.1, "[0.5, 3.0]")], ids=["spike_10x", "drop_90pct"])
def test_bad_input_sudden_volume_change(env, factor, bound):
    land(env, events())
    snap1, _ = run_input(env, "r1")
    for d in env.source.glob("date=*"):
        for f in d.iterdir():
            f.unlink()
    land(env, events(seed=1, per_day=int(PER_DAY * factor)))
    with pytest.raises(DataValidationError) as info:
        run_input(env, "r2")
    err = info.value
    assert "drift_rows" in checks(err)
    rows2 = err.report.n_rows
    assert f"rows: {snap1['stats']['rows']:,}" not in str(err)  # current number first, then baseline
    assert f"vs baseline {snap1['stats']['rows']:,}" in str(err) and f"rows: {rows2:,}" in str(err)
    assert bound in str(err)
    # the failed run is not recorded: tomorrow still compares with the good baseline
    assert [h["run_id"] for h in read_history(history_path(env.data_dir, "recsys_nightly_retrain"))] == ["r1"]
    assert read_current(env.recommendations_root) == "v0"


def test_bad_input_all_events_from_one_user(env):
    land(env, events(users=1))
    err = fails_input(env)
    assert {"top_user_share", "plausible_user_count"} <= checks(err)


def test_bad_input_corrupted_truncated_parquet(env):
    land(env, events())
    part = sorted(env.source.glob("date=*"))[3] / "part-0.parquet"
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    err = fails_source(env, "cannot read Parquet file")
    assert str(part) in str(err)


def test_bad_input_csv_with_formula_like_value(env, tmp_path):
    df = events()
    df["user_id"] = df["user_id"].astype(object)
    df.loc[df["user_id"] == "u3", "user_id"] = '=HYPERLINK("http://x")'
    path = tmp_path / "interactions.csv"
    df.to_csv(path, index=False)
    cfg = env.with_overrides({"source_path": str(path), "source_format": "csv"})
    with pytest.raises(DataValidationError) as info:
        run_input(cfg)
    assert "id_format" in checks(info.value) and "=HYPERLINK" in str(info.value)
    assert read_current(cfg.recommendations_root) == "v0"


def test_bad_input_csv_with_non_utf8_value(env, tmp_path):
    path = tmp_path / "interactions.csv"
    path.write_bytes(b"user_id,item_id,event_ts\nu1,caf\xe9,2026-11-21T10:00:00Z\n")
    cfg = env.with_overrides({"source_path": str(path), "source_format": "csv"})
    with pytest.raises(SourceError, match="not valid UTF-8") as info:
        snapshot(cfg, rc())
    assert str(path) in str(info.value)
    assert read_current(cfg.recommendations_root) == "v0"


def test_bad_input_new_unknown_column_is_allowed_and_noted(env):
    land(env, events().assign(device="ios"))
    _, out = run_input(env)
    assert out["success"]
    report = json.loads(Path(out["report"]).read_text())
    assert any("device" in n and "allowed" in n for n in report["notes"])


# --------------------------------------------------------------------------- output table


def _version(env, table: pd.DataFrame, name: str) -> dict:
    fb = pd.DataFrame({"rank": np.array([1], np.int16), "item_id": ["i1"], "score": np.array([1.0], np.float32)})
    folder = write_version(env.recommendations_root, name, table.assign(model_name="m", model_version="2"), fb, {})
    return {"version": name, "path": str(folder)}


def _good_table(snapshot_path: str, n: int) -> pd.DataFrame:
    snap = pd.read_parquet(snapshot_path, columns=["user_id", "item_id"])
    catalog = np.sort(snap["item_id"].unique())
    rows = []
    for user, seen in snap.groupby("user_id")["item_id"]:  # test data only (tiny)
        unseen = [i for i in catalog if i not in set(seen)][:n]
        rows += [(user, r + 1, item, 1.0 - r / 10, "model") for r, item in enumerate(unseen)]
    t = pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score", "source"])
    return t.astype({"rank": "int16", "score": "float32"})


def test_output_valid_table_passes_and_records_counts(env):
    land(env, events(per_day=20))
    snap, _ = run_input(env)
    pre = _version(env, _good_table(snap["snapshot"], env.top_n), "v1")
    out = validate_output(env, rc(), snap, pre)
    assert out["counts"]["failed"] == 0 and out["version"] == "v1"
    report = json.loads(Path(out["report"]).read_text())
    jac = [r for r in report["results"] if r["check"].startswith("jaccard")]
    assert jac and all(r["success"] for r in jac)  # compared with CURRENT v0 (user u1 in common)


def test_bad_input_table_with_one_user_missing_items(env):
    land(env, events(per_day=20))
    snap, _ = run_input(env)
    table = _good_table(snap["snapshot"], env.top_n)
    victim = table["user_id"].iloc[0]
    table = table.loc[~((table["user_id"] == victim) & (table["rank"] > 2))]
    pre = _version(env, table, "v1")
    with pytest.raises(OutputValidationError) as info:
        validate_output(env, rc(), snap, pre)
    assert {r["check"] for r in info.value.report.errors} == {"items_per_user"}
    assert f"{victim} has 2 (expected {env.top_n})" in str(info.value)
    assert read_current(env.recommendations_root) == "v0"


def test_bad_input_table_with_already_seen_item(env):
    land(env, events(per_day=20))
    snap, _ = run_input(env)
    table = _good_table(snap["snapshot"], env.top_n)
    seen = pd.read_parquet(snap["snapshot"])
    user, item = seen["user_id"].iloc[0], seen["item_id"].iloc[0]
    row = table.index[(table["user_id"] == user) & (table["rank"] == env.top_n)][0]
    table.loc[row, "item_id"] = item
    pre = _version(env, table, "v1")
    with pytest.raises(OutputValidationError, match="already interacted") as info:
        validate_output(env, rc(), snap, pre)
    assert "no_seen_items" in {r["check"] for r in info.value.report.errors}
    assert isinstance(info.value, DataValidationError)  # the DAG's _stage: no retries
    assert read_current(env.recommendations_root) == "v0"


# --------------------------------------------------------------------------- typed columns (issue 16)
# A wrongly typed value fails when its file is read: InputTypeError, a SourceError (the DAG's
# _stage fails the task at once, no retry), naming the file, the column, the first bad row and
# the value. Never a bare "could not convert string to float".


def fails_type(cfg: PipelineConfig, column: str, row: int, value, file: Path) -> InputTypeError:
    with pytest.raises(InputTypeError) as info:
        snapshot(cfg, rc())
    err = info.value
    assert isinstance(err, SourceError)  # the DAG does not retry it
    assert (err.file, err.column, err.row, err.value) == (str(file), column, row, value), str(err)
    assert str(file) in str(err) and repr(column) in str(err) and f"row {row}" in str(err) and repr(value) in str(err)
    assert "could not convert" not in str(err) and "retrying will not help" in str(err)
    assert read_current(cfg.recommendations_root) == "v0"
    return err


def _partition(cfg: PipelineConfig, day: str) -> Path:
    return cfg.source / f"date={day}" / "part-0.parquet"


def test_bad_input_string_in_numeric_weight_column_of_one_partition(env):
    land(env, events().assign(weight=np.float32(1.0)))
    path = _partition(env, "2026-11-15")
    df = pd.read_parquet(path)
    df["weight"] = df["weight"].astype(str)
    df.loc[7, "weight"] = "heavy"
    df.to_parquet(path, index=False)  # this one file's weight column is a string column
    err = fails_type(env, "weight", 7, "heavy", path)
    assert "must hold numbers" in str(err)


def test_numeric_strings_in_weight_are_read_as_numbers(env):
    land(env, events().assign(weight=np.float32(2.0)))
    path = _partition(env, "2026-11-15")
    df = pd.read_parquet(path)
    df["weight"] = df["weight"].map(lambda w: f"{w:.1f}")  # "2.0": the right values, as text
    df.to_parquet(path, index=False)
    snap = snapshot(env, rc())
    assert set(pd.read_parquet(snap["snapshot"], columns=["weight"])["weight"]) == {2.0}


def test_bad_input_integer_event_ts_in_parquet(env):
    land(env, events())
    path = _partition(env, "2026-11-12")
    df = pd.read_parquet(path)
    df["event_ts"] = df["event_ts"].astype("int64") // 10**6  # epoch seconds, not a timestamp
    df.to_parquet(path, index=False)
    fails_type(env, "event_ts", 0, int(df["event_ts"].iloc[0]), path)


def test_bad_input_ids_change_type_between_partitions(env):
    land(env, events())
    path = _partition(env, "2026-11-20")
    df = pd.read_parquet(path)
    df["user_id"] = df["user_id"].str[1:].astype("int64")  # u17 -> 17 in one day's export
    df.to_parquet(path, index=False)
    err = fails_type(env, "user_id", 0, int(df["user_id"].iloc[0]), path)
    assert "string ids like the earlier file" in str(err) and "date=2026-11-08" in str(err)


@pytest.mark.parametrize(
    ("column", "bad", "expected"),
    [
        ("rating", "five", "must hold numbers"),
        ("event_ts", "yesterday at noon", "must hold timestamps"),
        ("item_id", 3.5, "must hold string or integer ids"),
    ],
)
def test_bad_input_wrong_type_in_csv(env, tmp_path, column, bad, expected):
    df = events().assign(rating=4.0)
    df["item_id"] = df["item_id"].str[1:].astype("int64")
    df[column] = df[column].astype(object)
    df.loc[11, column] = bad
    path = tmp_path / "interactions.csv"
    df.to_csv(path, index=False)
    cfg = env.with_overrides({"source_path": str(path), "source_format": "csv"})
    err = fails_type(cfg, column, 11, bad, path)
    assert expected in str(err) and "(line 13)" in str(err)  # header + 0-based row 11


@pytest.mark.parametrize(("column", "bad"), [("userId", "u7"), ("movieId", 12.5), ("rating", "n/a!"), ("timestamp", "2026-11-20")])
def test_bad_input_wrong_type_in_movielens(env, tmp_path, column, bad):
    ts = int(pd.Timestamp(END).timestamp()) - 3600
    df = pd.DataFrame({"userId": [1, 2, 3, 4], "movieId": [10, 11, 12, 13], "rating": [4.0, 3.5, 5.0, 1.0],
                       "timestamp": [ts - i for i in range(4)]}).astype(object)
    df.loc[2, column] = bad
    path = tmp_path / "ratings.csv"
    df.to_csv(path, index=False)
    cfg = env.with_overrides({"source_path": str(path), "source_format": "movielens"})
    err = fails_type(cfg, column, 2, bad, path)
    assert "(line 4)" in str(err)
