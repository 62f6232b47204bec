"""Posting to Slack through an Airflow connection (webhook or bot token): never raises, never
blocks past its timeout, never logs a URL or token (:func:`_redact` masks them in every message).

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
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)


#: Env var naming the Airflow connection id used for alerts.
CONN_ID_ENV = "RECSYS_SLACK_CONN_ID"

#: Connection id used when :data:`CONN_ID_ENV` is unset.
DEFAULT_CONN_ID = "slack_alerts"

#: Channel for bot-token (``chat.postMessage``) connections without an extra ``channel``.
CHANNEL_ENV = "RECSYS_SLACK_CHANNEL"

# slack_sdk logs the full URL at DEBUG (it checks ``logger.level <= DEBUG``, which
# is true for a NOTSET logger) and may embed it in error messages.  Give it a
# dedicated logger that drops everything; send_slack logs its own redacted summary.
_SDK_LOGGER = logging.getLogger(f"{__name__}.slack_sdk")

_SDK_LOGGER.propagate = False

_SDK_LOGGER.setLevel(logging.CRITICAL + 10)

_SDK_LOGGER.addHandler(logging.NullHandler())

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


def _truncate(text: str, limit: int, *, tail: bool = False) -> str:
    """Cut ``text`` to ``limit`` characters, marking the cut with an ellipsis."""
    if len(text) <= limit:
        return text
    if tail:
        return "…" + text[-(limit - 1) :]
    return text[: limit - 1] + "…"


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
    conn = _resolve_connection(conn_id, text)
    if conn is None:
        return False
    # Everything that could identify the webhook / token, for redaction of error messages.
    secrets = [s for s in (getattr(conn, "password", None), getattr(conn, "host", None)) if s]
    send = _sender(conn, conn_id, payload, timeout, secrets, text)
    if send is None:
        return False
    outcome = _post_with_timeout(send, conn_id, timeout)
    if outcome is None:
        log.warning(
            "Slack alert via connection '%s' timed out after %.1fs; alert not sent: %s",
            conn_id,
            timeout,
            text,
        )
        return False
    if "error" in outcome:
        _report_failure(conn_id, outcome["error"], secrets, text)
        return False
    log.info("Slack alert sent via connection '%s': %s", conn_id, text)
    return True


def _resolve_connection(conn_id: str, text: str) -> Any | None:
    """The Airflow connection ``conn_id``; None (logged) without the provider or the connection."""
    try:
        from airflow.providers.common.compat.sdk import AirflowNotFoundException
        from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook
    except Exception as exc:  # pragma: no cover - provider is a pinned dependency
        log.warning("Slack provider unavailable (%s); alert not sent: %s", type(exc).__name__, text)
        return None

    try:
        return SlackWebhookHook.get_connection(conn_id)
    except AirflowNotFoundException:
        log.warning("Slack connection '%s' not configured; alert not sent: %s", conn_id, text)
        return None
    except Exception as exc:
        log.warning(
            "Slack connection '%s' could not be read (%s); alert not sent: %s",
            conn_id,
            type(exc).__name__,
            text,
        )
        return None


def _sender(
    conn: Any, conn_id: str, payload: dict[str, Any], timeout: float, secrets: list[str], text: str
) -> Callable[[], Any] | None:
    """A call that posts ``payload`` (raising unless Slack accepted it), built in the calling
    thread: inside a task, connection look-ups go through the supervisor channel, which must
    not be used from a thread we may abandon. None (logged) when the connection is unusable;
    a bot connection's ``base_url`` joins ``secrets``."""
    try:
        from airflow.providers.slack.hooks.slack import SlackHook
        from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

        if (getattr(conn, "conn_type", None) or "").lower() != "slack":
            webhook = SlackWebhookHook(
                slack_webhook_conn_id=conn_id,
                timeout=timeout,  # type: ignore[arg-type]  # float is fine for urllib
                retry_handlers=[],
                logger=_SDK_LOGGER,
            )
            webhook.get_conn()
            return lambda: webhook.send_dict(payload)  # raises unless HTTP 200
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
            return None
        client = SlackHook(
            slack_conn_id=conn_id,
            timeout=timeout,  # type: ignore[arg-type]  # float is fine for urllib
            retry_handlers=[],
            logger=_SDK_LOGGER,
        ).get_conn()  # WebClient
        # raises SlackApiError on "ok": false or a non-200 answer
        return lambda: client.chat_postMessage(channel=channel, **dict(payload))
    except Exception as exc:
        log.warning(
            "Slack connection '%s' is invalid (%s: %s); alert not sent: %s",
            conn_id,
            type(exc).__name__,
            _truncate(_redact(str(exc), secrets), 300),
            text,
        )
        return None


def _post_with_timeout(send: Callable[[], Any], conn_id: str, timeout: float) -> dict[str, Any] | None:
    """Run ``send`` on a daemon thread for at most ``timeout + 1`` s: ``{"status": ...}`` or
    ``{"error": exc}``, None when it is still running (the thread is abandoned)."""
    outcome: dict[str, Any] = {}

    def _post() -> None:
        try:
            resp = send()
            outcome["status"] = getattr(resp, "status_code", None)
        except BaseException as exc:  # noqa: BLE001 - must never escape the thread
            outcome["error"] = exc

    worker = threading.Thread(target=_post, name=f"slack-alert-{conn_id}", daemon=True)
    worker.start()
    worker.join(timeout + 1.0)
    return None if worker.is_alive() else outcome


def _report_failure(conn_id: str, exc: BaseException, secrets: list[str], text: str) -> None:
    """Log a refused or failed post, with every secret of the connection masked."""
    detail = _truncate(_redact(str(exc), secrets), 300)
    log.warning(
        "Slack alert via connection '%s' failed (%s: %s); alert not sent: %s",
        conn_id,
        type(exc).__name__,
        detail,
        text,
    )


def _conn_id() -> str:
    return os.environ.get(CONN_ID_ENV) or DEFAULT_CONN_ID
