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
   ``ValidationDefinition`` and a ``Checkpoint`` (``checkpoint.run(...)``).

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
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DEFAULT_SUITE_PATH",
    "DataValidationError",
    "ValidationReport",
    "load_suite_definition",
    "check_result",
    "run_suite",
    "validate_interactions",
    "write_html",
]

logger = logging.getLogger(__name__)

#: The reviewable suite definition used by default.
DEFAULT_SUITE_PATH: Path = (
    Path(__file__).resolve().parents[1] / "config" / "gx" / "interactions_snapshot.json"
)

ERROR = "error"
WARNING = "warning"
_SEVERITIES = (ERROR, WARNING)
# meta.severity -> GX native FailureSeverity value
_GX_SEVERITY = {ERROR: "critical", WARNING: "warning"}

_DTYPE_KIND_LABELS = {
    "integer": "integer (e.g. int64)",
    "string": "string (str/object of str)",
    "float": "float (e.g. float32)",
    "datetime_utc": "tz-aware UTC timestamp (datetime64[..., UTC])",
}

_MAX_SAMPLE_VALUES = 5
_FLOAT32_MAX = 3.4028234663852886e38


class DataValidationError(ValueError):
    """Raised when at least one error-severity check of the input data fails.

    Attributes:
        message: Human-readable description naming every failing error-severity check.
        report: The full :class:`ValidationReport` of the run.
    """

    def __init__(self, message: str, report: ValidationReport) -> None:
        super().__init__(message)
        self.message = message
        self.report = report


