"""Slack alerting for the recsys retraining pipeline.

Public API
----------
* :func:`failure_blocks` / :func:`gate_blocks` -- pure functions that build Slack
  Block Kit payloads (``{"text": <fallback>, "blocks": [...]}``).  They import
  nothing from Airflow and can be unit-tested in isolation.
* :func:`send_slack` -- post a payload through an Airflow connection.  Never raises,
  never blocks longer than about ``timeout`` seconds; returns ``True`` on HTTP 200.
* :func:`task_failure_callback` -- ``on_failure_callback`` for ``default_args``.

Connection
----------
The webhook URL lives only in an Airflow connection (conn type ``slackwebhook``),
never in code.  The conn id is read from ``RECSYS_SLACK_CONN_ID`` (default
``slack_alerts``).  How ``SlackWebhookHook`` (provider 9.11.1) builds the URL:

* ``password`` is **required** (a connection with only ``host`` is rejected with
  "does not contain password (Slack Webhook Token)").
* If ``password`` contains ``://`` it is used verbatim as the full webhook URL.
* Otherwise URL = ``<base>/<password>`` where ``<base>`` is ``host`` when it
  contains ``://``, else ``"{schema or 'https'}://{host or 'hooks.slack.com/services'}"``.
  ``port`` is ignored, so a non-default port must be written inside ``host``.
* ``timeout`` / ``proxy`` may be given in ``extra``; the ``timeout`` argument of
  :func:`send_slack` takes precedence.

Examples::

    AIRFLOW_CONN_SLACK_ALERTS='{"conn_type": "slackwebhook", "password": "https://hooks.slack.com/services/T000/B000/XXXX"}'
    AIRFLOW_CONN_SLACK_ALERTS='{"conn_type": "slackwebhook", "host": "https://hooks.slack.com/services", "password": "T000/B000/XXXX"}'
    # local fake server in tests
    AIRFLOW_CONN_SLACK_ALERTS='{"conn_type": "slackwebhook", "host": "http://127.0.0.1:PORT/services", "password": "T/B/X"}'

Design decision: hook, not notifier
-----------------------------------
We wrap the provider's ``SlackWebhookHook`` rather than ``SlackWebhookNotifier``:

* ``BaseNotifier.__call__`` re-raises every exception from ``notify()`` (it only
  logs first); a dead server or missing connection would surface as a
  "Failed to run task callback" traceback in the task log.
* The notifier Jinja-renders ``text`` and ``blocks`` (they are template fields);
  an error message containing ``{{`` would be rendered or break rendering.
* It keeps slack_sdk's default retry handler, which retries connection errors
  once and logs ``"Going to retry the same request: POST <full webhook URL>"`` at
  INFO level -- i.e. it would leak the secret URL into task logs.

So :func:`send_slack` uses the hook with ``retry_handlers=[]``, a private
slack_sdk logger that is silenced (the SDK logs the URL at DEBUG and in some
error messages), a socket timeout, and a hard wall-clock deadline enforced by
running the request in a daemon thread.  All errors are logged (with the URL
and token redacted) and turned into ``False``.

Retries vs failures
-------------------
In Airflow 3 (task SDK, ``airflow.sdk.execution_time.task_runner.finalize``) a
failed attempt that still has retries left ends in ``UP_FOR_RETRY`` and runs
``on_retry_callback``; ``on_failure_callback`` only runs when the task instance
ends in ``FAILED`` (last retry exhausted, or a non-retryable failure).  Using
:func:`task_failure_callback` as ``on_failure_callback`` therefore produces one
message per task failure, not one per attempt.  Exceptions raised by callbacks
are caught and logged by the task runner, but this module does not rely on it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Any

__all__ = [
    "DEFAULT_CONN_ID",
    "CONN_ID_ENV",
    "failure_blocks",
    "gate_blocks",
    "send_slack",
    "task_failure_callback",
]

log = logging.getLogger(__name__)

#: Env var naming the Airflow connection id used for alerts.
CONN_ID_ENV = "RECSYS_SLACK_CONN_ID"
#: Connection id used when :data:`CONN_ID_ENV` is unset.
DEFAULT_CONN_ID = "slack_alerts"

#: Characters of the error message kept in the alert (the tail).
EXCERPT_CHARS = 500

# Slack Block Kit limits (https://api.slack.com/reference/block-kit/blocks).
_HEADER_MAX = 150
_SECTION_TEXT_MAX = 3000
_FIELD_MAX = 2000
_FALLBACK_TEXT_MAX = 1000

# slack_sdk logs the full URL at DEBUG (it checks ``logger.level <= DEBUG``, which
# is true for a NOTSET logger) and may embed it in error messages.  Give it a
# dedicated logger that drops everything; send_slack logs its own redacted summary.
_SDK_LOGGER = logging.getLogger(f"{__name__}.slack_sdk")
_SDK_LOGGER.setLevel(logging.CRITICAL + 10)
_SDK_LOGGER.propagate = False
_SDK_LOGGER.addHandler(logging.NullHandler())

# --------------------------------------------------------------------------- #
# Redaction / formatting helpers (pure)
# --------------------------------------------------------------------------- #

_SECRET_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Slack webhook URLs (path is the secret).
    (re.compile(r"hooks\.slack(?:-gov)?\.com/\S+", re.I), "hooks.slack.com/***"),
    (re.compile(r"/services/T[\w-]*/B[\w-]*/[\w-]+"), "/services/***"),
    # Slack tokens.
    (re.compile(r"\bxox[abposre]-[\w-]+", re.I), "xox*-***"),
    (re.compile(r"\bxapp-[\w-]+", re.I), "xapp-***"),
    # Credentials in URLs: scheme://user:pass@host
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^\s/:@]*:[^\s/@]*@", re.I), r"\1***:***@"),
    # Authorization headers.
    (re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 ***"),
    # key=value / key: value for sensitive keys.
    (
        re.compile(
            r"(?i)\b([\w-]*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|"
            r"private[_-]?key|authorization|credentials?)[\w-]*)"
            r"(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&]+)"
        ),
        r"\1\2***",
    ),
]


def _redact(text: str, extra_secrets: Iterable[str] = ()) -> str:
    """Mask well-known secret shapes (and any ``extra_secrets``) in ``text``."""
    for secret in extra_secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text


def _mrkdwn_escape(text: str) -> str:
    """Escape the three characters Slack mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _truncate(text: str, limit: int, *, tail: bool = False) -> str:
    """Cut ``text`` to ``limit`` characters, marking the cut with an ellipsis."""
    if len(text) <= limit:
        return text
    if tail:
        return "…" + text[-(limit - 1) :]
    return text[: limit - 1] + "…"


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


