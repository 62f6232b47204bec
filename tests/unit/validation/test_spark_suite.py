"""The input GX suite on a Spark DataFrame (backend=spark, issue 20): GX's Spark datasource runs
the same expectations on the cluster and reaches the same verdict, check by check, as the pandas
route on the same snapshot -- for a clean snapshot and for a broken one (nulls, events outside
the window, non-positive weights, a naive timestamp column)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from include.recsys.backends.spark import session
from include.recsys.config.settings import load_config
from include.recsys.errors import DataValidationError
from tests.unit.validation.test_suite import WINDOW_END, WINDOW_START, make_frame, run


@pytest.fixture(scope="module")
def spark():
    s = session(load_config({"spark_master": "local[1]"}))
    yield s
    s.stop()


def _verdicts(report) -> list[tuple]:
    return [(r["expectation_type"], r["column"], r["success"]) for r in report.results]


def _both(spark, tmp_path, df: pd.DataFrame):
    path = tmp_path / "snapshot.parquet"
    df.to_parquet(path)
    frame = spark.read.parquet(str(path))
    out = []
    for data in (df, frame):
        try:
            out.append(run(data))
        except DataValidationError as exc:
            out.append(exc.report)
    return out


def test_clean_snapshot_passes_on_spark_like_on_pandas(spark, tmp_path) -> None:
    pandas_report, spark_report = _both(spark, tmp_path, make_frame(id_kind="str"))
    assert pandas_report.success and spark_report.success
    assert _verdicts(spark_report) == _verdicts(pandas_report)
    assert spark_report.n_rows == pandas_report.n_rows == len(make_frame())
    assert spark_report.gx_success is True


def test_broken_snapshot_fails_on_spark_with_the_same_checks(spark, tmp_path) -> None:
    df = make_frame(id_kind="str")
    df.loc[:4, "user_id"] = None
    df.loc[5:9, "event_ts"] = pd.Timestamp(WINDOW_END) + pd.Timedelta(days=2)
    df.loc[10:14, "weight"] = np.float32(-1.0)
    df.loc[20:22, "item_id"] = "bad id"  # one bad value: the format check runs on distinct values
    pandas_report, spark_report = _both(spark, tmp_path, df)
    assert not pandas_report.success and not spark_report.success
    assert _verdicts(spark_report) == _verdicts(pandas_report)
    failed = {(r["expectation_type"], r["column"]) for r in spark_report.results if r["success"] is False}
    assert {c for _, c in failed} >= {"user_id", "event_ts", "weight"}, failed
    for report in (pandas_report, spark_report):
        fmt = next(r for r in report.results
                   if r["expectation_type"] == "expect_column_values_to_match_regex" and r["column"] == "item_id")
        assert (fmt["success"], fmt["unexpected_count"], fmt["element_count"]) == (False, 1, df["item_id"].nunique())


def test_naive_timestamps_fail_the_dtype_contract_on_spark(spark, tmp_path) -> None:
    df = make_frame()
    df["event_ts"] = df["event_ts"].dt.tz_localize(None)
    path = tmp_path / "naive.parquet"
    df.to_parquet(path)
    frame = spark.read.parquet(str(path)).selectExpr(
        "user_id", "item_id", "CAST(event_ts AS TIMESTAMP_NTZ) AS event_ts", "event_type", "weight"
    )
    with pytest.raises(DataValidationError, match="event_ts"):
        run(frame)
    assert WINDOW_START < WINDOW_END
