"""End to end: Assets, the consumer DAG and the human approval, through the real DAGs.

One driver process (tests/e2e/assets_approval_driver.py) runs, on a fresh Airflow DB and lake:
A nightly without approval, B nightly approved by a person (REST API), the example consumer,
C a forced gate FAIL rejected by a person, R a rollback. Every test below reads its record.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e._env import ROOT, airflow_env
from tests.fakes.slack_server import FakeSlack

pytestmark = pytest.mark.e2e

EVENT_KEYS = {
    "version", "previous_version", "reason", "model_name", "model_version", "data_interval_start",
    "data_interval_end", "users", "rows", "gate_verdict", "gate_forced", "uri", "table", "schema", "run_id",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("assets")
    slack = FakeSlack()
    # the REST answer to the approval comes as an admin
    env = airflow_env(base, slack, AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True")
    out = base / "result.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "e2e" / "assets_approval_driver.py"), str(out)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert out.exists(), f"driver wrote nothing\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    result = json.loads(out.read_text())
    result["log"] = proc.stdout[-20000:] + proc.stderr[-20000:]
    yield {**result, "base": base, "slack": slack}
    slack.stop()


def _ok(world, step: str) -> dict:
    r = world.get(step)
    assert r is not None and "error" not in r, (r or {}).get("error") or world["log"][-5000:]
    return r


def test_publish_emits_an_asset_event_with_the_release_metadata(world):
    a = _ok(world, "A")
    assert a["state"] == "success", a["tasks"]
    assert a["tasks"]["approve_release"] == "success" and a["tasks"]["publish"] == "success"
    assert a["approve_xcom"]["required"] is False  # off: never waits for a person
    events = world["events_after_A"]
    assert len(events) == 1
    ev = events[0]
    assert (ev["dag_id"], ev["task_id"], ev["run_id"]) == ("recsys_nightly_retrain", "publish", a["run_id"])
    extra = ev["extra"]
    assert EVENT_KEYS <= set(extra)
    manifest = json.loads((world["base"] / "data" / "recommendations" / f"version={a['current']}" / "_manifest.json").read_text())
    assert extra["version"] == a["current"] and extra["previous_version"] is None
    assert extra["reason"] == "publish" and extra["gate_verdict"] == "PASS" and extra["gate_forced"] is False
    assert extra["model_name"] == "recsys_als" and extra["model_version"] == manifest["model_version"] == "1"
    assert extra["rows"] == manifest["rows"] > 0 and extra["users"] == manifest["users"] > 0
    assert extra["data_interval_end"].startswith("2026-11-21") and extra["data_interval_start"].startswith("2026-11-20")
    assert extra["uri"] == world["uri"] == (world["base"] / "data" / "recommendations").resolve().as_uri()


def test_approved_release_publishes_and_the_consumer_reads_that_version(world):
    a, b = _ok(world, "A"), _ok(world, "B")
    assert b["state"] == "success", b["tasks"]
    ask = b["approval"]
    assert ask.get("status") == 200, ask
    assert ask["second_answer_status"] == 409  # one answer per request
    assert ask["task_id"] == "approve_release" and ask["options"] == ["Approve", "Reject"]
    assert ask["defaults"] == ["Reject"]  # no answer in time counts as Reject
    assert "Gate PASS" in ask["subject"] and b["current"] in ask["subject"]
    body = ask["body"]
    assert "| rule | result |" in body and "no_regression" in body  # the gate table
    assert "| metric | candidate | champion | popularity | vs champion |" in body  # metrics vs champion
    assert "run_card.html" in body and f"CURRENT serves `{a['current']}`" in body
    assert b["approve_xcom"]["approved"] is True and b["approve_xcom"]["version"] == b["current"]
    assert b["current"] != a["current"]
    events = world["events_after_B"]
    assert len(events) == 2
    extra = events[-1]["extra"]
    assert extra["version"] == b["current"] and extra["previous_version"] == a["current"]
    assert extra["model_version"] == "2"
    # the unpaused consumer was queued by that event; the scheduler's asset-triggered run
    # consumed it and read exactly that version
    assert world["queued_for_consumer"] == 1
    t = _ok(world, "asset_triggered")
    assert t["run_type"] == "asset_triggered" and t["consumed_versions"][-1] == extra["version"]
    assert t["ti_state"] == "success", world["log"][-5000:]
    assert t["xcom"]["version"] == extra["version"]
    # a manual run of the consumer reads the newest event (the same one)
    c = _ok(world, "consumer")
    assert c["state"] == "success"
    assert c["xcom"]["version"] == extra["version"] and c["xcom"]["model_version"] == "2"
    counts = json.loads(Path(c["xcom"]["path"]).read_text())
    assert counts["rows"] == extra["rows"] and counts["users"] == extra["users"]
    assert sum(x["rows"] for x in counts["counts"]) == counts["rows"]
    assert {x["source"] for x in counts["counts"]} <= {"model", "fallback"}


def test_rejected_forced_release_publishes_nothing_and_alerts(world):
    b, c = _ok(world, "B"), _ok(world, "C")
    assert c["state"] == "failed"
    assert c["tasks"]["gate"] == "success"  # a forced FAIL goes on ...
    assert c["tasks"]["approve_release"] == "failed"  # ... to the person, who says no
    assert c["tasks"]["publish"] == "upstream_failed"
    assert c["current"] == b["current"]  # CURRENT unchanged
    assert len(world["events_after_C"]) == 2  # no event
    ask = c["approval"]
    assert ask.get("status") == 200, ask
    assert "FORCED by force_publish" in ask["subject"] and "WARNING: the gate said FAIL" in ask["body"]
    assert world["slack"].wait_for(1)
    text = json.dumps(world["slack"].payloads)
    assert "rejected by" in text and "Nothing was published" in text and b["current"] in text
    assert "approve_release" in text and c["run_id"] in text


def test_rollback_emits_the_same_event_with_reason_rollback(world):
    a, r = _ok(world, "A"), _ok(world, "R")
    assert r["state"] == "success" and r["current"] == a["current"]
    events = world["events_after_R"]
    assert len(events) == 3
    extra = events[-1]["extra"]
    assert events[-1]["dag_id"] == "recsys_rollback"
    assert extra["reason"] == "rollback" and extra["version"] == a["current"]
    assert extra["note"] == "e2e: back to the unapproved table"
    assert EVENT_KEYS <= set(extra) and extra["model_version"] == "1"
