"""Input-data validation of the interactions snapshot with Great Expectations 1.x.

The ``snapshot`` task writes a Parquet file of interactions (``user_id``, ``item_id``,
``event_ts``, ``weight`` and optionally ``event_type``). Before training, the frame is
validated against the suite kept as a reviewable file in
``include/config/gx/interactions_snapshot.json`` (a GX 1.x ``ExpectationSuite``
serialised as JSON). Each expectation carries ``meta.severity``: ``"error"`` fails the
run by raising :class:`DataValidationError`, ``"warning"`` is only reported. The
severity is mirrored onto GX's native ``severity`` field (error -> critical) so GX's own
result helpers agree.

How a run works (:func:`validate_interactions`):

1. Python pre-checks that GX cannot do well on pandas 3:

   * required / optional columns present (the missing-column *failure* itself is reported
     by GX's ``expect_table_columns_to_match_set`` in the suite; the pre-check only decides
     which column-level expectations can run at all, so a missing column yields one clear
     "missing required column(s): ..." message instead of a cascade of metric errors);
   * the dtype contract in the suite's ``meta.dtype_contract``. GX 1.24.1's
     ``expect_column_values_to_be_in_type_list`` cannot match pandas extension dtypes: with
     pandas 3.1 no ``type_list`` spelling matches ``datetime64[us, UTC]``, the pandas-3
     ``str`` dtype or nullable ``Int64`` (checked empirically), so dtypes are checked with
     ``pandas.api.types`` here and reported in the same result format.

   Column-level expectations on a missing column, on an absent optional column, or on a
   column that failed an error-severity dtype check are skipped (reported with
   ``skipped: true``) -- e.g. a tz-naive ``event_ts`` would otherwise make the window
   check raise "can't compare offset-naive and offset-aware datetimes".

2. The remaining expectations run through real GX objects: an ephemeral context
   (``gx.get_context(mode="ephemeral")`` with progress bars and analytics disabled), a
   pandas datasource, a dataframe asset, a whole-dataframe batch definition, a
   ``ValidationDefinition`` and a ``Checkpoint`` (``checkpoint.run(...)``) per batch: the
   rows, and for expectations with ``meta.domain: "distinct"`` the distinct values of their
   column (:data:`DISTINCT`); Data Docs are built once, after every batch.

Suite parameters: the training window bounds are GX suite parameters,
``{"$PARAMETER": "window_start"}`` / ``{"$PARAMETER": "window_end"}`` in the JSON, bound at
run time with ``checkpoint.run(expectation_parameters={"window_start": ...,
"window_end": ...})``. In GX 1.24.1 tz-aware ``datetime`` values work directly as
parameters for ``expect_column_values_to_be_between`` on a ``datetime64[*, UTC]`` column
(verified), so no derived epoch column is needed. The bounds are normalised to UTC
``datetime.datetime`` objects; naive bounds are rejected. They come from the Airflow data
interval -- this module never calls ``now()`` (the GX run identifier uses ``window_end``
as its run time too).

great_expectations is imported lazily inside functions: importing it takes seconds, and
this module is imported at DAG-parse time. GX's per-batch
md5 fingerprint of every cell (a Data Docs "batch marker" only) is skipped for frames above
:data:`GX_FINGERPRINT_MAX_BYTES`, as GX itself skips it above 1 GB.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

from include.recsys.core.fmt import fmt_num
from include.recsys.validation.gx import _DOMAINS, DISTINCT, ROWS, _run_gx
from include.recsys.validation.report import (
    _SEVERITIES,
    ERROR,
    _empty_result,
    _jsonable,
)
from include.recsys.validation.spark_frames import SPARK_KINDS, SparkColumn, is_spark

logger = logging.getLogger(__name__)


#: The reviewable suite definition used by default.
DEFAULT_SUITE_PATH: Path = (
    Path(__file__).resolve().parents[2] / "config" / "gx" / "interactions_snapshot.json"
)

_DTYPE_KIND_LABELS = {
    "integer": "integer (e.g. int64)",
    "string": "string (str/object of str)",
    "float": "float (e.g. float32)",
    "datetime_utc": "tz-aware UTC timestamp (datetime64[..., UTC])",
}

_MAX_SAMPLE_VALUES = 5

_FLOAT32_MAX = 3.4028234663852886e38  # the upper bound a float32 column's range check names


def load_suite_definition(path: str | Path | None = None) -> dict[str, Any]:
    """Load and sanity-check the suite definition JSON.

    Args:
        path: Suite file; defaults to :data:`DEFAULT_SUITE_PATH`.

    Returns:
        The parsed suite dict (``name``, ``expectations``, ``meta``, ...).

    Raises:
        ValueError: If the file is malformed (missing name/expectations, an expectation
            without ``type``/``kwargs``, or an unknown ``meta.severity``).
    """
    suite_path = Path(path) if path is not None else DEFAULT_SUITE_PATH
    with suite_path.open(encoding="utf-8") as fh:
        definition = json.load(fh)
    if not isinstance(definition, dict) or not definition.get("name"):
        raise ValueError(f"{suite_path}: suite definition needs a non-empty 'name'")
    expectations = definition.get("expectations")
    if not isinstance(expectations, list) or not expectations:
        raise ValueError(f"{suite_path}: suite definition needs a non-empty 'expectations' list")
    for i, exp in enumerate(expectations):
        if not (isinstance(exp, dict) and "type" in exp and isinstance(exp.get("kwargs"), dict)):
            raise ValueError(f"{suite_path}: expectation #{i} needs 'type' and a 'kwargs' dict")
        severity = (exp.get("meta") or {}).get("severity", ERROR)
        if severity not in _SEVERITIES:
            raise ValueError(
                f"{suite_path}: expectation #{i} ({exp['type']}) has meta.severity "
                f"{severity!r}; expected one of {_SEVERITIES}"
            )
        domain = (exp.get("meta") or {}).get("domain", ROWS)
        if domain not in _DOMAINS or (domain == DISTINCT and "column" not in exp["kwargs"]):
            raise ValueError(
                f"{suite_path}: expectation #{i} ({exp['type']}) has meta.domain {domain!r}; expected "
                f"one of {_DOMAINS} ({DISTINCT!r} only for a column expectation)"
            )
    for column, spec in _dtype_contract(definition).items():
        unknown = set(spec.get("kinds", [])) - set(_DTYPE_KIND_LABELS)
        if unknown or spec.get("severity", ERROR) not in _SEVERITIES:
            raise ValueError(f"{suite_path}: invalid dtype_contract entry for {column!r}: {spec}")
    return definition


def _dtype_contract(definition: dict[str, Any]) -> dict[str, dict[str, Any]]:
    contract = (definition.get("meta") or {}).get("dtype_contract") or {}
    return {k: v for k, v in contract.items() if not k.startswith("_")}


def _to_utc(value: Any, name: str) -> pd.Timestamp:
    import pandas as pd

    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a tz-aware datetime, got {value!r}") from exc
    if ts is pd.NaT:
        raise ValueError(f"{name} must be a tz-aware datetime, got NaT")
    if ts.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got naive {value!r}")
    return ts.tz_convert("UTC")


def _is_utc(tz: Any) -> bool:
    return str(tz) in {"UTC", "Etc/UTC", "tzutc()", "UTC+00:00", "Z", "Etc/Universal", "Universal"}


def _column(df: Any, name: str) -> Any:
    return SparkColumn(df, name) if is_spark(df) else df[name]


def _is_empty(df: Any) -> bool:
    return df.isEmpty() if is_spark(df) else len(df) == 0


def _dtype_matches(series: Any, kind: str) -> bool:
    import pandas as pd
    from pandas.api import types as ptypes

    if isinstance(series, SparkColumn):
        if kind not in SPARK_KINDS:
            raise ValueError(f"unknown dtype kind {kind!r}")
        return type(series.type).__name__ in SPARK_KINDS[kind]
    if isinstance(series.dtype, pd.CategoricalDtype):  # dictionary-encoded: the kind of its values
        series = series.dtype.categories
    dtype = series.dtype
    if kind == "integer":
        return ptypes.is_integer_dtype(dtype)
    if kind == "float":
        return ptypes.is_float_dtype(dtype)
    if kind == "string":
        # For object dtype this infers from the values (object of str -> True).
        return ptypes.is_string_dtype(series)
    if kind == "datetime_utc":
        return isinstance(dtype, pd.DatetimeTZDtype) and _is_utc(dtype.tz)
    raise ValueError(f"unknown dtype kind {kind!r}")


def _check_dtypes(
    df: pd.DataFrame, contract: dict[str, dict[str, Any]]
) -> tuple[list[dict[str, Any]], set[str]]:
    """Check the dtype contract; return results and columns with error-severity failures."""
    results: list[dict[str, Any]] = []
    bad_columns: set[str] = set()
    for column, spec in contract.items():
        if column not in df.columns:
            continue  # absence is reported by the column-set expectation / optional logic
        kinds = list(spec.get("kinds", []))
        severity = spec.get("severity", ERROR)
        res = _empty_result("dtype_in_kinds", column, severity, "dtype", {"kinds": kinds})
        col = _column(df, column)
        dtype_str = str(col.dtype)
        if dtype_str == "category":  # dictionary-encoded (read_snapshot's ids): name the values' dtype
            dtype_str = f"category of {col.dtype.categories.dtype}"
        res["observed_value"] = dtype_str
        res["success"] = any(_dtype_matches(col, kind) for kind in kinds)
        if not res["success"]:
            expected = " or ".join(_DTYPE_KIND_LABELS[k] for k in kinds)
            res["message"] = f"{column}: dtype {dtype_str} is not accepted (expected {expected})"
            if severity == ERROR:
                bad_columns.add(column)
        results.append(res)
    return results, bad_columns


def _fmt_bound(value: Any) -> str:
    """A bound as a failure message names it: a timestamp as its UTC date when it is midnight
    (else ISO), the float32 maximum by name, other floats with ``:g``. Not :func:`fmt_num`: these
    are thresholds and dates of a check, not figures of a table."""
    import pandas as pd

    if isinstance(value, datetime):
        ts = pd.Timestamp(value)
        ts = ts.tz_convert("UTC") if ts.tzinfo else ts
        return ts.strftime("%Y-%m-%d") if ts == ts.normalize() else ts.isoformat()
    if isinstance(value, float):
        if value >= _FLOAT32_MAX:
            return "float32 max"
        return f"{value:g}"
    return str(value)


def _interval(kwargs: dict[str, Any]) -> str:
    lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
    left = "(" if kwargs.get("strict_min") or lo is None else "["
    right = ")" if kwargs.get("strict_max") or hi is None else "]"
    return (
        f"{left}{'-inf' if lo is None else _fmt_bound(lo)}, "
        f"{'+inf' if hi is None else _fmt_bound(hi)}{right}"
    )


def _failure_message(res: dict[str, Any], gx_result: dict[str, Any], missing: list[str]) -> str:
    """Build the human-readable message for one failed GX expectation."""
    etype = res["expectation_type"]
    column = res["column"]
    kwargs = res["_raw_kwargs"]
    if res["exception"]:
        return f"{etype}({column or 'table'}) could not be evaluated: {res['exception']}"
    if etype == "expect_table_columns_to_match_set":
        details = (gx_result.get("details") or {}).get("mismatched") or {}
        names = details.get("missing") or missing
        if names:
            return f"missing required column(s): {', '.join(sorted(names))}"
        return f"unexpected column set: {res['observed_value']}"
    if etype == "expect_column_to_exist":
        return f"missing required column(s): {column}"
    if etype == "expect_table_row_count_to_be_between":
        if res["observed_value"] == 0:
            return "table is empty (0 rows)"
        return f"row count {res['observed_value']} outside {_interval(kwargs)}"
    count = res["unexpected_count"]
    total = res["element_count"]
    pct = fmt_num(res["unexpected_percent"], "pct")
    rule = res.get("_rule")
    suffix = f" ({rule})" if rule else ""
    unit = "distinct values" if res.get("_domain") == DISTINCT else "rows"
    if etype == "expect_column_values_to_not_be_null" and count is not None:
        return f"{column}: {count:,} of {total:,} {unit} ({pct}) are null"
    if etype == "expect_column_values_to_be_between" and count is not None:
        return f"{column}: {count:,} of {total:,} {unit} ({pct}) outside {_interval(kwargs)}{suffix}"
    sample = res.get("partial_unexpected_list")
    sample_txt = f", e.g. {sample}" if sample else ""
    if etype == "expect_column_values_to_be_in_set" and count is not None:
        allowed = sorted(str(v) for v in (kwargs.get("value_set") or []))
        return (
            f"{column}: {count:,} of {total:,} {unit} ({pct}) not in the allowed set "
            f"{allowed}{sample_txt}{suffix}"
        )
    if etype == "expect_column_values_to_match_regex" and count is not None:
        return (
            f"{column}: {count:,} of {total:,} {unit} ({pct}) do not match "
            f"{kwargs.get('regex')!r}{sample_txt}{suffix}"
        )
    if count is not None:
        return f"{etype}({column}): {count:,} of {total:,} {unit} ({pct}) unexpected{sample_txt}"
    if "min_value" in kwargs or "max_value" in kwargs:
        what = res.get("check") or etype
        return (
            f"{column or 'table'}: {what} observed {_fmt_bound(res['observed_value'])} "
            f"outside {_interval(kwargs)}{suffix}"
        )
    return f"{etype}({column or 'table'}) failed: observed {res['observed_value']!r}"


def _parameters_of(value: Any) -> set[str]:
    """Names of ``{"$PARAMETER": name}`` references inside an expectation's kwargs."""
    if isinstance(value, dict):
        if set(value) == {"$PARAMETER"}:
            return {str(value["$PARAMETER"])}
        return set().union(*(_parameters_of(v) for v in value.values())) if value else set()
    if isinstance(value, (list, tuple)):
        return set().union(*(_parameters_of(v) for v in value)) if value else set()
    return set()


