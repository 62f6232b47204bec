"""The input check of a run: the interactions snapshot against the ``interactions_snapshot``
suite for the run's training window (the suite and how it runs: :mod:`.suite`)."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
from include.recsys.validation.report import ERROR, ValidationReport, finish
from include.recsys.validation.suite import _to_utc, load_suite_definition, run_suite

logger = logging.getLogger(__name__)


def validate_interactions(
    df: pd.DataFrame,
    *,
    window_start: datetime,
    window_end: datetime,
    report_path: str | Path | None = None,
    suite_path: str | Path | None = None,
    parameters: dict[str, Any] | None = None,
    extra_results: list[dict[str, Any]] | None = None,
    notes: list[str] | None = None,
    docs_dir: str | Path | None = None,
) -> ValidationReport:
    """Validate an interactions frame against the ``interactions_snapshot`` suite.

    Args:
        df: Interactions with ``user_id``, ``item_id`` (int64 or string), ``event_ts``
            (``datetime64[*, UTC]``), ``weight`` (float, > 0) and optional ``event_type``.
        window_start: Inclusive start of the training window (tz-aware; converted to UTC).
        window_end: Exclusive end of the training window (tz-aware; converted to UTC).
        report_path: If given, the report is written there as JSON (also on failure,
            before :class:`DataValidationError` is raised) and as HTML next to it.
        suite_path: Alternative suite definition file (defaults to
            :data:`DEFAULT_SUITE_PATH`).
        parameters: Suite parameter values overriding the suite's
            ``meta.parameter_defaults`` (``event_types``, ``weight_max``, ``min_users``,
            ``min_items``, ``freshness_lag_days``). ``freshness_min`` is derived:
            ``window_end - (1 + freshness_lag_days) days`` (the newest day must have events).
        extra_results: Results of checks computed outside GX (see :func:`check_result`);
            they count towards success like the suite's.
        notes: Lines added to the report as notes (e.g. "no baseline").
        docs_dir: Folder for the GX Data Docs site of this run (built by the checkpoint).

    Returns:
        The :class:`ValidationReport` (``success`` is ``True``; warnings may be present).

    Raises:
        DataValidationError: If any error-severity check fails; the message names every
            failing check and by how much, and ``.report`` holds the full report.
        ValueError: If the window bounds are naive/invalid or the suite file is malformed.
    """
    import pandas as pd

    started = time.perf_counter()
    ws = _to_utc(window_start, "window_start")
    we = _to_utc(window_end, "window_end")
    if ws >= we:
        raise ValueError(
            f"window_start ({ws.isoformat()}) must be before window_end ({we.isoformat()})"
        )
    spark = type(df).__module__.startswith("pyspark.")
    if not (spark or isinstance(df, pd.DataFrame)):
        raise TypeError(f"df must be a pandas or Spark DataFrame, got {type(df).__name__}")

    definition = load_suite_definition(suite_path)
    suite_name: str = definition["name"]
    meta: dict[str, Any] = definition.get("meta") or {}
    results, gx_success, docs_index = run_suite(
        df,
        definition,
        parameters=_suite_parameters(meta, parameters, ws, we),
        run_name=f"{suite_name}__{ws.isoformat()}__{we.isoformat()}",
        run_time=we.to_pydatetime(),
        asset_name="interactions",
        docs_dir=docs_dir,
    )
    results += list(extra_results or [])
    report = ValidationReport(
        success=not any(r["success"] is False and r["severity"] == ERROR for r in results),
        n_rows=df.count() if spark else len(df),
        results=results,
        suite_name=suite_name,
        window_start=ws.isoformat(),
        window_end=we.isoformat(),
        gx_success=gx_success,
        duration_s=time.perf_counter() - started,
        notes=[*(notes or []), *_unknown_columns(df, meta)],
        data_docs=docs_index,
    )
    return finish(report, report_path=report_path)


def _suite_parameters(
    meta: dict[str, Any], parameters: dict[str, Any] | None, ws: pd.Timestamp, we: pd.Timestamp
) -> dict[str, Any]:
    """The suite's parameter defaults, overridden by ``parameters``, plus the window bounds and
    ``freshness_min`` (the newest day, ``freshness_lag_days`` before the window end, must have events)."""
    import pandas as pd

    params: dict[str, Any] = {**(meta.get("parameter_defaults") or {}), **(parameters or {})}
    lag = int(params.pop("freshness_lag_days", 0) or 0)
    params["window_start"] = ws.to_pydatetime()
    params["window_end"] = we.to_pydatetime()
    params["freshness_min"] = (we - pd.Timedelta(days=1 + lag)).to_pydatetime()
    return params


def _unknown_columns(df: pd.DataFrame, meta: dict[str, Any]) -> list[str]:
    """A note naming the columns the suite does not know (allowed, never used), if any."""
    known = set(meta.get("required_columns") or []) | set(meta.get("optional_columns") or [])
    extra_columns = sorted(str(c) for c in df.columns if str(c) not in known)
    return [f"unknown column(s) {extra_columns} present (allowed; not used)"] if extra_columns else []