def _fmt_value(value: Any) -> str:
    """Render an observed value / bound compactly for the gate table."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple) and len(value) == 2:
        return f"[{_fmt_value(value[0])}, {_fmt_value(value[1])}]"
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


# --------------------------------------------------------------------------- #
# Payload builders (pure)
# --------------------------------------------------------------------------- #


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
) -> dict[str, Any]:
    """Build the Slack payload for a quality-gate verdict or a data-validation failure.

    :param dag_id: DAG id.
    :param run_id: DAG run id.
    :param verdict: e.g. ``"FAIL"``, ``"PASS"``, ``"VALIDATION_FAILED"``.
    :param reasons: Rule results, each a mapping with keys ``rule``, ``observed``,
        ``bound`` and ``passed`` (missing keys render as ``-``).
    :param report_path: Where the full gate / validation report was written.
    :return: ``{"text": <notification fallback>, "blocks": [...]}`` with the rules
        rendered as a fixed-width table inside a mrkdwn code block.
    """
    ok = str(verdict).upper() in {"PASS", "PASSED", "OK", "SUCCESS"}
    icon = ":white_check_mark:" if ok else ":no_entry:"
    failed = [r for r in reasons if not r.get("passed", False)]
    text = _truncate(
        f"{icon} Gate {verdict}: {dag_id} (run {run_id}) - {len(failed)}/{len(reasons)} rule(s) failed"
        + (": " + ", ".join(str(r.get("rule", "?")) for r in failed) if failed else ""),
        _FALLBACK_TEXT_MAX,
    )

    rows = [("rule", "observed", "bound", "result")]
    for r in reasons:
        rows.append(
            (
                str(r.get("rule", "?")),
                _fmt_value(r.get("observed")),
                _fmt_value(r.get("bound")),
                "PASS" if r.get("passed", False) else "FAIL",
            )
        )
    widths = [min(max(len(row[i]) for row in rows), 40) for i in range(4)]
    lines = [
        "  ".join(_truncate(cell, widths[i]).ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))

    blocks: list[dict[str, Any]] = [
        _header(f"{icon} Gate {verdict}: {dag_id}"),
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
                "elements": [{"type": "mrkdwn", "text": f"Report: `{_mrkdwn_escape(str(report_path))}`"}],
            }
        )
    return {"text": text, "blocks": blocks}


# --------------------------------------------------------------------------- #
# Sending
# --------------------------------------------------------------------------- #


def _payload_text(payload: Any) -> str:
    """The fallback text of ``payload`` for log lines (never the blocks)."""
    if isinstance(payload, Mapping):
        return _truncate(str(payload.get("text", "")), 300)
    return "<invalid payload>"


def send_slack(payload: dict[str, Any], conn_id: str, timeout: float = 5.0) -> bool:
    """Post ``payload`` to the Slack incoming webhook of Airflow connection ``conn_id``.

    Uses the Slack provider's ``SlackWebhookHook`` (URL from the connection only),
    without retries.  Never raises: a missing connection, an unreachable or slow
    server, or a non-200 answer is logged (without the webhook URL) and ``False``
    is returned.  The call returns within about ``timeout`` seconds (socket
    timeout plus a hard deadline of ``timeout + 1`` s).

    :param payload: Slack message body, e.g. from :func:`failure_blocks`.
    :param conn_id: Airflow connection id (conn type ``slackwebhook``).
    :param timeout: Seconds to wait for Slack.
    :return: ``True`` if Slack answered HTTP 200.
    """
    text = _payload_text(payload)
    try:
        from airflow.providers.common.compat.sdk import AirflowNotFoundException
        from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook
    except Exception as exc:  # pragma: no cover - provider is a pinned dependency
        log.warning("Slack provider unavailable (%s); alert not sent: %s", type(exc).__name__, text)
        return False

    try:
        conn = SlackWebhookHook.get_connection(conn_id)
    except AirflowNotFoundException:
        log.warning("Slack connection '%s' not configured; alert not sent: %s", conn_id, text)
        return False
    except Exception as exc:
        log.warning(
            "Slack connection '%s' could not be read (%s); alert not sent: %s",
            conn_id,
            type(exc).__name__,
            text,
        )
        return False

    # Everything that could identify the webhook, for redaction of error messages.
    secrets = [s for s in (getattr(conn, "password", None), getattr(conn, "host", None)) if s]
    outcome: dict[str, Any] = {}

    try:
        hook = SlackWebhookHook(
            slack_webhook_conn_id=conn_id,
            timeout=timeout,  # type: ignore[arg-type]  # float is fine for urllib
            retry_handlers=[],
            logger=_SDK_LOGGER,
        )
        # Resolve the connection and build the client in the calling thread: inside a
        # task, connection look-ups go through the supervisor channel, which must not
        # be used from a thread we may abandon.
        hook.get_conn()
    except Exception as exc:
        log.warning(
            "Slack connection '%s' is invalid (%s: %s); alert not sent: %s",
            conn_id,
            type(exc).__name__,
            _truncate(_redact(str(exc), secrets), 300),
            text,
        )
        return False

    def _post() -> None:
        try:
            resp = hook.send_dict(payload)  # raises unless HTTP 200
            outcome["status"] = getattr(resp, "status_code", None)
        except BaseException as exc:  # noqa: BLE001 - must never escape the thread
            outcome["error"] = exc

    worker = threading.Thread(target=_post, name=f"slack-alert-{conn_id}", daemon=True)
    worker.start()
    worker.join(timeout + 1.0)

    if worker.is_alive():
        log.warning(
            "Slack alert via connection '%s' timed out after %.1fs; alert not sent: %s",
            conn_id,
            timeout,
            text,
        )
        return False
    if "error" in outcome:
        exc = outcome["error"]
        detail = _truncate(_redact(str(exc), secrets), 300)
        log.warning(
            "Slack alert via connection '%s' failed (%s: %s); alert not sent: %s",
            conn_id,
            type(exc).__name__,
            detail,
            text,
        )
        return False
    log.info("Slack alert sent via connection '%s': %s", conn_id, text)
    return True


# --------------------------------------------------------------------------- #
# Airflow callback
# --------------------------------------------------------------------------- #


def _get(obj: Any, attr: str) -> Any:
    """``getattr`` that tolerates ``None`` objects and raising properties."""
    if obj is None:
        return None
    try:
        return getattr(obj, attr, None)
    except Exception:
        return None


def _error_excerpt(exc: Any) -> tuple[str, str]:
    """Return ``(error_type, redacted tail of the message)`` for ``exc``."""
    if exc is None:
        return "UnknownError", ""
    if isinstance(exc, BaseException):
        error_type = type(exc).__name__
        message = str(exc) or repr(exc)
    else:  # Airflow sometimes passes a plain string
        error_type, message = "Error", str(exc)
    try:  # Airflow's secrets masker knows connection passwords / variables seen so far.
        from airflow.sdk._shared.secrets_masker import redact as airflow_redact

        message = str(airflow_redact(message))
    except Exception:
        pass
    return error_type, _truncate(_redact(message).strip(), EXCERPT_CHARS, tail=True)


def _domain_payload(exc: Any, dag_id: str, run_id: str) -> dict[str, Any] | None:
    """A rule table for a failed gate or failed input validation (the exception's cause).

    The DAG raises ``AirflowFailException(...) from GateFailed | DataValidationError``; the
    cause carries the rules / checks. Anything else returns None (generic failure message).
    """
    cause = getattr(exc, "__cause__", None) or exc
    result = getattr(cause, "result", None)  # GateFailed
    if result is not None and hasattr(result, "rules"):
        reasons = [
            {"rule": r.name, "observed": r.observed, "bound": r.bound, "passed": r.passed}
            for r in result.rules
        ]
        return gate_blocks(dag_id=dag_id, run_id=run_id, verdict=result.verdict, reasons=reasons)
    report = getattr(cause, "report", None)  # DataValidationError
    if report is not None and hasattr(report, "errors"):
        reasons = [
            {
                "rule": f"{r.get('column') or 'table'}: {r.get('check') or r.get('expectation_type')}",
                "observed": r.get("unexpected_count", r.get("observed_value")),
                "bound": r.get("severity"),
                "passed": False,
            }
            for r in report.errors
        ]
        return gate_blocks(
            dag_id=dag_id, run_id=run_id, verdict="INPUT VALIDATION FAILED", reasons=reasons
        )
    return None


def task_failure_callback(context: Mapping[str, Any]) -> None:
    """``on_failure_callback`` that posts one Slack message per failed task.

    Reads ``ti``/``task_instance``, ``dag``, ``task``, ``dag_run``, ``run_id``,
    ``logical_date`` and ``exception`` from the Airflow context (all optional),
    builds :func:`failure_blocks` and sends it with :func:`send_slack` using the
    connection named by ``$RECSYS_SLACK_CONN_ID`` (default ``slack_alerts``).
    Never raises.
    """
    try:
        ctx: Mapping[str, Any] = context if isinstance(context, Mapping) else {}
        ti = ctx.get("ti") or ctx.get("task_instance")
        dag_run = ctx.get("dag_run")
        dag_id = _get(ti, "dag_id") or _get(ctx.get("dag"), "dag_id") or _get(dag_run, "dag_id") or "unknown_dag"
        task_id = _get(ti, "task_id") or _get(ctx.get("task"), "task_id") or "unknown_task"
        run_id = ctx.get("run_id") or _get(ti, "run_id") or _get(dag_run, "run_id") or "unknown_run"
        logical_date = ctx.get("logical_date") or _get(dag_run, "logical_date")
        exc = ctx.get("exception")
        error_type, excerpt = _error_excerpt(exc)
        log_url = _get(ti, "log_url")
        payload = _domain_payload(exc, str(dag_id), str(run_id))
        if payload is None:
            payload = failure_blocks(
                dag_id=str(dag_id),
                task_id=str(task_id),
                run_id=str(run_id),
                try_number=_get(ti, "try_number"),
                logical_date=logical_date,
                error_type=error_type,
                error_excerpt=excerpt,
            log_url=log_url if isinstance(log_url, str) else None,
            )
        send_slack(payload, os.environ.get(CONN_ID_ENV) or DEFAULT_CONN_ID)
    except Exception:
        log.exception("task_failure_callback failed; alert not sent")