def run_suite(
    df: pd.DataFrame,
    definition: dict[str, Any],
    *,
    parameters: dict[str, Any],
    run_name: str,
    run_time: datetime,
    asset_name: str = "frame",
    docs_dir: str | Path | None = None,
) -> tuple[list[dict[str, Any]], bool | None, str | None]:
    """Run a suite definition on ``df`` through a GX Checkpoint; return plain result dicts.

    ``df`` is a pandas DataFrame or a Spark DataFrame (backend=spark): the same suite then runs
    through GX's Spark datasource on the cluster, the dtype contract reads the Spark schema.

    Steps: the Python dtype contract (``meta.dtype_contract``); then every expectation whose
    column is present, whose column passed its dtype check, whose ``meta.requires_kind``
    matches the column's dtype and whose suite parameters are supplied runs through an
    ephemeral context (pandas datasource -> dataframe asset -> whole-dataframe batch
    definition -> ValidationDefinition -> Checkpoint, one per domain batch: see
    :data:`DISTINCT`); the others are reported as skipped with a reason.
    ``meta.skip_if_empty`` skips aggregate expectations on an empty frame (the row-count check
    already fails it).

    Returns:
        (results in order: dtype checks, then suite order), whether every
        ``CheckpointResult`` succeeded (None when GX did not run), and the Data Docs
        ``index.html`` path (None without ``docs_dir``).
    """
    meta: dict[str, Any] = definition.get("meta") or {}
    present = {str(c) for c in df.columns}
    missing_required = [c for c in meta.get("required_columns") or [] if c not in present]

    # 1) Python pre-checks: dtype contract; decide which column expectations can run.
    results, bad_dtype_columns = _check_dtypes(df, _dtype_contract(definition))
    skip_reason = _plan_expectations(df, definition, parameters, bad_dtype_columns)
    # 2) GX: ephemeral context -> datasource -> asset -> batch definition -> VD -> checkpoint.
    gx_results, gx_success, docs_index = _run_gx(
        df, definition, skip_reason, parameters=parameters, run_name=run_name, run_time=run_time,
        asset_name=asset_name, docs_dir=docs_dir,
    )
    # 3) Convert to plain result dicts in suite order, with messages for failures.
    results += _to_results(definition, skip_reason, gx_results, missing_required)
    return results, gx_success, docs_index


