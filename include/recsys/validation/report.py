"""The validation report every check writes into (input, output, similar items): the result
dict format (:func:`check_result` for Python checks), the :class:`ValidationReport`, its JSON
and HTML files, and :func:`finish`, which raises on an error-severity failure."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from include.recsys.core.io import atomic_write
from include.recsys.errors import DataValidationError

logger = logging.getLogger(__name__)


ERROR = "error"

WARNING = "warning"

_SEVERITIES = (ERROR, WARNING)

# meta.severity -> GX native FailureSeverity value
_GX_SEVERITY = {ERROR: "critical", WARNING: "warning"}


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
        return atomic_write(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")


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
