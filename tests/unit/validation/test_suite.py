"""Unit tests for include.recsys.validation.suite (real Great Expectations 1.x, no network)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include.recsys.errors import DataValidationError
from include.recsys.validation.input import validate_interactions
from include.recsys.validation.report import ValidationReport
from include.recsys.validation.suite import DEFAULT_SUITE_PATH, load_suite_definition

PROJECT_ROOT = Path(__file__).resolve().parents[3]
WINDOW_START = datetime(2026, 10, 25, tzinfo=timezone.utc)
WINDOW_END = datetime(2026, 11, 22, tzinfo=timezone.utc)
N_ROWS = 5000


def make_frame(n: int = N_ROWS, *, id_kind: str = "int64", seed: int = 0) -> pd.DataFrame:
    """A clean interactions frame matching the snapshot contract."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 500, n, dtype="int64")
    items = rng.integers(0, 300, n, dtype="int64")
    if id_kind == "str":
        user_col = pd.array([f"u{u}" for u in users], dtype="str")
        item_col = pd.array([f"i{i}" for i in items], dtype="str")
    else:
        user_col, item_col = users, items
    span_s = int((WINDOW_END - WINDOW_START).total_seconds())
    offsets = pd.to_timedelta(rng.integers(0, span_s, n), unit="s")
    event_ts = pd.Series(pd.Timestamp(WINDOW_START) + offsets).astype("datetime64[us, UTC]")
    return pd.DataFrame(
        {
            "user_id": user_col,
            "item_id": item_col,
            "event_ts": event_ts,
            "event_type": pd.array(rng.choice(["view", "click", "purchase"], n), dtype="str"),
            "weight": (rng.random(n) + 0.5).astype("float32"),
        }
    )


def run(df: pd.DataFrame, **kwargs) -> ValidationReport:
    return validate_interactions(df, window_start=WINDOW_START, window_end=WINDOW_END, **kwargs)


def failing_error(df: pd.DataFrame, **kwargs) -> DataValidationError:
    with pytest.raises(DataValidationError) as exc_info:
        run(df, **kwargs)
    return exc_info.value


def result_for(report: ValidationReport, expectation_type: str, column: str | None) -> dict:
    matches = [
        r
        for r in report.results
        if r["expectation_type"] == expectation_type and r["column"] == column
    ]
    assert len(matches) == 1, (expectation_type, column, report.results)
    return matches[0]


# --------------------------------------------------------------------------- passing


@pytest.mark.parametrize("id_kind", ["int64", "str"])
def test_clean_frame_passes_for_int_and_string_ids(id_kind: str) -> None:
    df = make_frame(id_kind=id_kind)
    assert str(df["user_id"].dtype) == ("int64" if id_kind == "int64" else "str")

    report = run(df)

    assert report.success is True
    assert report.gx_success is True
    assert report.n_rows == N_ROWS
    assert report.errors == [] and report.warnings == []
    ran = [r for r in report.results if not r["skipped"]]
    assert ran and all(r["success"] is True for r in ran)
    # the real GX expectations were evaluated, with the window bound from suite parameters
    window = result_for(report, "expect_column_values_to_be_between", "event_ts")
    assert window["element_count"] == N_ROWS
    assert window["unexpected_count"] == 0
    assert window["kwargs"]["min_value"] == WINDOW_START.isoformat()
    assert window["kwargs"]["max_value"] == WINDOW_END.isoformat()
    assert window["kwargs"]["strict_max"] is True
    rows = result_for(report, "expect_table_row_count_to_be_between", None)
    assert rows["observed_value"] == N_ROWS
    user_dtype = result_for(report, "dtype_in_kinds", "user_id")
    assert user_dtype["observed_value"] == str(df["user_id"].dtype)
    assert "PASSED" in report.summary()
    assert f"{N_ROWS:,} rows" in report.summary()


