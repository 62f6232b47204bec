"""Tests for include.recsys.notify.callbacks (Slack alerting) against a local fake Slack server."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from include.recsys.notify.blocks import EXCERPT_CHARS, failure_blocks, gate_blocks
from include.recsys.notify.callbacks import (
    NOTIFY_SUCCESS_ENV,
    dag_success_callback,
    task_failure_callback,
)
from include.recsys.notify.slack import CONN_ID_ENV, send_slack
from tests.fakes.slack_server import FakeSlack

REPO_ROOT = Path(__file__).resolve().parents[3]


def _all_text(payload: dict) -> str:
    """Everything a human could read in a payload, as one string."""
    return json.dumps(payload, ensure_ascii=False)


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def conn_id(slack: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> str:
    """A unique Airflow connection id (env var) pointing at the fake server."""
    cid = f"slack_test_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{cid.upper()}", slack.conn_json())
    return cid


def _failure_payload(**overrides: object) -> dict:
    kwargs: dict = dict(
        dag_id="recsys_nightly",
        task_id="train_als",
        run_id="scheduled__2025-01-02T00:00:00+00:00",
        try_number=3,
        logical_date=datetime(2025, 1, 2, tzinfo=timezone.utc),
        error_type="ValueError",
        error_excerpt="interaction matrix is empty",
    )
    kwargs.update(overrides)
    return failure_blocks(**kwargs)


# --------------------------------------------------------------------------- #
# Payload builders
# --------------------------------------------------------------------------- #


def test_failure_blocks_contains_dag_task_run_and_error() -> None:
    payload = _failure_payload(log_url="http://airflow/log", mlflow_url="http://mlflow/run/1")

    assert set(payload) == {"text", "blocks"}
    for needle in ("recsys_nightly", "train_als", "scheduled__2025-01-02T00:00:00+00:00", "ValueError"):
        assert needle in payload["text"]
    body = _all_text(payload)
    for needle in ("interaction matrix is empty", "2025-01-02T00:00:00+00:00", "*Try*\\n3"):
        assert needle in body
    urls = [e["url"] for b in payload["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert urls == ["http://airflow/log", "http://mlflow/run/1"]
    assert payload["blocks"][0]["type"] == "header"
    assert len(payload["blocks"][0]["text"]["text"]) <= 150


def test_failure_blocks_optional_links_and_limits() -> None:
    payload = _failure_payload(
        dag_id="d" * 300, try_number=None, logical_date=None, error_excerpt="x" * 10_000
    )
    assert not [b for b in payload["blocks"] if b["type"] == "actions"]
    assert len(payload["blocks"][0]["text"]["text"]) <= 150
    code = [b for b in payload["blocks"] if b["type"] == "section" and "text" in b][0]["text"]["text"]
    assert code.startswith("```") and code.endswith("```")
    assert len(code) <= EXCERPT_CHARS + 10
    assert "n/a" in _all_text(payload)


def test_failure_blocks_escapes_and_redacts() -> None:
    payload = _failure_payload(
        error_excerpt=(
            "a <b> & c ``` "
            "https://hooks.slack.com/services/T1/B2/abcdef "
            "postgresql://user:s3cr3tpw@db:5432/x token=xoxb-123-456 password='hunter2'"
        )
    )
    body = _all_text(payload)
    assert "&lt;b&gt; &amp; c" in body
    for secret in ("abcdef", "s3cr3tpw", "xoxb-123-456", "hunter2"):
        assert secret not in body


def test_gate_blocks_table() -> None:
    reasons = [
        {"rule": "ndcg@10_min", "observed": 0.123456, "bound": 0.15, "passed": False},
        {"rule": "coverage_min", "observed": 0.4, "bound": 0.3, "passed": True},
        {"rule": "row_count", "observed": 1000, "bound": [10, 10_000], "passed": True},
    ]
    payload = gate_blocks(
        dag_id="recsys_nightly", run_id="r1", verdict="FAIL", reasons=reasons, report_path="/data/gate.json"
    )
    assert "FAIL" in payload["text"] and "recsys_nightly" in payload["text"]
    assert "1/3" in payload["text"] and "ndcg@10_min" in payload["text"]
    table = [b for b in payload["blocks"] if b["type"] == "section" and "text" in b][0]["text"]["text"]
    assert table.startswith("```") and table.endswith("```")
    lines = table.strip("`").splitlines()
    assert lines[0].split() == ["rule", "observed", "bound", "result"]
    assert lines[2].split() == ["ndcg@10_min", "0.1235", "0.15", "FAIL"]
    assert lines[4].split()[-1] == "PASS" and "[10, 10000]" in lines[4]
    assert "/data/gate.json" in _all_text(payload)


def test_gate_blocks_pass_and_empty() -> None:
    payload = gate_blocks(dag_id="d", run_id="r", verdict="PASS", reasons=[])
    assert ":white_check_mark:" in payload["text"]
    assert "0/0" in payload["text"]


def test_builders_do_not_import_airflow() -> None:
    code = (
        "import sys; from include.recsys.notify import blocks; "
        "blocks.failure_blocks(dag_id='d', task_id='t', run_id='r', try_number=1, logical_date=None, "
        "error_type='E', error_excerpt='x'); "
        "blocks.gate_blocks(dag_id='d', run_id='r', verdict='FAIL', reasons=[]); "
        "print(any(m == 'airflow' or m.startswith('airflow.') for m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=60,
    )
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- #
# send_slack
# --------------------------------------------------------------------------- #


def test_send_slack_delivers_one_request(slack: FakeSlack, conn_id: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    payload = _failure_payload()

    assert send_slack(payload, conn_id) is True

    assert len(slack.requests) == 1
    req = slack.requests[0]
    assert req.method == "POST"
    assert req.path == f"/services/{slack.token}"
    assert req.headers["Content-Type"].startswith("application/json")
    assert req.json == payload
    assert slack.token not in caplog.text and slack.url not in caplog.text


def test_send_slack_password_as_full_url(slack: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> None:
    cid = f"slack_test_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{cid.upper()}", json.dumps({"conn_type": "slackwebhook", "password": slack.url})
    )
    assert send_slack({"text": "hi"}, cid) is True
    assert [r.json for r in slack.requests] == [{"text": "hi"}]


def test_send_slack_missing_connection(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="include.recsys.notify.callbacks")
    cid = f"slack_missing_{uuid.uuid4().hex[:8]}"

    assert send_slack({"text": "nightly failed"}, cid) is False

    assert f"Slack connection '{cid}' not configured; alert not sent: nightly failed" in caplog.text


def test_send_slack_connection_without_password(
    slack: FakeSlack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The provider hook requires ``password``: a host-only connection is rejected, not sent."""
    cid = f"slack_test_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{cid.upper()}", json.dumps({"conn_type": "slackwebhook", "host": slack.url})
    )
    caplog.set_level(logging.DEBUG)
    assert send_slack({"text": "x"}, cid) is False
    assert slack.requests == []
    assert "alert not sent" in caplog.text
    assert slack.token not in caplog.text


