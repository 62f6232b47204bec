"""The approve_release step without a scheduler: what it does when approval is off, what an
Approve / Reject / timeout answer turns into, and what the person is shown.
(tests/e2e/test_assets_approval.py answers real requests through the REST API.)"""

from __future__ import annotations

import importlib.util
import json
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from include.recsys.notify.approval import approval_request, rejection_message

ROOT = Path(__file__).resolve().parents[2]
END = datetime(2026, 11, 21, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def op():
    spec = importlib.util.spec_from_file_location("nightly_for_approval", ROOT / "dags" / "recsys_nightly_retrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.nightly_dag.get_task("approve_release")


def _ctx(**params) -> dict:
    return {
        "params": params, "run_id": "manual__approval", "dag": SimpleNamespace(dag_id="recsys_nightly_retrain"),
        "data_interval_start": datetime(2026, 11, 20, tzinfo=timezone.utc), "data_interval_end": END,
        "ti": SimpleNamespace(try_number=1),
    }


def _event(choice: str, by=None, timedout: bool = False) -> dict:
    return {"chosen_options": [choice], "params_input": {}, "responded_at": END, "responded_by_user": by,
            "timedout": timedout}


def test_off_by_default_succeeds_at_once_without_asking(op):
    out = op.execute(_ctx())  # no HITL request is written (that would need the Execution API)
    assert out["required"] is False and out["version"].startswith("20261121T000000Z-")


def test_approve_lets_publish_run(op):
    out = op.execute_complete(_ctx(require_approval=True), _event("Approve", {"id": "7", "name": "alice"}))
    assert out["approved"] is True and out["by"] == {"id": "7", "name": "alice"}


def test_reject_and_timeout_fail_without_retry_and_say_why(op):
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match="rejected by alice at 2026-11-21") as info:
        op.execute_complete(_ctx(require_approval=True), _event("Reject", {"id": "7", "name": "alice"}))
    assert "Nothing was published" in str(info.value) and "champion alias did not move" in str(info.value)
    with pytest.raises(AirflowFailException, match="no answer within 24 h: counted as Reject"):
        op.execute_complete(_ctx(require_approval=True), _event("Reject", None, timedout=True))


def test_request_shows_gate_table_metrics_vs_champion_and_run_card(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "gate.json").write_text(json.dumps({
        "verdict": "FAIL", "metric": "ndcg@10", "forced": True,
        "rules": [{"name": "floor", "passed": False, "result": "FAIL", "observed": 0.14, "bound": 0.99, "note": "a|b"}],
    }))
    (tmp_path / "eval" / "report.json").write_text(json.dumps({
        "champion_version": "3",
        "metrics": {"candidate": {"ndcg@10": 0.2, "recall@10": 0.3}, "champion": {"ndcg@10": 0.25, "recall@10": 0.3},
                    "popularity": {"ndcg@10": 0.1, "recall@10": 0.2}},
    }))
    (tmp_path / "run_card.html").write_text("<html/>")
    subject, body = approval_request(tmp_path, "v9", "v8", run_id="r1", mlflow_url="http://mlflow/#/runs/x")
    assert subject == "Publish recommendations v9? Gate FAIL (FORCED by force_publish)"
    assert "WARNING: the gate said FAIL" in body and "CURRENT serves `v8`" in body
    assert "| floor | FAIL | 0.1400 | 0.9900 | a\\|b |" in body  # a pipe in a note keeps the table intact
    assert "| ndcg@10 | 0.2000 | 0.2500 | 0.1000 | -20.0% |" in body
    assert "champion = model version 3" in body
    assert f"Run card: `{tmp_path / 'run_card.html'}`" in body and "http://mlflow/#/runs/x" in body


def test_rejection_message_names_who_or_the_timeout():
    assert "rejected by bob" in rejection_message("v2", "v1", by={"id": "1", "name": "bob"})
    assert "no answer in time" in rejection_message("v2", None, timed_out=True)
    assert "CURRENT stays at nothing" in rejection_message("v2", None, timed_out=True)
