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

Bot token (``chat.postMessage``)
-------------------------------
A connection of conn type ``slack`` (the provider's ``SlackHook``) holds a bot token
(``xoxb-...``) as password; the channel is its extra ``channel`` (or ``$RECSYS_SLACK_CHANNEL``)
and extra ``base_url`` may point at another API root (the tests' fake server)::

    AIRFLOW_CONN_SLACK_ALERTS='{"conn_type": "slack", "password": "xoxb-<token>", "extra": {"channel": "#recsys-alerts"}}'

Same guarantees as the webhook: no retries, a hard deadline, token never logged.

What is posted
--------------
* a task failed for good: :func:`task_failure_callback` (one message; a failed gate or input
  validation posts the rule table and the run card path instead); with
  ``$RECSYS_MLFLOW_UI_URL`` set, a link to the MLflow run (its id comes from the ``train``
  task's XCom; MLflow itself is never queried from a callback, so an MLflow outage cannot
  slow the alert down);
* a failed attempt that will be retried: nothing -- :func:`task_retry_callback` logs it;
* gate SKIPPED, or a FAIL / SKIPPED published anyway by ``force_publish`` (a warning):
  :func:`send_gate_verdict` from the gate task (nothing fails, so no callback);
* DAG run succeeded: :func:`dag_success_callback`, only if ``$RECSYS_SLACK_NOTIFY_SUCCESS``;
* stale / missing table: ``include.recsys.freshness`` (the hourly check DAG).

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
    "task_retry_callback",
    "send_gate_verdict",
    "dag_success_callback",
    "freshness_blocks",
    "mlflow_run_url",
]

log = logging.getLogger(__name__)

#: Env var naming the Airflow connection id used for alerts.
CONN_ID_ENV = "RECSYS_SLACK_CONN_ID"
#: Connection id used when :data:`CONN_ID_ENV` is unset.
DEFAULT_CONN_ID = "slack_alerts"
#: Channel for bot-token (``chat.postMessage``) connections without an extra ``channel``.
CHANNEL_ENV = "RECSYS_SLACK_CHANNEL"
#: Base URL of the MLflow UI (e.g. ``http://127.0.0.1:5000``); unset: no MLflow link.
MLFLOW_UI_ENV = "RECSYS_MLFLOW_UI_URL"
#: ``true`` posts a summary when a DAG run succeeds (default ``false``: success is quiet).
NOTIFY_SUCCESS_ENV = "RECSYS_SLACK_NOTIFY_SUCCESS"

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
                _fmt_value(r.get("observed")),
                _fmt_value(r.get("bound")),
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
    fields += [_field(k, _fmt_value(v)) for k, v in list(details.items())[:6]]
    blocks: list[dict[str, Any]] = [_header(f"{icon} {dag_id} succeeded")]
    if notice:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _truncate(
            f"*{_mrkdwn_escape(notice)}*", _SECTION_TEXT_MAX)}})
    blocks.append({"type": "section", "fields": fields[:10]})
    return {"text": text, "blocks": blocks}


def _publish_notice(run_id: str) -> str | None:
    """Why the run served nothing ("stale: ..."), or the loud note of older data served by
    ``allow_older_data``; None for an ordinary run (read from the run's ``publish.json``)."""
    from include.recsys.config import load_config
    from include.recsys.pipeline import publish_outcome

    outcome = publish_outcome(load_config(), run_id) or {}
    if outcome and not outcome.get("served"):
        return f"Not served: {outcome.get('reason')}. Rollback is the way back to older data; allow_older_data overrides."
    if outcome.get("older_data"):
        return str(outcome["older_data"].get("note"))
    return None


# --------------------------------------------------------------------------- #
# Sending
# --------------------------------------------------------------------------- #


def _payload_text(payload: Any) -> str:
    """The fallback text of ``payload`` for log lines (never the blocks)."""
    if isinstance(payload, Mapping):
        return _truncate(str(payload.get("text", "")), 300)
    return "<invalid payload>"