@dataclass
class ValidationReport:
    """Outcome of validating one interactions frame.

    Attributes:
        success: ``True`` when no error-severity check failed (warnings do not count).
        n_rows: Number of rows in the validated frame.
        results: One dict per check, in suite order (dtype checks first). Keys:
            ``expectation_type``, ``column``, ``check``, ``severity``, ``success``
            (``None`` when skipped), ``skipped``, ``skip_reason``, ``observed_value``,
            ``element_count``, ``unexpected_count``, ``unexpected_percent`` (percent of
            *all* rows), ``partial_unexpected_list``, ``kwargs`` (with suite parameters
            resolved), ``exception`` and ``message`` (set when the check failed).
        suite_name: Name of the expectation suite.
        window_start: ISO timestamp of the inclusive window start (UTC).
        window_end: ISO timestamp of the exclusive window end (UTC).
        gx_success: Raw ``CheckpointResult.success`` (also ``False`` on warnings).
        duration_s: Wall time of the validation in seconds.
    """

    success: bool
    n_rows: int
    results: list[dict[str, Any]] = field(default_factory=list)
    suite_name: str = ""
    window_start: str | None = None
    window_end: str | None = None
    gx_success: bool | None = None
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    data_docs: str | None = None

    @property
    def failures(self) -> list[dict[str, Any]]:
        """All failed checks (any severity)."""
        return [r for r in self.results if r.get("success") is False]

    @property
    def errors(self) -> list[dict[str, Any]]:
        """Failed error-severity checks."""
        return [r for r in self.failures if r.get("severity") == ERROR]

    @property
    def warnings(self) -> list[dict[str, Any]]:
        """Failed warning-severity checks."""
        return [r for r in self.failures if r.get("severity") == WARNING]

    def counts(self) -> dict[str, int]:
        """``passed`` / ``failed`` (error severity) / ``warned`` / ``skipped`` check counts."""
        return {
            "checks": len(self.results),
            "passed": sum(1 for r in self.results if r.get("success") is True),
            "failed": len(self.errors),
            "warned": len(self.warnings),
            "skipped": sum(1 for r in self.results if r.get("skipped")),
        }

    def summary(self) -> str:
        """Return a multi-line human-readable summary of the run."""
        n_skipped = sum(1 for r in self.results if r.get("skipped"))
        n_passed = sum(1 for r in self.results if r.get("success") is True)
        head = (
            f"{self.suite_name or 'validation'}: {'PASSED' if self.success else 'FAILED'} - "
            f"{self.n_rows:,} rows, window [{self.window_start}, {self.window_end}), "
            f"{len(self.results)} checks: {n_passed} passed, {len(self.errors)} error(s), "
            f"{len(self.warnings)} warning(s), {n_skipped} skipped ({self.duration_s:.2f}s)"
        )
        lines = [head]
        lines += [f"  [error] {r['message']}" for r in self.errors]
        lines += [f"  [warning] {r['message']}" for r in self.warnings]
        lines += [f"  [note] {n}" for n in self.notes]
        if self.data_docs:
            lines.append(f"  Data Docs: {self.data_docs}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of the report."""
        data = asdict(self)
        data["summary"] = self.summary()
        data["counts"] = self.counts()
        return _jsonable(data)

    def write_json(self, path: str | Path) -> Path:
        """Write the report as JSON to ``path`` (atomically; parents are created)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        os.replace(tmp, target)
        return target


# --------------------------------------------------------------------------- suite file


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
    for column, spec in _dtype_contract(definition).items():
        unknown = set(spec.get("kinds", [])) - set(_DTYPE_KIND_LABELS)
        if unknown or spec.get("severity", ERROR) not in _SEVERITIES:
            raise ValueError(f"{suite_path}: invalid dtype_contract entry for {column!r}: {spec}")
    return definition


def _dtype_contract(definition: dict[str, Any]) -> dict[str, dict[str, Any]]:
    contract = (definition.get("meta") or {}).get("dtype_contract") or {}
    return {k: v for k, v in contract.items() if not k.startswith("_")}


def _build_gx_suite(name: str, expectations: list[dict[str, Any]], meta: dict[str, Any]) -> Any:
    """Build a GX ``ExpectationSuite`` from expectation dicts, failing loudly on bad configs.

    ``ExpectationSuite(expectations=[...])`` only *logs* invalid expectations and drops
    them, which would silently weaken the contract, so each one is built eagerly here.
    """
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    built = []
    for exp in expectations:
        exp_meta = dict(exp.get("meta") or {})
        config = ExpectationConfiguration(
            type=exp["type"],
            kwargs=dict(exp["kwargs"]),
            meta=exp_meta,
            notes=exp.get("notes"),
            description=exp.get("description"),
            severity=_GX_SEVERITY[exp_meta.get("severity", ERROR)],
        )
        built.append(config.to_domain_obj())  # raises InvalidExpectationConfigurationError
    return gx.ExpectationSuite(name=name, expectations=built, meta=dict(meta))


# --------------------------------------------------------------------------- helpers


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


def _fmt_ts(ts: pd.Timestamp) -> str:
    """Date only when the bound is midnight UTC, else full ISO format."""
    return ts.strftime("%Y-%m-%d") if ts == ts.normalize() else ts.isoformat()


def _fmt_pct(pct: float | None) -> str:
    if pct is None:
        return "n/a"
    if pct == 0 or pct >= 0.01:
        return f"{pct:.2f}%"
    return f"{pct:.2g}%"


def _fmt_bound(value: Any) -> str:
    import pandas as pd

    if isinstance(value, datetime):
        ts = pd.Timestamp(value)
        return _fmt_ts(ts.tz_convert("UTC") if ts.tzinfo else ts)
    if isinstance(value, float):
        if value >= _FLOAT32_MAX:
            return "float32 max"
        return f"{value:g}"
    return str(value)


def _jsonable(value: Any) -> Any:
    """Convert GX / numpy / pandas values into plain JSON-compatible values."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        # pd.NaT is a datetime subclass whose isoformat() is "NaT"
        text = value.isoformat()
        return None if text == "NaT" else text
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        try:
            return _jsonable(value.item())
        except (TypeError, ValueError):
            pass
    try:
        import pandas as pd

        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def _is_utc(tz: Any) -> bool:
    return str(tz) in {"UTC", "Etc/UTC", "tzutc()", "UTC+00:00", "Z", "Etc/Universal", "Universal"}


def _dtype_matches(series: pd.Series, kind: str) -> bool:
    import pandas as pd
    from pandas.api import types as ptypes

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


def _empty_result(
    expectation_type: str,
    column: str | None,
    severity: str,
    check: str | None,
    kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "expectation_type": expectation_type,
        "column": column,
        "check": check,
        "severity": severity,
        "success": None,
        "skipped": False,
        "skip_reason": None,
        "observed_value": None,
        "element_count": None,
        "unexpected_count": None,
        "unexpected_percent": None,
        "partial_unexpected_list": None,
        "kwargs": _jsonable(kwargs or {}),
        "exception": None,
        "message": None,
    }


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
        dtype_str = str(df[column].dtype)
        res["observed_value"] = dtype_str
        res["success"] = any(_dtype_matches(df[column], kind) for kind in kinds)
        if not res["success"]:
            expected = " or ".join(_DTYPE_KIND_LABELS[k] for k in kinds)
            res["message"] = f"{column}: dtype {dtype_str} is not accepted (expected {expected})"
            if severity == ERROR:
                bad_columns.add(column)
        results.append(res)
    return results, bad_columns


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
    pct = _fmt_pct(res["unexpected_percent"])
    rule = res.get("_rule")
    suffix = f" ({rule})" if rule else ""
    if etype == "expect_column_values_to_not_be_null" and count is not None:
        return f"{column}: {count:,} of {total:,} rows ({pct}) are null"
    if etype == "expect_column_values_to_be_between" and count is not None:
        return f"{column}: {count:,} of {total:,} rows ({pct}) outside {_interval(kwargs)}{suffix}"
    sample = res.get("partial_unexpected_list")
    sample_txt = f", e.g. {sample}" if sample else ""
    if etype == "expect_column_values_to_be_in_set" and count is not None:
        allowed = sorted(str(v) for v in (kwargs.get("value_set") or []))
        return (
            f"{column}: {count:,} of {total:,} rows ({pct}) not in the allowed set "
            f"{allowed}{sample_txt}{suffix}"
        )
    if etype == "expect_column_values_to_match_regex" and count is not None:
        return (
            f"{column}: {count:,} of {total:,} rows ({pct}) do not match "
            f"{kwargs.get('regex')!r}{sample_txt}{suffix}"
        )
    if count is not None:
        return f"{etype}({column}): {count:,} of {total:,} rows ({pct}) unexpected{sample_txt}"
    if "min_value" in kwargs or "max_value" in kwargs:
        what = res.get("check") or etype
        return (
            f"{column or 'table'}: {what} observed {_fmt_bound(res['observed_value'])} "
            f"outside {_interval(kwargs)}{suffix}"
        )
    return f"{etype}({column or 'table'}) failed: observed {res['observed_value']!r}"


def _quiet_gx() -> None:
    """Analytics off; the ``great_expectations`` logger at WARNING unless configured explicitly.

    GX logs hundreds of INFO lines on import (docs-decorator registration, datasource
    loading), so this must run before the first import.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    gx_logger = logging.getLogger("great_expectations")
    if gx_logger.level == logging.NOTSET:
        gx_logger.setLevel(logging.WARNING)


def _gx_context(docs_dir: str | Path | None = None) -> Any:
    """Create a quiet ephemeral GX context (no progress bars, no analytics).

    GX logs hundreds of INFO lines on import (docs-decorator registration, datasource
    loading); unless the ``great_expectations`` logger was configured explicitly, it is
    raised to WARNING so Airflow task logs stay readable.

    With ``docs_dir`` the context gets one Data Docs site (``local``): a plain folder of
    static HTML (``index.html``) that the checkpoint's ``UpdateDataDocsAction`` fills.
    """
    _quiet_gx()
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {}
    if docs_dir is not None:
        sites = {
            "local": {
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(Path(docs_dir).resolve()),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        data_docs_sites=sites,
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _parameters_of(value: Any) -> set[str]:
    """Names of ``{"$PARAMETER": name}`` references inside an expectation's kwargs."""
    if isinstance(value, dict):
        if set(value) == {"$PARAMETER"}:
            return {str(value["$PARAMETER"])}
        return set().union(*(_parameters_of(v) for v in value.values())) if value else set()
    if isinstance(value, (list, tuple)):
        return set().union(*(_parameters_of(v) for v in value)) if value else set()
    return set()


def _gx_frame(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` as GX should see it: narrow numpy ints/floats widened to int64/float64.

    GX's pandas ``column_values.between`` is vectorised only for ``int``/``float`` (64-bit)
    dtypes and calls a Python function per row otherwise: float32 weights or scores took ~20 s
    per 5M rows. Widening is exact, so every result is the same; the dtype contract was
    already checked on the original frame.
    """
    import numpy as np

    wide = {
        c: df[c].astype(np.float64 if df[c].dtype.kind == "f" else np.int64)
        for c in df.columns
        if isinstance(df[c].dtype, np.dtype) and df[c].dtype.kind in "fiu"
        and df[c].dtype not in (np.dtype(np.float64), np.dtype(np.int64))
    }
    return df.assign(**wide) if wide else df


#: GX's pandas engine fingerprints every batch whose shallow memory use is below its
#: ``HASH_THRESHOLD`` (1e9 bytes): md5 over ``pd.util.hash_pandas_object`` of every cell. The
#: fingerprint is only a batch marker (shown under "Batch Markers" in Data Docs, used by no
#: expectation), yet on the 17M-row snapshot (0.96 GB, just under GX's limit) it costs ~4.5
#: CPU seconds -- as much as all expectations together. GX itself skips it above 1e9 bytes;
#: here the limit is lowered so only small frames (tests, small presets) keep a fingerprint.
GX_FINGERPRINT_MAX_BYTES = 64 * 2**20


@contextmanager
def _gx_fingerprint_limit(max_bytes: float) -> Any:
    """Temporarily lower GX's pandas batch-fingerprint threshold to ``max_bytes``."""
    from great_expectations.execution_engine import pandas_execution_engine as engine

    previous = getattr(engine, "HASH_THRESHOLD", None)
    if previous is None:  # a GX version without the threshold: nothing to lower
        yield
        return
    engine.HASH_THRESHOLD = min(previous, max_bytes)
    try:
        yield
    finally:
        engine.HASH_THRESHOLD = previous


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

    Steps: the Python dtype contract (``meta.dtype_contract``); then every expectation whose
    column is present, whose column passed its dtype check, whose ``meta.requires_kind``
    matches the column's dtype and whose suite parameters are supplied runs through an
    ephemeral context (pandas datasource -> dataframe asset -> whole-dataframe batch
    definition -> ValidationDefinition -> Checkpoint); the others are reported as skipped
    with a reason. ``meta.skip_if_empty`` skips aggregate expectations on an empty frame
    (the row-count check already fails it).

    Returns:
        (results in order: dtype checks, then suite order), ``CheckpointResult.success``
        (None when GX did not run), and the Data Docs ``index.html`` path (None without
        ``docs_dir``).
    """
    meta: dict[str, Any] = definition.get("meta") or {}
    suite_name: str = definition["name"]
    required = list(meta.get("required_columns") or [])
    optional = set(meta.get("optional_columns") or [])
    present = {str(c) for c in df.columns}
    missing_required = [c for c in required if c not in present]

    # 1) Python pre-checks: dtype contract; decide which column expectations can run.
    results, bad_dtype_columns = _check_dtypes(df, _dtype_contract(definition))

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
            and not _dtype_matches(df[column], exp_meta["requires_kind"])
        ):
            skip_reason[i] = f"not applicable: {column} is not of kind {exp_meta['requires_kind']}"
        elif exp_meta.get("skip_if_empty") and len(df) == 0:
            skip_reason[i] = "table is empty"
        elif absent:
            skip_reason[i] = f"suite parameter(s) not supplied: {', '.join(absent)}"
    to_run = [
        {**exp, "meta": {**(exp.get("meta") or {}), "_idx": i}}
        for i, exp in enumerate(definition["expectations"])
        if i not in skip_reason
    ]

    # 2) GX: ephemeral context -> datasource -> asset -> batch definition -> VD -> checkpoint.
    gx_results: dict[int, Any] = {}
    gx_success: bool | None = None
    docs_index: str | None = None
    if to_run:
        context = _gx_context(docs_dir)  # first: quietens GX logging before its (slow) import

        import great_expectations as gx
        from great_expectations.checkpoint import UpdateDataDocsAction
        from great_expectations.core.run_identifier import RunIdentifier

        batch_definition = (
            context.data_sources.add_pandas(name="recsys_pandas")
            .add_dataframe_asset(name=asset_name)
            .add_batch_definition_whole_dataframe(name="whole_frame")
        )
        suite = context.suites.add(_build_gx_suite(suite_name, to_run, meta))
        if len(suite.expectations) != len(to_run):
            raise RuntimeError(
                f"GX built {len(suite.expectations)} of {len(to_run)} expectations "
                f"of suite {suite_name}"
            )
        validation_definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{suite_name}_vd", data=batch_definition, suite=suite)
        )
        actions = [] if docs_dir is None else [UpdateDataDocsAction(name="data_docs", site_names=["local"])]
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"{suite_name}_checkpoint",
                validation_definitions=[validation_definition],
                actions=actions,
                result_format={"result_format": "BASIC"},
            )
        )
        with _gx_fingerprint_limit(GX_FINGERPRINT_MAX_BYTES):
            checkpoint_result = checkpoint.run(
                batch_parameters={"dataframe": _gx_frame(df)},
                expectation_parameters=parameters,
                run_id=RunIdentifier(run_name=run_name, run_time=run_time),
            )
        gx_success = bool(checkpoint_result.success)
        for suite_result in checkpoint_result.run_results.values():
            for exp_result in suite_result.results:
                gx_results[int(exp_result.expectation_config.meta["_idx"])] = exp_result
        if len(gx_results) != len(to_run):
            raise RuntimeError(
                f"GX returned {len(gx_results)} results for {len(to_run)} expectations"
            )
        if docs_dir is not None and (Path(docs_dir) / "index.html").exists():
            docs_index = str((Path(docs_dir) / "index.html").resolve())

    # 3) Convert to plain result dicts in suite order, with messages for failures.
    for i, exp in enumerate(definition["expectations"]):
        exp_meta = exp.get("meta") or {}
        res = _empty_result(
            exp["type"], exp["kwargs"].get("column"), exp_meta.get("severity", ERROR),
            exp_meta.get("check"), exp["kwargs"],
        )
        if i in skip_reason:
            res["skipped"] = True
            res["skip_reason"] = skip_reason[i]
            results.append(res)
            continue
        exp_result = gx_results[i]
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
            res["message"] = _failure_message(res, raw, missing_required)
            del res["_raw_kwargs"], res["_rule"]
        results.append(res)
    return results, gx_success, docs_index


def check_result(
    check: str,
    *,
    severity: str,
    success: bool,
    observed: Any,
    bounds: dict[str, Any],
    message: str | None = None,
    column: str | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """A result dict, in the report's format, for a check computed in Python (pandas/numpy).

    Used for checks GX has no vectorised expectation for (snapshot statistics, drift against
    history, set-based checks of the top-N table). ``message`` is required when it failed.
    """
    if severity not in _SEVERITIES:
        raise ValueError(f"severity must be one of {_SEVERITIES}, got {severity!r}")
    res = _empty_result(f"recsys.{check}", column, severity, check, bounds)
    res["success"] = bool(success)
    res["observed_value"] = _jsonable(observed)
    if not success:
        res["message"] = message or f"{check}: observed {observed!r} outside {bounds}"
    if note:
        res["note"] = note
    return res


def write_html(report: ValidationReport, path: str | Path) -> Path:
    """One static HTML page with every check of the report (GX and Python ones alike)."""
    from html import escape

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in report.results:
        status = "skipped" if r.get("skipped") else (
            "passed" if r.get("success") else ("FAILED" if r.get("severity") == ERROR else "warning")
        )
        detail = r.get("message") or r.get("note") or r.get("skip_reason") or ""
        rows.append(
            "<tr class='{}'><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>".format(
                escape(status), escape(status), escape(str(r.get("check") or r["expectation_type"])),
                escape(str(r.get("column") or "")), escape(str(r.get("severity"))),
                escape(json.dumps(r.get("observed_value"), default=str)[:200]), escape(str(detail)),
            )
        )
    notes = "".join(f"<li>{escape(n)}</li>" for n in report.notes)
    docs = (
        f"<p>Great Expectations Data Docs: <a href='{escape(Path(report.data_docs).as_uri())}'>"
        f"{escape(report.data_docs)}</a></p>" if report.data_docs else ""
    )
    html = (
        "<!doctype html><meta charset='utf-8'><title>{t}</title>"
        "<style>body{{font-family:sans-serif}}td,th{{border:1px solid #ccc;padding:2px 6px}}"
        ".FAILED{{background:#fdd}}.warning{{background:#ffd}}.skipped{{color:#888}}</style>"
        "<h1>{t}: {v}</h1><pre>{s}</pre>{d}<ul>{n}</ul><table><tr><th>status</th><th>check</th>"
        "<th>column</th><th>severity</th><th>observed</th><th>detail</th></tr>{r}</table>"
    ).format(
        t=escape(report.suite_name), v="PASSED" if report.success else "FAILED",
        s=escape(report.summary()), d=docs, n=notes, r="".join(rows),
    )
    target.write_text(html, encoding="utf-8")
    return target


def finish(
    report: ValidationReport,
    *,
    report_path: str | Path | None,
    error_cls: type[DataValidationError] | None = None,
) -> ValidationReport:
    """Write the report (JSON + HTML next to it), log it, raise on error-severity failures."""
    error_cls = error_cls or DataValidationError
    if report_path is not None:
        written = report.write_json(report_path)
        html = write_html(report, Path(report_path).with_suffix(".html"))
        logger.info("validation report written to %s (HTML %s)", written, html)
    if report.data_docs:
        logger.info("Data Docs of %s: %s", report.suite_name, report.data_docs)
    if report.success:
        log = logger.warning if report.warnings else logger.info
        log("%s", report.summary())
        return report
    logger.error("%s", report.summary())
    message = (
        f"{report.suite_name}: {len(report.errors)} error-severity check(s) failed on "
        f"{report.n_rows:,} rows: " + "; ".join(r["message"] for r in report.errors)
    )
    if report.data_docs:
        message += f" (Data Docs: {report.data_docs})"
    raise error_cls(message, report)


# --------------------------------------------------------------------------- main entry


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
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")

    definition = load_suite_definition(suite_path)
    suite_name: str = definition["name"]
    meta: dict[str, Any] = definition.get("meta") or {}
    params: dict[str, Any] = {**(meta.get("parameter_defaults") or {}), **(parameters or {})}
    lag = int(params.pop("freshness_lag_days", 0) or 0)
    params["window_start"] = ws.to_pydatetime()
    params["window_end"] = we.to_pydatetime()
    params["freshness_min"] = (we - pd.Timedelta(days=1 + lag)).to_pydatetime()

    results, gx_success, docs_index = run_suite(
        df,
        definition,
        parameters=params,
        run_name=f"{suite_name}__{ws.isoformat()}__{we.isoformat()}",
        run_time=we.to_pydatetime(),
        asset_name="interactions",
        docs_dir=docs_dir,
    )
    known = set(meta.get("required_columns") or []) | set(meta.get("optional_columns") or [])
    extra_columns = sorted(str(c) for c in df.columns if str(c) not in known)
    all_notes = list(notes or [])
    if extra_columns:
        all_notes.append(f"unknown column(s) {extra_columns} present (allowed; not used)")
    results += list(extra_results or [])

    report = ValidationReport(
        success=not any(r["success"] is False and r["severity"] == ERROR for r in results),
        n_rows=len(df),
        results=results,
        suite_name=suite_name,
        window_start=ws.isoformat(),
        window_end=we.isoformat(),
        gx_success=gx_success,
        duration_s=time.perf_counter() - started,
        notes=all_notes,
        data_docs=docs_index,
    )
    return finish(report, report_path=report_path)