def test_send_slack_http_500(slack: FakeSlack, conn_id: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    slack.status = 500

    assert send_slack({"text": "x"}, conn_id) is False

    assert len(slack.requests) == 1  # no retries
    assert "500" in caplog.text
    assert slack.token not in caplog.text


def test_send_slack_server_down(slack: FakeSlack, conn_id: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    slack.stop()
    start = time.monotonic()

    assert send_slack({"text": "x"}, conn_id, timeout=1.0) is False

    assert time.monotonic() - start < 2.0
    assert slack.token not in caplog.text


def test_send_slack_slow_server_times_out(
    slack: FakeSlack, conn_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    slack.delay = 5.0
    start = time.monotonic()

    assert send_slack({"text": "x"}, conn_id, timeout=0.5) is False

    elapsed = time.monotonic() - start
    assert 0.4 <= elapsed < 2.0, elapsed
    assert slack.token not in caplog.text


def test_send_slack_never_logs_url(
    slack: FakeSlack, conn_id: str, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    send_slack({"text": "ok"}, conn_id)
    slack.status = 403
    send_slack({"text": "forbidden"}, conn_id)
    slack.stop()
    send_slack({"text": "down"}, conn_id, timeout=0.5)

    out, err = capfd.readouterr()
    for text in (caplog.text, out, err):
        assert slack.token not in text
        assert slack.base_url not in text
    assert "alert not sent" in caplog.text


# --------------------------------------------------------------------------- #
# task_failure_callback (in-process)
# --------------------------------------------------------------------------- #


def test_callback_tolerates_empty_context(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(CONN_ID_ENV, f"slack_missing_{uuid.uuid4().hex[:8]}")
    caplog.set_level(logging.WARNING, logger="include.recsys.notify.callbacks")
    assert task_failure_callback({}) is None
    assert task_failure_callback(None) is None  # type: ignore[arg-type]
    assert "not configured; alert not sent" in caplog.text


def test_callback_sends_from_context(slack: FakeSlack, conn_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONN_ID_ENV, conn_id)

    class _TI:
        dag_id, task_id, run_id, try_number = "dag_a", "task_b", "run_c", 2

        @property
        def log_url(self) -> str:
            raise RuntimeError("no api base url")  # must be tolerated

    err = RuntimeError("x" * 2000 + " api_key=abcdef123456 tail-marker")
    task_failure_callback(
        {"ti": _TI(), "exception": err, "logical_date": datetime(2025, 1, 1, tzinfo=timezone.utc)}
    )

    assert len(slack.requests) == 1
    body = _all_text(slack.requests[0].json)
    for needle in ("dag_a", "task_b", "run_c", "RuntimeError", "tail-marker", "2025-01-01"):
        assert needle in body
    assert "abcdef123456" not in body
    assert "*Try*\\n2" in body


def test_callback_string_exception_and_dag_run_fallbacks(
    slack: FakeSlack, conn_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONN_ID_ENV, conn_id)
    task_failure_callback(
        {
            "dag": SimpleNamespace(dag_id="dag_x"),
            "task": SimpleNamespace(task_id="task_y"),
            "dag_run": SimpleNamespace(run_id="run_z", logical_date=None),
            "exception": "Task received SIGTERM",
        }
    )
    assert len(slack.requests) == 1
    text = slack.requests[0].json["text"]
    assert "dag_x.task_y" in text and "run_z" in text and "SIGTERM" in text


# --------------------------------------------------------------------------- #
# Real Airflow: dag.test() in a subprocess
# --------------------------------------------------------------------------- #

_DAG_FILE = textwrap.dedent(
    '''
    from __future__ import annotations

    import sys
    from datetime import datetime, timedelta

    from airflow.sdk import DAG, task

    from include.recsys.notify.callbacks import task_failure_callback


    def _on_retry(context):
        print("ON_RETRY_CALLBACK try=%s" % context["ti"].try_number, flush=True)


    with DAG(
        "alerts_smoke_fail",
        schedule=None,
        start_date=datetime(2024, 1, 1),
        catchup=False,
        default_args={"retries": 0, "on_failure_callback": task_failure_callback},
    ) as dag_fail:

        @task
        def explode():
            raise ValueError("boom: feature matrix is empty")

        explode()

    with DAG(
        "alerts_smoke_retry",
        schedule=None,
        start_date=datetime(2024, 1, 1),
        catchup=False,
        default_args={
            "retries": 1,
            "retry_delay": timedelta(seconds=0),
            "on_failure_callback": task_failure_callback,
            "on_retry_callback": _on_retry,
        },
    ) as dag_retry:

        @task
        def explode_twice():
            raise RuntimeError("still broken")

        explode_twice()

    if __name__ == "__main__":
        dag = {"fail": dag_fail, "retry": dag_retry}[sys.argv[1]]
        dr = dag.test()
        print("DAG_RUN_RESULT " + f"{dr.state} {dr.run_id}", flush=True)
    '''
)


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An isolated AIRFLOW_HOME with a migrated sqlite DB and a dags folder holding the smoke DAGs."""
    home = tmp_path_factory.mktemp("airflow_home")
    dags = home / "dags"
    dags.mkdir()
    (dags / "alerts_smoke.py").write_text(_DAG_FILE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RECSYS_"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        PYTHONPATH=str(REPO_ROOT),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=env, cwd=home, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return env


def _run_dag_test(env: dict[str, str], slack: FakeSlack, which: str) -> tuple[str, str, str]:
    """Run the smoke DAG ``which`` with dag.test(); return (state, run_id, output)."""
    proc = subprocess.run(
        [sys.executable, str(Path(env["AIRFLOW__CORE__DAGS_FOLDER"]) / "alerts_smoke.py"), which],
        env={**env, "AIRFLOW_CONN_SLACK_ALERTS": slack.conn_json()},
        cwd=env["AIRFLOW_HOME"], capture_output=True, text=True, timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    result = [line for line in proc.stdout.splitlines() if line.startswith("DAG_RUN_RESULT ")]
    assert result, output[-5000:]
    _, state, run_id = result[-1].split(" ", 2)
    return state, run_id, output


def test_dag_test_failure_sends_exactly_one_message(airflow_env: dict[str, str], slack: FakeSlack) -> None:
    state, run_id, output = _run_dag_test(airflow_env, slack, "fail")

    assert state == "failed"
    assert len(slack.requests) == 1, output[-5000:]
    payload = slack.requests[0].json
    assert "alerts_smoke_fail.explode" in payload["text"]
    assert run_id in payload["text"]
    assert "try 1" in payload["text"]
    body = _all_text(payload)
    assert "ValueError" in body and "feature matrix is empty" in body
    assert slack.token not in output


def test_dag_test_retry_then_failure_sends_one_message(airflow_env: dict[str, str], slack: FakeSlack) -> None:
    """retries=1: attempt 1 -> on_retry_callback only; attempt 2 -> one failure message."""
    state, run_id, output = _run_dag_test(airflow_env, slack, "retry")

    assert state == "failed"
    assert output.count("ON_RETRY_CALLBACK try=1") == 1, output[-5000:]
    assert len(slack.requests) == 1, output[-5000:]
    text = slack.requests[0].json["text"]
    assert "alerts_smoke_retry.explode_twice" in text and run_id in text and "try 2" in text


# --- issue 16: an older run that served nothing, or older data served on purpose ------------------


def _outcome(data_dir: Path, run_id: str, outcome: dict) -> None:
    from include.recsys.core.paths import RunPaths
    from include.recsys.core.run import RunContext

    work = data_dir / "runs" / "20261118T000000Z" / RunContext("d", run_id, datetime.now(), datetime.now()).run_key
    work.mkdir(parents=True)
    RunPaths(work).publish_outcome.write_text(json.dumps(outcome))


def test_success_callback_always_says_why_an_older_run_served_nothing(
    slack: FakeSlack, conn_id: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RECSYS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(CONN_ID_ENV, conn_id)
    monkeypatch.delenv(NOTIFY_SUCCESS_ENV, raising=False)  # summaries off: still sent
    reason = ("stale: serving data up to 2026-11-21T00:00:00+00:00, this run's data ends at "
              "2026-11-18T00:00:00+00:00; not served")
    _outcome(tmp_path, "manual__2026-11-17T00:00:00+00:00", {"served": False, "reason": reason})
    _outcome(tmp_path, "backfill__x", {"served": True, "older_data": {
        "note": "OLDER DATA allowed by allow_older_data: data up to A replaces data up to B; publish by backfill__x"}})
    _outcome(tmp_path, "scheduled__ok", {"served": True})
    for run_id in ("manual__2026-11-17T00:00:00+00:00", "backfill__x", "scheduled__ok"):
        dag_success_callback({"run_id": run_id, "dag": SimpleNamespace(dag_id="recsys_nightly_retrain")})
    assert slack.wait_for(2)
    time.sleep(0.2)
    assert len(slack.requests) == 2  # the ordinary success stays opt-in
    stale, older = (r.json for r in slack.requests)
    assert stale["text"].startswith(":warning: recsys_nightly_retrain succeeded") and reason in stale["text"]
    assert "published nothing" in stale["text"] and reason in _all_text(stale["blocks"])
    assert "OLDER DATA allowed by allow_older_data" in older["text"]