def _as_categoricals(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with its ids dictionary-encoded over their sorted distinct values, as
    :func:`include.recsys.validation.history.read_snapshot` gives them (plus an unused id)."""
    out = df.copy()
    for column in ("user_id", "item_id"):
        categories = pd.Index(sorted(set(df[column].dropna()) | {"zz_unused"}), dtype="str")
        out[column] = pd.Categorical(df[column], categories=categories)
    return out


@pytest.mark.parametrize("encoded", [False, True], ids=["str", "categorical"])
def test_id_checks_run_on_distinct_values(encoded: bool, tmp_path: Path) -> None:
    """The id format and the distinct counts run on each id column's distinct values (one GX
    batch per column, in the same Data Docs site): the verdict of the rows, counted in values;
    a categorical column (the snapshot's ids) gives the same report as its strings."""
    df = make_frame(id_kind="str")
    df.loc[[3, 17], "user_id"] = "=cmd"  # one bad value on two rows
    df.loc[[5], "item_id"] = "has space"
    df = _as_categoricals(df) if encoded else df
    err = failing_error(df, docs_dir=tmp_path / "docs", parameters={"min_items": 10_000})
    n_users = df["user_id"].nunique()
    fmt = result_for(err.report, "expect_column_values_to_match_regex", "user_id")
    assert (fmt["element_count"], fmt["unexpected_count"]) == (n_users, 1)
    assert fmt["partial_unexpected_list"] == ["=cmd"]
    assert f"user_id: 1 of {n_users:,} distinct values" in fmt["message"]
    assert "do not match" in fmt["message"] and "e.g. ['=cmd']" in fmt["message"]
    item_fmt = result_for(err.report, "expect_column_values_to_match_regex", "item_id")
    assert (item_fmt["unexpected_count"], item_fmt["partial_unexpected_list"]) == (1, ["has space"])
    items = result_for(err.report, "expect_column_unique_value_count_to_be_between", "item_id")
    assert (items["success"], items["observed_value"]) == (False, df["item_id"].nunique())
    users = result_for(err.report, "expect_column_unique_value_count_to_be_between", "user_id")
    assert (users["success"], users["observed_value"]) == (True, n_users)  # the unused id is no id
    assert sorted(r["column"] for r in err.report.errors) == ["item_id", "item_id", "user_id"]
    dtype = result_for(err.report, "dtype_in_kinds", "user_id")
    assert dtype["success"] is True
    assert dtype["observed_value"] == ("category of str" if encoded else "str")
    html = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "docs").rglob("*.html"))
    for asset in ("interactions", "interactions_user_id_distinct", "interactions_item_id_distinct"):
        assert asset in html


def test_null_ids_in_a_categorical_are_counted_in_rows() -> None:
    df = _as_categoricals(make_frame(id_kind="str"))
    df.loc[[1, 2, 3], "item_id"] = None
    err = failing_error(df)
    assert "item_id: 3 of 5,000 rows (0.06%) are null" in str(err)
    assert [r["column"] for r in err.report.errors] == ["item_id"]


def test_unknown_domain_is_rejected(tmp_path: Path) -> None:
    definition = json.loads(DEFAULT_SUITE_PATH.read_text(encoding="utf-8"))
    definition["expectations"][1]["meta"]["domain"] = "distinct"  # a table expectation
    bad = tmp_path / "suite.json"
    bad.write_text(json.dumps(definition), encoding="utf-8")
    with pytest.raises(ValueError, match="meta.domain 'distinct'.*only for a column expectation"):
        load_suite_definition(bad)


def test_ns_timestamps_and_non_utc_window_bounds_are_accepted() -> None:
    df = make_frame()
    df["event_ts"] = df["event_ts"].astype("datetime64[ns, UTC]")
    berlin = timezone(timedelta(hours=1))
    report = validate_interactions(
        df,
        window_start=WINDOW_START.astimezone(berlin),
        window_end=pd.Timestamp(WINDOW_END),
    )
    assert report.success
    assert report.window_start == "2026-10-25T00:00:00+00:00"


def test_optional_event_type_may_be_absent() -> None:
    report = run(make_frame().drop(columns=["event_type"]))
    assert report.success
    skipped = result_for(report, "expect_column_values_to_not_be_null", "event_type")
    assert skipped["skipped"] is True
    assert skipped["skip_reason"] == "optional column absent"
    assert skipped["success"] is None


