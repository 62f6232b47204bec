"""A local fake of Slack's incoming-webhook endpoint and of the Web API's ``chat.postMessage``.

``FakeSlack`` runs an :mod:`http.server` on ``127.0.0.1`` (ephemeral port) in a
background thread, records every request and answers like Slack (HTTP 200, body
``ok``) unless told to fail (``status``) or to be slow (``delay``)::

    with FakeSlack() as slack:
        monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", slack.conn_json())
        ...
        assert slack.requests[0].json["text"] == "..."

``status``, ``body`` and ``delay`` are plain attributes and may be changed while
the server runs.

Bot-token connections (conn type ``slack``) post to ``POST /api/chat.postMessage``; the fake
answers like Slack's Web API: ``{"ok": true, "channel": ..., "ts": ...}`` when the
``Authorization: Bearer <bot_token>`` header matches, else ``{"ok": false, "error":
"invalid_auth"}`` (HTTP 200, as Slack does); ``status`` != 200 answers that status::

    monkeypatch.setenv("AIRFLOW_CONN_SLACK_BOT", slack.bot_conn_json(channel="#alerts"))
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeSlack", "RecordedRequest"]


@dataclass
class RecordedRequest:
    """One request received by :class:`FakeSlack`."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any = None
    received_at: float = field(default_factory=time.monotonic)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def _handle(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            parsed: Any = json.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            parsed = None
        fake._record(
            RecordedRequest(
                method=self.command,
                path=self.path,
                headers={k: v for k, v in self.headers.items()},
                body=raw,
                json=parsed,
            )
        )
        if fake.delay > 0:
            fake._stopping.wait(fake.delay)
        content_type = "text/html"
        if self.path.startswith("/api/"):
            content_type = "application/json; charset=utf-8"
            status, body = self._web_api(fake, parsed)
        elif self.command != "POST":
            status, body = 405, "invalid_method"
        elif parsed is None:
            status, body = 400, "invalid_payload"
        else:
            status = fake.status
            body = fake.body if fake.body is not None else ("ok" if status == 200 else "internal_error")
        data = body.encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # client gave up (timeout) -- expected in slow-server tests
            pass

    def _web_api(self, fake: FakeSlack, parsed: Any) -> tuple[int, str]:
        """Slack Web API semantics for ``chat.postMessage`` (the only method faked)."""
        if fake.status != 200:
            return fake.status, json.dumps({"ok": False, "error": "internal_error"})
        if self.command != "POST" or self.path.split("?")[0] != "/api/chat.postMessage":
            return 404, json.dumps({"ok": False, "error": "unknown_method"})
        if self.headers.get("Authorization") != f"Bearer {fake.bot_token}":
            return 200, json.dumps({"ok": False, "error": "invalid_auth"})
        if not isinstance(parsed, dict) or not parsed.get("channel"):
            return 200, json.dumps({"ok": False, "error": "channel_not_found"})
        if not parsed.get("text") and not parsed.get("blocks"):
            return 200, json.dumps({"ok": False, "error": "no_text"})
        ts = f"{time.time():.6f}"
        return 200, json.dumps(
            {"ok": True, "channel": parsed["channel"], "ts": ts, "message": {"text": parsed.get("text"), "ts": ts}}
        )

    do_POST = _handle
    do_GET = _handle

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silence the default stderr access log."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeSlack


class FakeSlack:
    """Fake Slack incoming webhook on ``127.0.0.1``; usable as a context manager.

    :param status: HTTP status for valid POSTs (Slack answers 200).
    :param body: Response body; default ``ok`` for status 200, else ``internal_error``.
    :param delay: Seconds to wait before answering (to exercise client timeouts).
    :param token: Webhook path after ``/services/`` (the secret part of real URLs).
    """

    def __init__(
        self,
        *,
        status: int = 200,
        body: str | None = None,
        delay: float = 0.0,
        token: str = "T000FAKE/B000FAKE/fakeWebhookSecret0123456789",
        bot_token: str = "xoxb-000000FAKE-111111FAKE-fakeBotSecret0123456789",
    ) -> None:
        self.status = status
        self.body = body
        self.delay = delay
        self.token = token
        self.bot_token = bot_token
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    # -- addresses ---------------------------------------------------------- #
    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/services`` (the connection's ``host``)."""
        return f"http://127.0.0.1:{self.port}/services"

    @property
    def url(self) -> str:
        """Full webhook URL, ``{base_url}/{token}``."""
        return f"{self.base_url}/{self.token}"

    def conn_json(self) -> str:
        """JSON for ``AIRFLOW_CONN_<ID>`` pointing the ``slackwebhook`` hook at this server."""
        return json.dumps({"conn_type": "slackwebhook", "host": self.base_url, "password": self.token})

    @property
    def api_url(self) -> str:
        """``http://127.0.0.1:PORT/api/`` (the Web API base URL for a ``slack`` connection)."""
        return f"http://127.0.0.1:{self.port}/api/"

    def bot_conn_json(self, channel: str | None = "#recsys-alerts") -> str:
        """JSON for ``AIRFLOW_CONN_<ID>``: a bot-token ``slack`` connection using this server."""
        extra: dict[str, Any] = {"base_url": self.api_url}
        if channel:
            extra["channel"] = channel
        return json.dumps({"conn_type": "slack", "password": self.bot_token, "extra": extra})

    # -- recording ---------------------------------------------------------- #
    def _record(self, request: RecordedRequest) -> None:
        with self._arrived:
            self.requests.append(request)
            self._arrived.notify_all()

    def wait_for(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Block until at least ``count`` requests arrived; ``False`` on timeout."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self.requests) >= count, timeout)

    @property
    def payloads(self) -> list[Any]:
        """Parsed JSON bodies of all requests, in arrival order."""
        with self._lock:
            return [r.json for r in self.requests]

    # -- lifecycle ---------------------------------------------------------- #
    def stop(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._stopping.is_set():
            return
        self._stopping.set()  # wakes handlers sleeping in ``delay``
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeSlack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
