"""Alerts beyond the webhook basics: bot-token (chat.postMessage) connections, retries that stay
quiet, the SKIPPED gate alert, the opt-in success summary, the MLflow link, freshness checks."""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from include.recsys.notify.blocks import gate_blocks
from include.recsys.notify.callbacks import (
    MLFLOW_UI_ENV,
    NOTIFY_SUCCESS_ENV,
    dag_success_callback,
    mlflow_run_url,
    send_gate_verdict,
    task_failure_callback,
    task_retry_callback,
)
from include.recsys.notify.slack import CHANNEL_ENV, CONN_ID_ENV, send_slack
from include.recsys.stages.freshness_check import run_check
from include.recsys.tables import freshness
from include.recsys.tables.current import point_current
from include.recsys.tables.versions import write_version
from tests.fakes.slack_server import FakeSlack
from tests.faults import _helpers as h


@pytest.fixture
def slack():
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def bot_conn(slack: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> str:
    cid = f"slack_bot_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{cid.upper()}", slack.bot_conn_json(channel="#recsys-alerts"))
    return cid


@pytest.fixture
def hook_conn(slack: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> str:
    cid = f"slack_hook_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{cid.upper()}", slack.conn_json())
    monkeypatch.setenv(CONN_ID_ENV, cid)
    return cid


# --- bot token: chat.postMessage -------------------------------------------------------------


def test_bot_token_posts_chat_message(slack, bot_conn, caplog, capfd) -> None:
    caplog.set_level(logging.DEBUG)
    payload = gate_blocks(dag_id="d", run_id="r", verdict="FAIL", reasons=[])
    assert send_slack(payload, bot_conn) is True
    assert len(slack.requests) == 1
    req = slack.requests[0]
    assert req.path == "/api/chat.postMessage"
    assert req.headers["Authorization"] == f"Bearer {slack.bot_token}"
    assert req.json["channel"] == "#recsys-alerts"
    assert req.json["text"] == payload["text"] and req.json["blocks"] == payload["blocks"]
    out, err = capfd.readouterr()
    for text in (caplog.text, out, err):
        assert slack.bot_token not in text  # the token never reaches a log


def test_bot_token_channel_from_env(slack, monkeypatch) -> None:
    cid = f"slack_bot_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{cid.upper()}", slack.bot_conn_json(channel=None))
    assert send_slack({"text": "x"}, cid) is False  # no channel anywhere: refused, logged
    assert slack.requests == []
    monkeypatch.setenv(CHANNEL_ENV, "#ops")
    assert send_slack({"text": "x"}, cid) is True
    assert slack.requests[0].json["channel"] == "#ops"


def test_bot_token_invalid_auth_is_logged_masked(slack, monkeypatch, caplog, capfd) -> None:
    send_slack({"text": "warm-up"}, "slack_missing_conn")  # Airflow configures logging
    caplog.set_level(logging.DEBUG)
    cid = f"slack_bot_{uuid.uuid4().hex[:8]}"
    wrong = "xoxb-999999-888888-FAKEwrongBotSecret42"
    conn = json.loads(slack.bot_conn_json())
    conn["password"] = wrong
    monkeypatch.setenv(f"AIRFLOW_CONN_{cid.upper()}", json.dumps(conn))
    assert send_slack({"text": "x"}, cid) is False
    out, err = capfd.readouterr()
    logged = caplog.text + out + err
    assert "invalid_auth" in logged
    assert wrong not in logged and "FAKEwrongBotSecret42" not in logged