def test_warning_severity_failure_is_reported_but_does_not_raise() -> None:
    df = make_frame()
    df.loc[:9, "event_type"] = None

    report = run(df)

    assert report.success is True
    assert report.gx_success is False  # GX itself saw a failing expectation
    assert [w["column"] for w in report.warnings] == ["event_type"]
    assert report.warnings[0]["unexpected_count"] == 10
    assert "event_type: 10 of 5,000 rows (0.20%) are null" in report.summary()


# --------------------------------------------------------------------------- failing


def test_empty_frame_fails_naming_emptiness() -> None:
    err = failing_error(make_frame().iloc[:0])

    assert isinstance(err, ValueError)
    assert "table is empty" in str(err)
    assert err.report.success is False
    assert err.report.n_rows == 0
    rows = result_for(err.report, "expect_table_row_count_to_be_between", None)
    assert rows["success"] is False and rows["observed_value"] == 0
    # emptiness is the only error: vacuous column checks must not add noise
    assert len(err.report.errors) == 1


@pytest.mark.parametrize("id_kind", ["int64", "str"])
def test_null_user_id_fails_naming_column_and_count(id_kind: str) -> None:
    df = make_frame(id_kind=id_kind)
    if id_kind == "int64":
        df["user_id"] = df["user_id"].astype("Int64")  # nullable ints, as read from Parquet
    df.loc[[3, 17, 4000], "user_id"] = None

    err = failing_error(df)

    assert "user_id: 3 of 5,000 rows (0.06%) are null" in str(err)
    res = result_for(err.report, "expect_column_values_to_not_be_null", "user_id")
    assert res["success"] is False
    assert res["unexpected_count"] == 3
    assert res["unexpected_percent"] == pytest.approx(0.06)
    assert [e["column"] for e in err.report.errors] == ["user_id"]


def test_events_outside_window_fail_with_count() -> None:
    df = make_frame()
    df.loc[:9, "event_ts"] = pd.Timestamp(WINDOW_END)  # end is exclusive -> "future" rows
    df.loc[10:11, "event_ts"] = pd.Timestamp(WINDOW_START) - pd.Timedelta(seconds=1)

    err = failing_error(df)

    assert "event_ts: 12 of 5,000 rows (0.24%) outside [2026-10-25, 2026-11-22)" in str(err)
    res = result_for(err.report, "expect_column_values_to_be_between", "event_ts")
    assert res["unexpected_count"] == 12
    assert res["unexpected_percent"] == pytest.approx(0.24)
    assert res["severity"] == "error"
    assert len(res["partial_unexpected_list"]) > 0


def test_window_start_is_inclusive() -> None:
    df = make_frame()
    df.loc[:4, "event_ts"] = pd.Timestamp(WINDOW_START)
    assert run(df).success


@pytest.mark.parametrize("missing", [["weight"], ["item_id", "event_ts"]])
def test_missing_required_columns_fail_naming_them(missing: list[str]) -> None:
    err = failing_error(make_frame().drop(columns=missing))

    assert f"missing required column(s): {', '.join(sorted(missing))}" in str(err)
    # a single clear error, not a cascade of metric failures for the absent columns
    assert len(err.report.errors) == 1
    for column in missing:
        skipped = [r for r in err.report.results if r["column"] == column]
        assert skipped
        assert all(r["skipped"] and r["skip_reason"] == "column missing" for r in skipped)


def test_non_positive_nan_and_infinite_weights_fail() -> None:
    df = make_frame()
    df.loc[0, "weight"] = 0.0
    df.loc[1, "weight"] = -1.0
    df.loc[2, "weight"] = np.inf
    df.loc[3, "weight"] = np.nan

    err = failing_error(df)

    message = str(err)
    expected = "weight: 3 of 5,000 rows (0.06%) outside (0, float32 max] (must be > 0 and finite)"
    assert expected in message
    assert "weight: 1 of 5,000 rows (0.02%) are null" in message
    weight_range = result_for(err.report, "expect_column_values_to_be_between", "weight")
    assert weight_range["unexpected_count"] == 3


def test_tz_naive_event_ts_fails_on_dtype() -> None:
    df = make_frame()
    df["event_ts"] = df["event_ts"].dt.tz_localize(None)

    err = failing_error(df)

    assert "event_ts: dtype datetime64[us] is not accepted" in str(err)
    assert "UTC" in str(err)
    window = result_for(err.report, "expect_column_values_to_be_between", "event_ts")
    assert window["skipped"] and window["skip_reason"] == "column has an unsupported dtype"
    assert len(err.report.errors) == 1