def _plan_expectations(
    df: pd.DataFrame, definition: dict[str, Any], parameters: dict[str, Any], bad_dtype_columns: set[str]
) -> dict[int, str]:
    """Suite index -> why that expectation is skipped; the others run through GX."""
    meta: dict[str, Any] = definition.get("meta") or {}
    optional = set(meta.get("optional_columns") or [])
    present = {str(c) for c in df.columns}
    skip_reason: dict[int, str] = {}
    for i, exp in enumerate(definition["expectations"]):
        exp_meta = exp.get("meta") or {}
        column = exp["kwargs"].get("column")
        absent = sorted(p for p in _parameters_of(exp["kwargs"]) if parameters.get(p) is None)
        if column is not None and column not in present:
            optional_column = column in optional or exp_meta.get("optional_column")
            skip_reason[i] = "optional column absent" if optional_column else "column missing"
        elif column is not None and column in bad_dtype_columns:
            skip_reason[i] = "column has an unsupported dtype"
        elif (
            column is not None
            and exp_meta.get("requires_kind")
            and not _dtype_matches(_column(df, column), exp_meta["requires_kind"])
        ):
            skip_reason[i] = f"not applicable: {column} is not of kind {exp_meta['requires_kind']}"
        elif exp_meta.get("skip_if_empty") and _is_empty(df):
            skip_reason[i] = "table is empty"
        elif absent:
            skip_reason[i] = f"suite parameter(s) not supplied: {', '.join(absent)}"
    return skip_reason


