"""Slack Block Kit payloads (``{"text": <fallback>, "blocks": [...]}``) for a failed task, a gate
verdict, a stale table and a run's success; pure functions (no Airflow), every text redacted and
cut to Slack's limits."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

from include.recsys.core.fmt import fmt_num
from include.recsys.notify.slack import _redact, _truncate

log = logging.getLogger(__name__)


#: Characters of the error message kept in the alert (the tail).
EXCERPT_CHARS = 500

# Slack Block Kit limits (https://api.slack.com/reference/block-kit/blocks).
_HEADER_MAX = 150

_SECTION_TEXT_MAX = 3000

_FIELD_MAX = 2000

_FALLBACK_TEXT_MAX = 1000


def _mrkdwn_escape(text: str) -> str:
    """Escape the three characters Slack mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code_block(text: str, limit: int = _SECTION_TEXT_MAX) -> str:
    """Wrap ``text`` in a mrkdwn code block that fits in ``limit`` characters."""
    body = _mrkdwn_escape(text.replace("```", "'''"))
    return "```" + _truncate(body, limit - 6, tail=True) + "```"


def _fmt_date(value: Any) -> str:
    """Render a logical date (datetime, date, str or None) for humans."""
    if value is None or value == "":
        return "n/a"
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _field(label: str, value: Any) -> dict[str, str]:
    """A mrkdwn field for a section's ``fields`` list."""
    text = f"*{label}*\n{_mrkdwn_escape(str(value))}"
    return {"type": "mrkdwn", "text": _truncate(text, _FIELD_MAX)}


def _header(text: str) -> dict[str, Any]:
    return {
        "type": "header",
        "text": {"type": "plain_text", "text": _truncate(text, _HEADER_MAX), "emoji": True},
    }


def _link_buttons(links: Sequence[tuple[str, str | None]]) -> dict[str, Any] | None:
    """An actions block with one URL button per (label, url) with a non-empty url."""
    elements = [
        {
            "type": "button",
            "text": {"type": "plain_text", "text": label, "emoji": True},
            "url": url,
            "action_id": f"open_{re.sub(r'[^a-z0-9]+', '_', label.lower()).strip('_')}",
        }
        for label, url in links
        if url and len(url) <= 3000
    ]
    return {"type": "actions", "elements": elements} if elements else None


def failure_blocks(
    *,
    dag_id: str,
    task_id: str,
    run_id: str,
    try_number: int | None,
    logical_date: Any,
    error_type: str,
    error_excerpt: str,
    log_url: str | None = None,
    mlflow_url: str | None = None,
) -> dict[str, Any]:
    """Build the Slack payload for a failed task.

    :param dag_id: DAG id.
    :param task_id: Task id.
    :param run_id: DAG run id.
    :param try_number: Attempt number of the failed try (``None`` if unknown).
    :param logical_date: Logical date of the run (datetime, str or ``None``).
    :param error_type: Exception class name, e.g. ``"ValueError"``.
    :param error_excerpt: Short error message; it is redacted and tail-truncated here too.
    :param log_url: Link to the task log in the Airflow UI.
    :param mlflow_url: Link to the related MLflow run.
    :return: ``{"text": <notification fallback>, "blocks": [...]}``.
    """
    excerpt = _truncate(_redact(error_excerpt or "").strip(), EXCERPT_CHARS, tail=True)
    try_txt = "?" if try_number is None else str(try_number)
    text = _truncate(
        f":red_circle: Task failed: {dag_id}.{task_id} (run {run_id}, try {try_txt}): "
        f"{error_type}: {excerpt.splitlines()[-1] if excerpt else ''}".rstrip(": "),
        _FALLBACK_TEXT_MAX,
    )
    blocks: list[dict[str, Any]] = [
        _header(f":red_circle: Task failed: {dag_id}.{task_id}"),
        {
            "type": "section",
            "fields": [
                _field("DAG", dag_id),
                _field("Task", task_id),
                _field("Run", run_id),
                _field("Try", try_txt),
                _field("Logical date", _fmt_date(logical_date)),
                _field("Error", error_type),
            ],
        },
    ]
    if excerpt:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _code_block(excerpt)}})
    actions = _link_buttons([("View log", log_url), ("MLflow run", mlflow_url)])
    if actions:
        blocks.append(actions)
    return {"text": text, "blocks": blocks}