def test_float_ids_fail_on_dtype() -> None:
    df = make_frame()
    df["item_id"] = df["item_id"].astype("float64")
    err = failing_error(df)
    assert "item_id: dtype float64 is not accepted" in str(err)


def test_message_names_every_failing_check() -> None:
    df = make_frame()
    df.loc[0, "user_id"] = -1  # fine: ids may be any integer
    df["item_id"] = df["item_id"].astype("Int64")
    df.loc[5, "item_id"] = None
    df.loc[6, "event_ts"] = pd.Timestamp(WINDOW_END) + pd.Timedelta(days=3)
    df.loc[7, "weight"] = -2.0

    err = failing_error(df)

    assert len(err.report.errors) == 3
    for fragment in ("item_id: 1 of 5,000", "event_ts: 1 of 5,000", "weight: 1 of 5,000"):
        assert fragment in str(err)


# --------------------------------------------------------------------------- report file


def test_report_json_written_on_success(tmp_path: Path) -> None:
    path = tmp_path / "reports" / "validation.json"
    report = run(make_frame(), report_path=path)

    data = json.loads(path.read_text())
    assert data["success"] is True
    assert data["n_rows"] == N_ROWS
    assert data["suite_name"] == "interactions_snapshot"
    assert data["window_end"] == WINDOW_END.isoformat()
    assert len(data["results"]) == len(report.results)
    assert {"expectation_type", "column", "success", "severity", "unexpected_count"} <= set(
        data["results"][0]
    )
    assert data["summary"] == report.summary()


def test_report_json_written_before_raising(tmp_path: Path) -> None:
    df = make_frame()
    df.loc[:1, "user_id"] = -1
    df["user_id"] = df["user_id"].astype("Int64")
    df.loc[:1, "user_id"] = None
    path = tmp_path / "validation.json"

    err = failing_error(df, report_path=str(path))

    data = json.loads(path.read_text())
    assert data["success"] is False
    failed = [r for r in data["results"] if r["success"] is False]
    assert [(r["column"], r["unexpected_count"]) for r in failed] == [("user_id", 2)]
    assert failed[0]["message"] in str(err)


# --------------------------------------------------------------------------- inputs & suite


@pytest.mark.parametrize(
    ("start", "end", "match"),
    [
        (datetime(2026, 10, 25), WINDOW_END, "timezone-aware"),
        (WINDOW_END, WINDOW_START, "must be before"),
    ],
)
def test_invalid_window_is_rejected(start: datetime, end: datetime, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        validate_interactions(make_frame(10), window_start=start, window_end=end)


def test_suite_file_is_a_loadable_gx_suite_with_window_parameters() -> None:
    import great_expectations as gx

    definition = load_suite_definition()
    assert DEFAULT_SUITE_PATH == (
        PROJECT_ROOT / "include" / "config" / "gx" / "interactions_snapshot.json"
    )
    suite = gx.ExpectationSuite(
        name=definition["name"], expectations=definition["expectations"], meta=definition["meta"]
    )
    # ExpectationSuite silently drops invalid expectations; all must survive
    assert len(suite.expectations) == len(definition["expectations"])
    assert all(e["meta"]["severity"] in {"error", "warning"} for e in definition["expectations"])
    window = [
        e for e in definition["expectations"]
        if e["type"] == "expect_column_values_to_be_between" and e["kwargs"]["column"] == "event_ts"
    ]
    assert window[0]["kwargs"]["min_value"] == {"$PARAMETER": "window_start"}
    assert window[0]["kwargs"]["max_value"] == {"$PARAMETER": "window_end"}


def test_bad_suite_severity_is_rejected(tmp_path: Path) -> None:
    definition = json.loads(DEFAULT_SUITE_PATH.read_text())
    definition["expectations"][0]["meta"]["severity"] = "fatal"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(definition))
    with pytest.raises(ValueError, match="severity"):
        load_suite_definition(bad)


def test_module_import_does_not_import_great_expectations() -> None:
    code = (
        "import sys; import include.recsys.validation.suite; "
        "print('great_expectations' in sys.modules, 'pandas' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["False", "False"]