def _to_results(
    definition: dict[str, Any], skip_reason: dict[int, str], gx_results: dict[int, Any], missing_required: list[str]
) -> list[dict[str, Any]]:
    """One plain result dict per expectation, in suite order, with a message for each failure."""
    results = []
    for i, exp in enumerate(definition["expectations"]):
        exp_meta = exp.get("meta") or {}
        res = _empty_result(
            exp["type"], exp["kwargs"].get("column"), exp_meta.get("severity", ERROR),
            exp_meta.get("check"), exp["kwargs"],
        )
        if i in skip_reason:
            res["skipped"] = True
            res["skip_reason"] = skip_reason[i]
        else:
            _fill_from_gx(res, gx_results[i], exp_meta, missing_required)
        results.append(res)
    return results


def _fill_from_gx(res: dict[str, Any], exp_result: Any, exp_meta: dict[str, Any], missing_required: list[str]) -> None:
    """Copy what GX observed into ``res`` (JSON-safe; at most a few sample values)."""
    raw: dict[str, Any] = dict(exp_result.result or {})
    info = exp_result.exception_info or {}
    evaluated_kwargs = dict(exp_result.expectation_config.kwargs)
    evaluated_kwargs.pop("batch_id", None)
    res["kwargs"] = _jsonable(evaluated_kwargs)
    res["success"] = bool(exp_result.success)
    res["observed_value"] = _jsonable(raw.get("observed_value"))
    res["element_count"] = raw.get("element_count")
    res["unexpected_count"] = raw.get("unexpected_count")
    if res["unexpected_count"] is not None and res["element_count"]:
        res["unexpected_percent"] = 100.0 * res["unexpected_count"] / res["element_count"]
    elif res["unexpected_count"] is not None:
        res["unexpected_percent"] = 0.0
    if raw.get("partial_unexpected_list"):
        res["partial_unexpected_list"] = _jsonable(
            raw["partial_unexpected_list"][:_MAX_SAMPLE_VALUES]
        )
    if info.get("raised_exception"):
        res["exception"] = info.get("exception_message") or "unknown GX exception"
    if not res["success"]:
        res["_raw_kwargs"] = evaluated_kwargs
        res["_rule"] = exp_meta.get("rule")
        res["_domain"] = exp_meta.get("domain", ROWS)
        res["message"] = _failure_message(res, raw, missing_required)
        del res["_raw_kwargs"], res["_rule"], res["_domain"]