def gate_blocks(
    *,
    dag_id: str,
    run_id: str,
    verdict: str,
    reasons: Sequence[Mapping[str, Any]],
    report_path: str | None = None,
    mlflow_url: str | None = None,
    forced: bool = False,
) -> dict[str, Any]:
    """Build the Slack payload for a quality-gate verdict or a data-validation failure.

    :param dag_id: DAG id.
    :param run_id: DAG run id.
    :param verdict: e.g. ``"FAIL"``, ``"PASS"``, ``"VALIDATION_FAILED"``.
    :param reasons: Rule results, each a mapping with keys ``rule``, ``observed``,
        ``bound``, ``passed`` and optionally ``result`` (``PASS`` / ``FAIL`` / ``SKIP``: a rule
        the gate could not evaluate); missing keys render as ``-``.
    :param report_path: Where the full gate / validation report (the run card) was written.
    :param mlflow_url: Link to the related MLflow run (the run card is its artifact
        ``run_card/run_card.html``).
    :param forced: The gate did not pass but ``force_publish`` publishes anyway: a warning.
    :return: ``{"text": <notification fallback>, "blocks": [...]}`` with the rules
        rendered as a fixed-width table inside a mrkdwn code block.
    """
    ok = str(verdict).upper() in {"PASS", "PASSED", "OK", "SUCCESS"}
    icon = ":warning:" if forced else (":white_check_mark:" if ok else ":no_entry:")
    title = f"Gate {verdict}" + (" FORCED: published anyway (force_publish)" if forced else "")
    failed = [r for r in reasons if not r.get("passed", False)]
    text = _truncate(
        f"{icon} {title}: {dag_id} (run {run_id}) - {len(failed)}/{len(reasons)} rule(s) failed"
        + (": " + ", ".join(str(r.get("rule", "?")) for r in failed) if failed else ""),
        _FALLBACK_TEXT_MAX,
    )

    rows = [("rule", "observed", "bound", "result")]
    for r in reasons:
        rows.append(
            (
                str(r.get("rule", "?")),
                fmt_num(r.get("observed"), "compact"),
                fmt_num(r.get("bound"), "compact"),
                str(r.get("result") or ("PASS" if r.get("passed", False) else "FAIL")),
            )
        )
    widths = [min(max(len(row[i]) for row in rows), 40) for i in range(4)]
    lines = [
        "  ".join(_truncate(cell, widths[i]).ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))

    blocks: list[dict[str, Any]] = [
        _header(f"{icon} {title}: {dag_id}"),
        {
            "type": "section",
            "fields": [
                _field("DAG", dag_id),
                _field("Run", run_id),
                _field("Verdict", verdict),
                _field("Failed rules", f"{len(failed)}/{len(reasons)}"),
            ],
        },
    ]
    if reasons:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _code_block("\n".join(lines))}})
    if report_path:
        blocks.append(
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"Run card: `{_mrkdwn_escape(str(report_path))}`"
                              + (" (also in the MLflow run's artifacts)" if mlflow_url else "")}],
            }
        )
    actions = _link_buttons([("MLflow run", mlflow_url)])
    if actions:
        blocks.append(actions)
    return {"text": text, "blocks": blocks}


def freshness_blocks(
    *,
    problems: Sequence[str],
    current: str | None,
    published_at: Any,
    age_hours: float | None,
    root: str,
) -> dict[str, Any]:
    """Build the Slack payload for a stale or missing recommendations table.

    :param problems: One human sentence per failed freshness check.
    :param current: The served version (``None``: nothing published).
    :param published_at: When CURRENT last moved (datetime / str / ``None``).
    :param age_hours: Hours since then (``None`` if unknown).
    :param root: The recommendations root that was checked.
    """
    age = "n/a" if age_hours is None else f"{age_hours:.1f} h"
    text = _truncate(
        f":warning: Recommendations are stale: {'; '.join(problems)} (CURRENT {current or 'none'}, age {age})",
        _FALLBACK_TEXT_MAX,
    )
    blocks: list[dict[str, Any]] = [
        _header(":warning: Nightly recommendations are stale or missing"),
        {
            "type": "section",
            "fields": [
                _field("Served version", current or "none"),
                _field("Published at", _fmt_date(published_at)),
                _field("Age", age),
                _field("Root", root),
            ],
        },
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": _truncate("\n".join(f"• {_mrkdwn_escape(p)}" for p in problems), _SECTION_TEXT_MAX),
            },
        },
    ]
    return {"text": text, "blocks": blocks}


def success_blocks(
    *, dag_id: str, run_id: str, logical_date: Any, published: str | None, details: Mapping[str, Any],
    notice: str | None = None,
) -> dict[str, Any]:
    """Build the success summary (sent when ``$RECSYS_SLACK_NOTIFY_SUCCESS``, and always with a
    ``notice``: a run that served nothing because its data is older than what is served, or one
    that served older data by ``allow_older_data``)."""
    icon = ":warning:" if notice else ":large_green_circle:"
    head = f"{icon} {dag_id} succeeded (run {run_id}): published {published or 'nothing'}"
    text = _truncate(head + (f". {notice}" if notice else ""), _FALLBACK_TEXT_MAX)
    fields = [
        _field("DAG", dag_id),
        _field("Run", run_id),
        _field("Logical date", _fmt_date(logical_date)),
        _field("Published", published or "nothing"),
    ]
    fields += [_field(k, fmt_num(v, "compact")) for k, v in list(details.items())[:6]]
    blocks: list[dict[str, Any]] = [_header(f"{icon} {dag_id} succeeded")]
    if notice:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _truncate(
            f"*{_mrkdwn_escape(notice)}*", _SECTION_TEXT_MAX)}})
    blocks.append({"type": "section", "fields": fields[:10]})
    return {"text": text, "blocks": blocks}


def _publish_notice(run_id: str) -> str | None:
    """Why the run served nothing ("stale: ..."), or the loud note of older data served by
    ``allow_older_data``; None for an ordinary run (read from the run's ``publish.json``)."""
    from include.recsys.config.settings import load_config
    from include.recsys.reporting.summary import publish_outcome

    outcome = publish_outcome(load_config(), run_id) or {}
    if outcome and not outcome.get("served"):
        return f"Not served: {outcome.get('reason')}. Rollback is the way back to older data; allow_older_data overrides."
    if outcome.get("older_data"):
        return str(outcome["older_data"].get("note"))
    return None