def send_slack(payload: dict[str, Any], conn_id: str, timeout: float = 5.0) -> bool:
    """Post ``payload`` through the Slack connection ``conn_id`` (webhook or bot token).

    * conn type ``slackwebhook``: the provider's ``SlackWebhookHook`` (URL from the connection).
    * conn type ``slack`` (bot token ``xoxb-...`` as password): the provider's ``SlackHook``
      (slack_sdk ``WebClient``) calls ``chat.postMessage``; the channel is the connection
      extra ``channel`` or ``$RECSYS_SLACK_CHANNEL``; extra ``base_url`` overrides the API URL.

    No retries. Never raises: a missing connection, an unreachable or slow server, or a
    refusal (non-200, or ``"ok": false``) is logged (without URL or token) and ``False`` is
    returned. The call returns within about ``timeout`` seconds (socket timeout plus a hard
    deadline of ``timeout + 1`` s).

    :param payload: Slack message body, e.g. from :func:`failure_blocks`.
    :param conn_id: Airflow connection id (conn type ``slackwebhook`` or ``slack``).
    :param timeout: Seconds to wait for Slack.
    :return: ``True`` if Slack accepted the message.
    """
    text = _payload_text(payload)
    try:
        from airflow.providers.common.compat.sdk import AirflowNotFoundException
        from airflow.providers.slack.hooks.slack import SlackHook
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

    # Everything that could identify the webhook / token, for redaction of error messages.
    secrets = [s for s in (getattr(conn, "password", None), getattr(conn, "host", None)) if s]
    bot = (getattr(conn, "conn_type", None) or "").lower() == "slack"
    outcome: dict[str, Any] = {}

    try:
        if bot:
            try:
                extra = dict(conn.extra_dejson or {})
            except Exception:
                extra = {}
            if extra.get("base_url"):
                secrets.append(str(extra["base_url"]))
            channel = extra.get("channel") or os.environ.get(CHANNEL_ENV)
            if not channel:
                log.warning(
                    "Slack connection '%s' (bot token) names no channel (extra 'channel' or $%s); "
                    "alert not sent: %s",
                    conn_id,
                    CHANNEL_ENV,
                    text,
                )
                return False
            hook: Any = SlackHook(
                slack_conn_id=conn_id,
                timeout=timeout,  # type: ignore[arg-type]  # float is fine for urllib
                retry_handlers=[],
                logger=_SDK_LOGGER,
            )
            client = hook.get_conn()  # WebClient, built here (see below)

            def _send() -> Any:
                # raises SlackApiError on "ok": false or a non-200 answer
                return client.chat_postMessage(channel=channel, **dict(payload))
        else:
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

            def _send() -> Any:
                return hook.send_dict(payload)  # raises unless HTTP 200
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
            resp = _send()
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


def mlflow_run_url(run_id: str | None) -> str | None:
    """Link to an MLflow run in the UI at ``$RECSYS_MLFLOW_UI_URL`` (None when either is unknown).

    Uses the UI's direct run route ``<base>/#/runs/<run_id>`` (no experiment id needed).
    """
    base = (os.environ.get(MLFLOW_UI_ENV) or "").strip().rstrip("/")
    if not base or not run_id or not re.fullmatch(r"[0-9A-Za-z_-]{1,64}", str(run_id)):
        return None
    return f"{base}/#/runs/{run_id}"


def _mlflow_run_id_from_xcom(ti: Any) -> str | None:
    """The DAG run's MLflow run id, from the ``train`` task's XCom (None before train ran).

    Only attempted when ``$RECSYS_MLFLOW_UI_URL`` is set; never asks MLflow itself, so a
    failure caused by an unreachable MLflow cannot slow the alert down.
    """
    if not os.environ.get(MLFLOW_UI_ENV) or ti is None or not hasattr(ti, "xcom_pull"):
        return None
    try:
        value = ti.xcom_pull(task_ids="train")
    except Exception:
        return None
    if isinstance(value, Mapping) and isinstance(value.get("mlflow_run_id"), str):
        return value["mlflow_run_id"]
    return None


