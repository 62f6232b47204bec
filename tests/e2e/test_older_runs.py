"""Runs for older data intervals through the real DAG (``dag.test()``, real MLflow, GX,
Parquet, a fake Slack on 127.0.0.1): publish never moves CURRENT or ``champion`` back to older
data, the older run still succeeds and says why it did not serve.

One lake and registry, in order:

1. day D-3 publishes (nothing newer is served yet);
2. day D publishes, judged against the D-3 champion (a fair comparison: trained before D's holdout);
3. the publish stage of run 1 run again through the DAG's ``_run`` with run 1's context and
   XComs from the metadata DB (a clear / retry after D published): refused, nothing moves;
4. day D-3 again, with ``force_publish`` (``dag.test`` of an older interval after the newer
   one; it replaces run 1, Airflow keeps one run per logical date): judged against the D
   champion, which trained on this holdout, so the champion rules are SKIPPED (no false
   regression); publish refuses the older data: CURRENT and champion unchanged, the run
   succeeds, its summary, run card, MLflow run and Slack say "stale: ...".
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest

from tests.e2e._env import DATA_END, ROOT, airflow_env, current, run_demo
from tests.fakes.slack_server import FakeSlack

pytestmark = pytest.mark.e2e

DAY_D = (date.fromisoformat(DATA_END) + timedelta(days=1)).isoformat()  # the demo's default
DAY_OLD = (date.fromisoformat(DAY_D) - timedelta(days=3)).isoformat()
STALE = "stale: serving data up to "


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e_older")
    slack = FakeSlack()
    e = airflow_env(base, slack, RECSYS_TASK_RETRIES="0")
    yield {"env": e, "base": base, "slack": slack, "data": base / "data", "runs": {}}
    slack.stop()


def client(env):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{env['data'] / 'mlflow' / 'mlflow.db'}")


def champion(env) -> str | None:
    try:
        return str(client(env).get_model_version_by_alias("recsys_als", "champion").version)
    except Exception:
        return None


def manifest(env, version: str) -> dict:
    return json.loads((env["data"] / "recommendations" / f"version={version}" / "_manifest.json").read_text())


def test_an_older_day_publishes_while_nothing_newer_is_served(env):
    r = run_demo(env, "--logical-date", DAY_OLD)
    assert r["state"] == "success", r["stdout"][-3000:]
    version = current(env)
    m = manifest(env, version)
    assert m["airflow_run_id"] == r["run_id"] and champion(env) == m["model_version"] == "1"
    assert m["data_interval"]["end"] == m["data_window"]["end"]  # both recorded
    tags = client(env).get_model_version("recsys_als", "1").tags
    assert tags["data_window_end"] == m["data_window"]["end"] and tags["train_data_end"] < tags["data_window_end"]
    env["runs"]["old"] = r


def test_the_newer_day_publishes_and_is_judged_fairly(env):
    r = run_demo(env)
    assert r["state"] == "success", r["stdout"][-3000:]
    rules = {x["name"]: x for x in r["summary"]["gate"]["rules"]}
    # the D-3 champion trained before D's holdout: compared as usual
    assert r["summary"]["evaluation"]["champion_comparison"]["fair"] is True
    assert rules["no_regression"]["result"] in ("PASS", "FAIL") and "not compared" not in rules["no_regression"]["note"]
    assert champion(env) == manifest(env, current(env))["model_version"] == "2"
    env["runs"]["new"] = r


def test_retried_publish_of_the_older_run_after_the_newer_one_moves_nothing(env):
    """Run 1's publish again (a clear / retry after D published): the DAG's own ``_run`` with
    run 1's context (its run id, data interval, conf) and its XComs read from the metadata DB."""
    old = env["runs"]["old"]
    served, champ = current(env), champion(env)
    from include.recsys.tables.current import history

    commits = len(history(env["data"] / "recommendations"))
    code = (
        "import importlib.util, json\n"
        f"spec = importlib.util.spec_from_file_location('nightly', {str(ROOT / 'dags' / 'recsys_nightly_retrain.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "from sqlalchemy import select\n"
        "from airflow.models.dagrun import DagRun\n"
        "from airflow.models.xcom import XComModel\n"
        "from airflow.utils.session import create_session\n"
        f"RUN = {old['run_id']!r}\n"
        "with create_session() as s:\n"
        "    dr = s.scalar(select(DagRun).where(DagRun.dag_id == m.DAG_ID, DagRun.run_id == RUN))\n"
        "    def pull(task):\n"
        "        row = s.scalars(XComModel.get_many(run_id=RUN, key='return_value', task_ids=task, dag_ids=m.DAG_ID)).first()\n"
        "        return XComModel.deserialize_value(row)\n"
        "    pre, reg, model = pull('assemble_version'), pull('register'), pull('train')\n"
        "    ctx = {'params': dict(dr.conf or {}), 'run_id': RUN, 'dag_run': dr,\n"
        "           'data_interval_start': dr.data_interval_start, 'data_interval_end': dr.data_interval_end}\n"
        "    from include.recsys.stages.publish import publish\n"
        "    print('RESULT', json.dumps(m._run(publish, ctx, pre, reg, model)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env["env"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert result["served"] is False and result["moved"] is False and result["reason"].startswith(STALE)
    assert STALE in out  # the task log says why
    assert current(env) == served and champion(env) == champ
    assert len(history(env["data"] / "recommendations")) == commits  # a refusal commits nothing
    run_key = old["run_id"].replace(":", "_").replace("+", "_")
    outcome = json.loads(next((env["data"] / "runs").glob(f"*/{run_key}/publish.json")).read_text())
    assert outcome["served"] is False and outcome["reason"] == result["reason"]


def test_an_older_day_after_the_newer_one_succeeds_and_serves_nothing(env):
    served, champ = current(env), champion(env)
    served_end = manifest(env, served)["data_window"]["end"]
    n_alerts = len(env["slack"].requests)
    r = run_demo(env, "--logical-date", DAY_OLD, "--conf", json.dumps({"force_publish": True}))
    assert r["state"] == "success", r["stdout"][-3000:]
    # the stage succeeds; the DAG's task then skips itself when CURRENT did not move, so no
    # asset event wakes a consumer for a version that is not served (dags/, issue 18)
    assert r["tasks"]["publish"] in ("success", "skipped")
    assert "failed" not in r["tasks"].values()
    assert current(env) == served and champion(env) == champ  # nothing moved back
    reason = r["summary"]["not_served"]
    assert reason.startswith(f"{STALE}{served_end}, this run's data ends at ") and reason.endswith("; not served")
    assert f"not served       : {reason}" in r["stdout"]
    # the D champion trained on this older holdout: not judged against, never a false regression
    comp = r["summary"]["evaluation"]["champion_comparison"]
    assert comp["fair"] is False and comp["champion_version"] == "2"
    rules = {x["name"]: x for x in r["summary"]["gate"]["rules"]}
    assert rules["no_regression"]["result"] == "SKIP" and rules["no_regression"]["note"] == comp["reason"]
    card = Path(r["summary"]["run_card"]).read_text()
    assert "NOT SERVED" in card and STALE in card
    # the registered (unserved) model is not champion; the MLflow run says why
    run_tags = client(env).get_run(r["summary"]["mlflow_run_id"]).data.tags
    assert run_tags["not_served"] == reason and run_tags["published_version"] == "none"
    # Slack hears of it even though success summaries are opt-in
    assert env["slack"].wait_for(n_alerts + 1)
    text = json.dumps(env["slack"].payloads[n_alerts:])
    assert STALE in text and r["run_id"] in text