def test_bot_token_slow_server_times_out(slack, bot_conn, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    slack.delay = 5.0
    t0 = time.monotonic()
    assert send_slack({"text": "x"}, bot_conn, timeout=0.5) is False
    assert time.monotonic() - t0 < 2.0
    assert "timed out" in caplog.text or "failed" in caplog.text
    assert slack.bot_token not in caplog.text


def test_bot_token_server_down(slack, bot_conn, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    slack.stop()
    t0 = time.monotonic()
    assert send_slack({"text": "x"}, bot_conn, timeout=1.0) is False
    assert time.monotonic() - t0 < 2.5
    assert slack.bot_token not in caplog.text


def test_bot_token_http_500_no_retry(slack, bot_conn) -> None:
    slack.status = 500
    assert send_slack({"text": "x"}, bot_conn) is False
    assert len(slack.requests) == 1


# --- callbacks -------------------------------------------------------------------------------


def test_retry_callback_logs_and_posts_nothing(slack, hook_conn, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="include.recsys.notify.callbacks")
    ti = SimpleNamespace(dag_id="d", task_id="t", run_id="r", try_number=1)
    task_retry_callback({"ti": ti, "exception": ConnectionError("store unavailable")})
    assert "attempt 1 of d.t (run r) failed with ConnectionError" in caplog.text
    assert "no alert sent" in caplog.text
    time.sleep(0.2)
    assert slack.requests == []


def test_failure_callback_adds_mlflow_link_from_train_xcom(slack, hook_conn, monkeypatch) -> None:
    monkeypatch.setenv(MLFLOW_UI_ENV, "http://mlflow.example:5000/")

    class TI:
        dag_id, task_id, run_id, try_number, log_url = "d", "evaluate", "r", 3, "http://af/log"

        def xcom_pull(self, task_ids):
            assert task_ids == "train"
            return {"mlflow_run_id": "0123abcd", "bundle": "/x"}

    task_failure_callback({"ti": TI(), "exception": RuntimeError("boom")})
    buttons = [e["url"] for b in slack.requests[0].json["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert buttons == ["http://af/log", "http://mlflow.example:5000/#/runs/0123abcd"]


def test_mlflow_link_omitted_without_ui_url(monkeypatch) -> None:
    monkeypatch.delenv(MLFLOW_UI_ENV, raising=False)
    assert mlflow_run_url("abc") is None
    monkeypatch.setenv(MLFLOW_UI_ENV, "http://m")
    assert mlflow_run_url(None) is None
    assert mlflow_run_url("bad id/../x") is None
    assert mlflow_run_url("abc") == "http://m/#/runs/abc"


def test_gate_fail_alert_names_the_run_card(slack, hook_conn) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from include.recsys.errors import GateFailed
    from include.recsys.validation.gate import GateResult, Rule

    err = GateFailed(GateResult("FAIL", "ndcg@10", [Rule("floor", False, 0.01, 0.5, "")]))
    err.report_path = "/data/runs/X/r/gate.json"
    try:
        raise AirflowFailException("gate") from err
    except AirflowFailException as exc:
        task_failure_callback({"run_id": "r", "dag": SimpleNamespace(dag_id="d"), "exception": exc})
    body = json.dumps(slack.requests[0].json)
    assert "Gate FAIL" in body and "floor" in body and "/data/runs/X/r/gate.json" in body


def test_gate_skipped_sends_rule_table(slack, hook_conn) -> None:
    verdict = {
        "verdict": "SKIPPED", "metric": "ndcg@10", "path": "/data/runs/X/r/gate.json",
        "rules": [{"name": "min_users", "passed": False, "observed": 3, "bound": 20, "note": ""}],
    }
    assert send_gate_verdict(verdict, dag_id="recsys_nightly_retrain", run_id="r1") is True
    msg = slack.requests[0].json
    assert "Gate SKIPPED" in msg["text"] and "min_users" in msg["text"]
    assert "/data/runs/X/r/gate.json" in json.dumps(msg)


def test_success_summary_is_opt_in(slack, hook_conn, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("RECSYS_RECOMMENDATIONS_DIR", str(tmp_path / "recs"))
    write_version(tmp_path / "recs", "v1", h.table("v1"), h.fallback("v1"),
                      {"model_version": "4", "airflow_run_id": "run_ok"})
    point_current(tmp_path / "recs", "v1")
    ctx = {"run_id": "run_ok", "dag": SimpleNamespace(dag_id="recsys_nightly_retrain")}
    monkeypatch.delenv(NOTIFY_SUCCESS_ENV, raising=False)
    dag_success_callback(ctx)
    time.sleep(0.2)
    assert slack.requests == []  # off by default
    monkeypatch.setenv(NOTIFY_SUCCESS_ENV, "true")
    dag_success_callback(ctx)
    assert len(slack.requests) == 1
    msg = slack.requests[0].json
    assert "succeeded" in msg["text"] and "published v1" in msg["text"]


# --- freshness -------------------------------------------------------------------------------


def _aged(root: Path, version: str, hours: float) -> None:
    h.publish(root, version)
    h.set_commit_time(root, (datetime.now(timezone.utc) - timedelta(hours=hours)).isoformat())


def test_freshness_rules(tmp_path) -> None:
    s = freshness.FreshnessSettings(max_age_hours=30, deadline_utc=datetime.strptime("06:00", "%H:%M").time())
    root = tmp_path / "recs"
    now = datetime(2026, 11, 23, 7, 0, tzinfo=timezone.utc)
    assert freshness.check(root, s, now).codes == ["missing"]
    h.publish(root, "v1")

    def at(ts: str) -> freshness.FreshnessResult:
        h.set_commit_time(root, ts)
        return freshness.check(root, s, now)

    assert at("2026-11-23T00:40:00+00:00").ok  # tonight's publish
    assert at("2026-11-22T00:40:00+00:00").codes == ["too_old", "deadline_missed"]  # 30.3 h > 30 h
    r = at("2026-11-22T02:00:00+00:00")
    assert r.codes == ["deadline_missed"] and 28 < r.age_hours < 30
    assert at("2026-11-21T00:00:00+00:00").codes == ["too_old", "deadline_missed"]
    early = freshness.check(root, s, datetime(2026, 11, 23, 5, 0, tzinfo=timezone.utc))
    assert early.codes == ["too_old"]  # before the deadline only the age counts


def test_freshness_alert_once_then_realert(slack, hook_conn, tmp_path) -> None:
    root = tmp_path / "recs"
    _aged(root, "v1", hours=50)
    s = freshness.FreshnessSettings(max_age_hours=30, deadline_utc=None, realert_hours=6)
    now = datetime.now(timezone.utc)
    assert run_check(root, s, now)["alerted"] is True
    assert run_check(root, s, now + timedelta(hours=1))["alerted"] is False
    assert run_check(root, s, now + timedelta(hours=7))["alerted"] is True
    assert len(slack.requests) == 2
    assert "stale" in slack.requests[0].json["text"]
    h.publish(root, "v2")  # fresh again: state cleared, nothing posted
    assert run_check(root, s)["ok"] is True
    assert len(slack.requests) == 2 and not (root / freshness.STATE_FILE).exists()


def test_freshness_switch_off(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(freshness.ENABLED_ENV, "false")
    assert run_check(tmp_path / "nothing") == {"enabled": False}


def test_freshness_dag_is_switchable(monkeypatch) -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[3] / "dags" / "recsys_freshness_check.py"

    def load():
        spec = importlib.util.spec_from_file_location(f"fc_{uuid.uuid4().hex[:6]}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.freshness_dag

    monkeypatch.delenv(freshness.ENABLED_ENV, raising=False)
    on = load()
    assert on.max_active_runs == 1 and on.catchup is False
    assert on.timetable.can_be_scheduled  # hourly by default
    assert type(on.timetable).__name__ == "CronTriggerTimetable"
    monkeypatch.setenv(freshness.ENABLED_ENV, "false")
    assert not load().timetable.can_be_scheduled  # switched off: no schedule


def test_validation_alert_names_the_data_docs(tmp_path):
    """A refused snapshot's Slack message carries the rule table and where its Data Docs are."""
    import json

    from include.recsys.errors import DataValidationError
    from include.recsys.notify.callbacks import _domain_payload

    class Report:
        errors = [{"column": "user_id", "check": "not null", "unexpected_count": 3, "severity": "error"}]
        data_docs = str(tmp_path / "validation" / "data_docs" / "input" / "index.html")

    exc = RuntimeError("AirflowFailException")
    exc.__cause__ = DataValidationError("user_id: 3 nulls", Report())
    text = json.dumps(_domain_payload(exc, "recsys_nightly_retrain", "run-1"))
    assert "INPUT VALIDATION FAILED" in text and "user_id" in text
    assert Report.data_docs in text