def _domain_payload(
    exc: Any, dag_id: str, run_id: str, mlflow_url: str | None = None
) -> dict[str, Any] | None:
    """A rule table for a failed gate or failed input validation (the exception's cause).

    The DAG raises ``AirflowFailException(...) from GateFailed | DataValidationError``; the
    cause carries the rules / checks and, when the stage set it, ``report_path`` (the run card).
    Anything else returns None (generic failure message).
    """
    cause = getattr(exc, "__cause__", None) or exc
    report_path = getattr(cause, "report_path", None)
    report_path = str(report_path) if report_path else None
    result = getattr(cause, "result", None)  # GateFailed
    if result is not None and hasattr(result, "rules"):
        reasons = [
            {"rule": r.name, "observed": r.observed, "bound": r.bound, "passed": r.passed,
             "result": getattr(r, "result", None)}
            for r in result.rules
        ]
        return gate_blocks(
            dag_id=dag_id, run_id=run_id, verdict=result.verdict, reasons=reasons,
            report_path=report_path, mlflow_url=mlflow_url,
        )
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
            dag_id=dag_id, run_id=run_id, reasons=reasons,
            verdict="OUTPUT VALIDATION FAILED" if type(cause).__name__.startswith("Output")
            else "INPUT VALIDATION FAILED",
            report_path=report_path or getattr(report, "data_docs", None) or getattr(report, "path", None),
            mlflow_url=mlflow_url,
        )
    return None


def _conn_id() -> str:
    return os.environ.get(CONN_ID_ENV) or DEFAULT_CONN_ID


def _ids(ctx: Mapping[str, Any]) -> tuple[Any, str, str, str, Any]:
    """(ti, dag_id, task_id, run_id, logical_date) from an Airflow context, all optional."""
    ti = ctx.get("ti") or ctx.get("task_instance")
    dag_run = ctx.get("dag_run")
    dag_id = _get(ti, "dag_id") or _get(ctx.get("dag"), "dag_id") or _get(dag_run, "dag_id") or "unknown_dag"
    task_id = _get(ti, "task_id") or _get(ctx.get("task"), "task_id") or "unknown_task"
    run_id = ctx.get("run_id") or _get(ti, "run_id") or _get(dag_run, "run_id") or "unknown_run"
    logical_date = ctx.get("logical_date") or _get(dag_run, "logical_date")
    return ti, str(dag_id), str(task_id), str(run_id), logical_date


def task_failure_callback(context: Mapping[str, Any]) -> None:
    """``on_failure_callback`` that posts one Slack message per failed task.

    Reads ``ti``/``task_instance``, ``dag``, ``task``, ``dag_run``, ``run_id``,
    ``logical_date`` and ``exception`` from the Airflow context (all optional),
    builds :func:`failure_blocks` (or the rule table of a failed gate / input validation)
    and sends it with :func:`send_slack` using the connection named by
    ``$RECSYS_SLACK_CONN_ID`` (default ``slack_alerts``). The MLflow run link is added when
    ``$RECSYS_MLFLOW_UI_URL`` is set and the ``train`` task already pushed the run id.
    Never raises.
    """
    try:
        ctx: Mapping[str, Any] = context if isinstance(context, Mapping) else {}
        ti, dag_id, task_id, run_id, logical_date = _ids(ctx)
        exc = ctx.get("exception")
        error_type, excerpt = _error_excerpt(exc)
        log_url = _get(ti, "log_url")
        mlflow_url = mlflow_run_url(_mlflow_run_id_from_xcom(ti))
        payload = _domain_payload(exc, dag_id, run_id, mlflow_url)
        if payload is None:
            payload = failure_blocks(
                dag_id=dag_id,
                task_id=task_id,
                run_id=run_id,
                try_number=_get(ti, "try_number"),
                logical_date=logical_date,
                error_type=error_type,
                error_excerpt=excerpt,
                log_url=log_url if isinstance(log_url, str) else None,
                mlflow_url=mlflow_url,
            )
        send_slack(payload, _conn_id())
    except Exception:
        log.exception("task_failure_callback failed; alert not sent")


def task_retry_callback(context: Mapping[str, Any]) -> None:
    """``on_retry_callback``: one log line per failed attempt that will be retried; posts nothing.

    Policy: Slack hears about a task once, when it has failed for good
    (:func:`task_failure_callback`); an attempt that a retry may still fix is only logged (in
    the task log, with the error type and the attempt number). Never raises.
    """
    try:
        ctx: Mapping[str, Any] = context if isinstance(context, Mapping) else {}
        ti, dag_id, task_id, run_id, _ = _ids(ctx)
        error_type, excerpt = _error_excerpt(ctx.get("exception"))
        last = excerpt.splitlines()[-1] if excerpt else ""
        log.warning(
            "attempt %s of %s.%s (run %s) failed with %s: %s; will be retried, no alert sent",
            _get(ti, "try_number") or "?", dag_id, task_id, run_id, error_type, last,
        )
    except Exception:
        log.exception("task_retry_callback failed")


