"""End to end with ``backend=spark`` (issue 20): the real nightly DAG through ``dag.test()`` on the
demo data, the engine reached through the Spark provider's connection ``spark_default``
(``local[2]``): MLlib ALS trains, the executors score every user with our kernel, and the same
gate, output validation, table version, commit protocol and registry follow. A reader of the
table cannot tell which engine produced it; MLflow records it."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.e2e._env import airflow_env, current, run_demo
from tests.fakes.slack_server import FakeSlack

pytestmark = pytest.mark.e2e


def test_spark_backend_publishes_a_validated_version_and_moves_the_champion(tmp_path):
    import mlflow

    slack = FakeSlack()
    try:
        env = {
            "env": airflow_env(
                tmp_path, slack, RECSYS_BACKEND="spark",
                AIRFLOW_CONN_SPARK_DEFAULT=json.dumps({"conn_type": "spark", "host": "local[2]"}),
            ),
            "base": tmp_path, "data": tmp_path / "data",
        }
        r = run_demo(env)
    finally:
        slack.stop()
    assert r["state"] == "success", r["stdout"][-3000:]
    assert set(r["tasks"].values()) == {"success"}, r["tasks"]
    version = current(env)
    folder = env["data"] / "recommendations" / f"version={version}"
    manifest = json.loads((folder / "_manifest.json").read_text())
    assert manifest["gate"]["verdict"] == "PASS"
    table = pd.read_parquet(sorted(folder.glob("part-*.parquet")))
    n = manifest["top_n"]
    per_user = table.groupby("user_id")["item_id"].agg(["count", "nunique"])
    assert (per_user["count"] == n).all() and (per_user["nunique"] == n).all()
    assert manifest["rows"] == len(table)
    assert r["tasks"]["validate_output"] == "success"  # the version passed output validation
    uri = f"sqlite:///{env['data'] / 'mlflow' / 'mlflow.db'}"
    # registry named too: an earlier test in this process may have set a global registry URI
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("recsys_als", "champion")
    assert str(champion.version) == manifest["model_version"] == "1"
    params = client.get_run(manifest["mlflow_run_id"]).data.params
    assert params["backend"] == "spark" and params["spark_master"] == "local[2]", params
