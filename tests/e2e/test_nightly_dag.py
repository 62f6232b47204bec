"""End to end: the real DAG through ``dag.test()`` on small generated data, real MLflow
(SQLite tracking + registry), real GX, real Parquet, and a fake Slack webhook on 127.0.0.1.

The runs share one lake and registry and build on each other, in order:
first publish -> second run judged against the first champion -> gate FAIL -> bad source
-> dry run. After every failure the previously published table must still be served.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.e2e._env import ROOT, airflow_env, current, run_demo
from tests.fakes.slack_server import FakeSlack

pytestmark = pytest.mark.e2e



@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    slack = FakeSlack()
    yield {"env": airflow_env(base, slack), "base": base, "slack": slack, "data": base / "data"}
    slack.stop()


def champion_version(env) -> str | None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{env['data'] / 'mlflow' / 'mlflow.db'}")
    try:
        return str(client.get_model_version_by_alias("recsys_als", "champion").version)
    except Exception:
        return None


def test_first_run_publishes_a_complete_table(env):
    r = run_demo(env)
    assert r["state"] == "success", r["stdout"][-3000:]
    assert r["returncode"] == 0
    assert set(r["tasks"].values()) == {"success"}
    version = current(env)
    assert version and version in r["stdout"]
    folder = env["data"] / "recommendations" / f"version={version}"
    manifest = json.loads((folder / "_manifest.json").read_text())
    table = pd.read_parquet(sorted(folder.glob("part-*.parquet")))
    n = manifest["top_n"]
    # every snapshot user has exactly N distinct ranked items, none already seen
    per_user = table.groupby("user_id")["item_id"].agg(["count", "nunique"])
    assert (per_user["count"] == n).all() and (per_user["nunique"] == n).all()
    assert (table.groupby("user_id")["rank"].apply(lambda s: sorted(s) == list(range(1, n + 1)))).all()
    assert table["user_id"].is_monotonic_increasing
    run_dir = next((env["data"] / "runs").glob(f"*/{r['run_id'].replace(':', '_').replace('+', '_')}"))
    snap = pd.read_parquet(run_dir / "snapshot" / "interactions.parquet", columns=["user_id", "item_id"])
    assert per_user.shape[0] == snap["user_id"].nunique()
    seen = pd.MultiIndex.from_frame(snap.drop_duplicates())
    assert not pd.MultiIndex.from_frame(table[["user_id", "item_id"]]).isin(seen).any()
    assert manifest["rows"] == len(table) and manifest["gate"]["verdict"] == "PASS"
    assert manifest["mlflow_run_id"] == r["summary"]["mlflow_run_id"]
    assert champion_version(env) == manifest["model_version"] == "1"
    assert "input validation : PASSED" in r["stdout"]
    assert env["slack"].requests == []  # success sends nothing by default


def test_second_run_is_judged_against_the_champion(env):
    first = current(env)
    r = run_demo(env)
    assert r["state"] == "success", r["stdout"][-3000:]
    ev = r["summary"]["evaluation"]
    assert ev["champion_version"] == "1"
    assert "champion" in ev["metrics"]
    rules = {x["name"]: x for x in r["summary"]["gate"]["rules"]}
    assert rules["no_regression"]["bound"] is not None and "champion" in rules["no_regression"]["note"]
    assert current(env) != first
    assert champion_version(env) == "2"
    # the previous version is kept for rollback
    assert (env["data"] / "recommendations" / f"version={first}" / "_manifest.json").exists()


def test_gate_failure_publishes_nothing_and_alerts(env):
    before, champ = current(env), champion_version(env)
    n_alerts = len(env["slack"].requests)
    r = run_demo(env, extra_env={"RECSYS_GATE_MIN_METRIC": "0.99"})
    assert r["state"] == "failed"
    assert r["tasks"]["gate"] == "failed"
    assert r["tasks"]["publish"] in ("upstream_failed", "skipped")
    assert r["summary"]["gate"]["verdict"] == "FAIL"
    assert current(env) == before and champion_version(env) == champ
    assert env["slack"].wait_for(n_alerts + 1)
    msgs = env["slack"].payloads[n_alerts:]
    assert len(msgs) == 1  # one message per failure, not per retry
    text = json.dumps(msgs[0])
    assert "Gate FAIL" in text and "floor" in text  # the rule table, not just a traceback
    assert r["summary"]["run_card"] in text and Path(r["summary"]["run_card"]).exists()  # written before failing
    assert "recsys_nightly_retrain" in text and r["run_id"] in text


def test_bad_source_fails_clearly_and_keeps_the_table(env):
    before = current(env)
    n_alerts = len(env["slack"].requests)
    r = run_demo(env, "--conf", json.dumps({"source_path": "/nonexistent/interactions"}))
    assert r["state"] == "failed"
    assert r["tasks"]["snapshot"] == "failed"
    assert current(env) == before
    assert env["slack"].wait_for(n_alerts + 1)
    msgs = env["slack"].payloads[n_alerts:]
    assert len(msgs) == 1  # a data error is not retried
    text = json.dumps(msgs[0])
    assert "snapshot" in text and "/nonexistent/interactions" in text and "does not exist" in text
    assert r["run_id"] in text and "recsys_nightly_retrain" in text


def test_dry_run_evaluates_but_never_publishes(env):
    before, champ = current(env), champion_version(env)
    r = run_demo(env, "--conf", json.dumps({"dry_run": True, "factors": 8}))
    assert r["state"] == "success"
    assert r["tasks"]["gate"] == "success"
    assert r["tasks"]["register"] == "skipped" and r["tasks"]["publish"] == "skipped"
    assert current(env) == before and champion_version(env) == champ
    assert r["summary"]["gate"]["verdict"] == "PASS"


def test_rollback_dag_moves_table_and_champion_back_together(env):
    from include.recsys.tables.current import history
    from include.recsys.tables.manifest import read_manifest

    root = env["data"] / "recommendations"
    before = current(env)
    previous = history(root)[-1]["previous"]
    code = (
        "import importlib.util, pathlib, sys, json\n"
        f"spec = importlib.util.spec_from_file_location('rb', {str(ROOT / 'dags' / 'recsys_rollback.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "dr = m.rollback_dag.test(run_conf={'reason': 'e2e test'})\n"
        "print('STATE', getattr(dr.state, 'value', dr.state))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env["env"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert "STATE success" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert current(env) == previous != before
    expected_model = read_manifest(root, previous)["model_version"]
    assert champion_version(env) == expected_model
    last = history(root)[-1]
    assert last["reason"] == "rollback" and last["version"] == previous and last["previous"] == before


def test_force_publish_publishes_a_failed_gate_loudly(env):
    """force_publish on a gate FAIL: the run publishes, the verdict stays FAIL with forced=true in
    gate.json, the manifest, the MLflow run and the run card, and Slack gets one warning."""
    import mlflow

    before = current(env)
    n_alerts = len(env["slack"].requests)
    r = run_demo(env, "--conf", json.dumps({"force_publish": True}), extra_env={"RECSYS_GATE_MIN_METRIC": "0.99"})
    assert r["state"] == "success", r["stdout"][-3000:]
    assert r["tasks"]["gate"] == "success" and r["tasks"]["validate_output"] == "success"
    assert r["tasks"]["publish"] == "success"
    gate = r["summary"]["gate"]
    assert gate["verdict"] == "FAIL" and gate["forced"] is True
    assert "FORCED by force_publish" in r["stdout"]
    version = current(env)
    assert version != before
    manifest = json.loads((env["data"] / "recommendations" / f"version={version}" / "_manifest.json").read_text())
    assert manifest["gate"] == {"verdict": "FAIL", "metric": "ndcg@10", "forced": True}
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{env['data'] / 'mlflow' / 'mlflow.db'}")
    tags = client.get_run(manifest["mlflow_run_id"]).data.tags
    assert tags["gate_verdict"] == "FAIL" and tags["gate_forced"] == "true"
    mv = client.get_model_version("recsys_als", manifest["model_version"])
    assert mv.tags["gate_forced"] == "true" and mv.tags["run_card_status"] == "present"
    card = Path(r["summary"]["run_card"])
    text = card.read_text()
    assert "FORCED" in text and version in text and "https://" not in text  # refreshed after publish
    assert env["slack"].wait_for(n_alerts + 1)
    msgs = env["slack"].payloads[n_alerts:]
    assert len(msgs) == 1 and "FORCED" in msgs[0]["text"] and str(card) in json.dumps(msgs[0])