def send_gate_verdict(
    verdict: Mapping[str, Any],
    *,
    dag_id: str,
    run_id: str,
    report_path: str | None = None,
    mlflow_run_id: str | None = None,
) -> bool:
    """Post the rule table of a gate verdict dict (``GateResult.to_dict()``), e.g. SKIPPED.

    FAIL is posted by :func:`task_failure_callback` (the gate task fails); SKIPPED does not
    fail anything, so the gate task calls this before skipping downstream; a FAIL / SKIPPED
    overridden by ``force_publish`` (``verdict["forced"]``) is posted as a warning. The message
    names the run card (``verdict["run_card"]``, else ``verdict["path"]``). Never raises.
    """
    try:
        reasons = [
            {"rule": r.get("name"), "observed": r.get("observed"), "bound": r.get("bound"),
             "passed": r.get("passed"), "result": r.get("result")}
            for r in verdict.get("rules", [])
        ]
        payload = gate_blocks(
            dag_id=dag_id,
            run_id=run_id,
            verdict=str(verdict.get("verdict", "?")),
            reasons=reasons,
            report_path=report_path or verdict.get("run_card") or verdict.get("path"),
            mlflow_url=mlflow_run_url(mlflow_run_id),
            forced=bool(verdict.get("forced")),
        )
        return send_slack(payload, _conn_id())
    except Exception:
        log.exception("send_gate_verdict failed; alert not sent")
        return False


def notify_success_enabled() -> bool:
    return (os.environ.get(NOTIFY_SUCCESS_ENV) or "false").strip().lower() in {"1", "true", "yes", "on"}


def dag_success_callback(context: Mapping[str, Any]) -> None:
    """DAG ``on_success_callback``: a short summary, only when ``$RECSYS_SLACK_NOTIFY_SUCCESS``
    is true (default false), and always when the run served nothing because its data is older
    than what is served or served older data by ``allow_older_data``. Reads CURRENT and its
    manifest: "published" is the served version when this run published it. Never raises."""
    try:
        import json as _json

        from include.recsys.config import load_config
        from include.recsys.publish import MANIFEST, read_current, version_dir

        ctx: Mapping[str, Any] = context if isinstance(context, Mapping) else {}
        _, dag_id, _, run_id, logical_date = _ids(ctx)
        notice = _publish_notice(run_id)
        if not notify_success_enabled() and not notice:
            return
        root = load_config().recommendations_root
        current = read_current(root)
        published, details = None, {}
        if current:
            try:
                m = _json.loads((version_dir(root, current) / MANIFEST).read_text())
            except Exception:
                m = {}
            if m.get("airflow_run_id") == run_id:
                published = current
                details = {
                    "rows": m.get("rows"),
                    "users": m.get("users"),
                    "model version": m.get("model_version"),
                    **{k: v for k, v in (m.get("metrics") or {}).items() if k == (m.get("gate") or {}).get("metric")},
                }
        send_slack(
            success_blocks(dag_id=dag_id, run_id=run_id, logical_date=logical_date, published=published,
                           details=details, notice=notice),
            _conn_id(),
        )
    except Exception:
        log.exception("dag_success_callback failed; summary not sent")


def ops_default_args(*, retry_delay_s: int, execution_timeout_min: int) -> dict[str, Any]:
    """``default_args`` of the small operational DAGs (rollback, freshness check): one retry
    with backoff, a timeout, the quiet retry log and one Slack message per final failure."""
    from datetime import timedelta

    return {
        "owner": "ml-platform",
        "retries": 1,
        "retry_delay": timedelta(seconds=retry_delay_s),
        "retry_exponential_backoff": 2.0,
        "execution_timeout": timedelta(minutes=execution_timeout_min),
        "on_failure_callback": [task_failure_callback],
        "on_retry_callback": [task_retry_callback],
    }
