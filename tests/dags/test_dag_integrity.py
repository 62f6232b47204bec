"""DagBag integrity and the retrain DAG's structure (tasks, edges, policies, params)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "recsys_nightly_retrain"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert DAG_ID in dagbag.dag_ids


def test_every_task_has_retries_timeout_and_failure_callback(dagbag):
    for dag_id in dagbag.dag_ids:
        dag = dagbag.dags[dag_id]
        for t in dag.tasks:
            assert t.retries >= 1, f"{dag_id}.{t.task_id} has no retries"
            assert t.retry_exponential_backoff == 2.0
            assert t.execution_timeout is not None and t.execution_timeout <= timedelta(hours=2)
            assert t.on_failure_callback, f"{dag_id}.{t.task_id} has no failure callback"


def test_dag_policies(dagbag):
    dag = dagbag.dags[DAG_ID]
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert dag.dagrun_timeout == timedelta(hours=6)
    assert "recsys" in dag.tags
    assert dag.doc_md and "Nightly recommender retraining" in dag.doc_md
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"


def test_structure(dagbag):
    dag = dagbag.dags[DAG_ID]
    edges = {(u, d) for d in dag.task_ids for u in dag.get_task(d).upstream_task_ids}
    expected = {
        ("snapshot", "validate_input"),
        ("snapshot", "split"),
        ("validate_input", "split"),
        ("split", "train"),
        ("snapshot", "train"),
        ("split", "plan_trials"),  # tuning: trials as mapped tasks, then the refit
        ("snapshot", "plan_trials"),
        ("plan_trials", "run_trial"),
        ("plan_trials", "select_best"),
        ("run_trial", "select_best"),
        ("select_best", "train"),
        ("split", "evaluate"),
        ("train", "evaluate"),
        ("evaluate", "gate"),
        ("train", "gate"),
        ("snapshot", "gate"),  # the run card's data summary
        ("split", "gate"),
        ("gate", "should_publish"),
        ("should_publish", "register"),
        ("train", "register"),
        ("snapshot", "plan_shards"),
        ("register", "plan_shards"),
        ("plan_shards", "score_shard"),
        ("snapshot", "score_shard"),
        ("train", "score_shard"),
        ("register", "score_shard"),
        ("snapshot", "assemble_version"),
        ("train", "assemble_version"),
        ("register", "assemble_version"),
        ("evaluate", "assemble_version"),
        ("gate", "assemble_version"),
        ("score_shard", "assemble_version"),
        ("assemble_version", "publish"),
        ("snapshot", "validate_output"),
        ("assemble_version", "validate_output"),
        ("validate_output", "approve_release"),  # issue 18: a person may hold the release
        ("approve_release", "publish"),
        ("snapshot", "similar_items"),  # issue 19: the similar-items table, served with publish
        ("train", "similar_items"),
        ("register", "similar_items"),
        ("similar_items", "publish"),
        ("register", "publish"),
        ("train", "publish"),
    }
    assert edges == expected
    assert set(dag.task_ids) == {
        "snapshot", "validate_input", "split", "plan_trials", "run_trial", "select_best", "train",
        "evaluate", "gate",
        "should_publish", "register", "plan_shards", "score_shard", "assemble_version", "validate_output",
        "approve_release", "publish", "similar_items",
    }


def test_tuning_trials_are_mapped_and_select_best_runs_without_trials(dagbag):
    """Trials scale out as mapped tasks; select_best also runs when no trial was mapped."""
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    dag = dagbag.dags[DAG_ID]
    assert isinstance(dag.get_task("run_trial"), MappedOperator)
    assert dag.get_task("select_best").trigger_rule == "none_failed"
    assert dag.get_task("train").trigger_rule == "all_success"
    assert dag.params.get_param("tune").schema["type"] == "boolean"


def test_scoring_is_mapped_over_shards(dagbag):
    """Scoring scales out through Airflow: one mapped task instance per user shard."""
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    dag = dagbag.dags[DAG_ID]
    assert isinstance(dag.get_task("score_shard"), MappedOperator)


def test_params_form(dagbag):
    from include.recsys.config.settings import PARAM_FIELDS

    params = dagbag.dags[DAG_ID].params
    assert set(PARAM_FIELDS) <= set(params.keys())
    factors = params.get_param("factors")
    assert factors.schema["type"] == "integer"
    assert factors.schema["maximum"] == 1024
    assert factors.description
    assert params.get_param("dry_run").schema["type"] == "boolean"
    with pytest.raises(Exception):  # the form refuses out-of-bound values
        factors.resolve(0)


def test_dag_file_parses_fast():
    """Heavy libraries are imported inside tasks; parsing must stay well under a second."""
    import subprocess
    import sys
    import time

    code = (
        "import time,sys; t=time.perf_counter(); sys.path.insert(0, %r);"
        "import importlib.util as u; s=u.spec_from_file_location('d', %r); m=u.module_from_spec(s);"
        "s.loader.exec_module(m); print(time.perf_counter()-t);"
        "print(sorted(k for k in sys.modules if k.split('.')[0] in "
        "('pandas','mlflow','implicit','great_expectations','numpy','scipy')))"
    ) % (str(ROOT), str(ROOT / "dags" / "recsys_nightly_retrain.py"))
    # Airflow itself is imported first (it is always loaded before DAG files are parsed)
    pre = "import airflow.sdk;"
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", pre + code], capture_output=True, text=True, check=True)
    assert time.perf_counter() - t0 < 60
    seconds, heavy = out.stdout.strip().splitlines()[-2:]
    assert heavy == "[]", f"DAG parsing imported heavy libraries: {heavy}"
    assert float(seconds) < 0.5


# --- Assets, the consumer and the approval step (issue 18) -------------------------------------


def test_publish_and_rollback_declare_the_recommendations_asset(dagbag):
    from include.recsys.config.settings import load_config
    from include.recsys.tables.assets import asset_name, table_uri

    uri = table_uri(load_config().recommendations_root)
    for dag_id, task_id in (("recsys_nightly_retrain", "publish"), ("recsys_rollback", "rollback")):
        outlets = dagbag.dags[dag_id].get_task(task_id).outlets
        assert [(a.name, a.uri) for a in outlets] == [(asset_name(), uri)], (dag_id, task_id)
    other_outlets = [
        (d, t.task_id) for d, dag in dagbag.dags.items() for t in dag.tasks
        if t.outlets and (d, t.task_id) not in {("recsys_nightly_retrain", "publish"), ("recsys_rollback", "rollback")}
    ]
    assert other_outlets == []  # nothing else announces a new table


def test_consumer_example_is_scheduled_on_the_asset(dagbag):
    from include.recsys.tables.assets import asset_name

    dag = dagbag.dags["recsys_consumer_example"]
    assert type(dag.timetable).__name__ == "AssetTriggeredTimetable"
    assert [a.name for a in dag.timetable.asset_condition.objects] == [asset_name()]
    assert dag.task_ids == ["count_recommendations"]
    assert dag.get_task("count_recommendations").inlets[0].name == asset_name()
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert dag.doc_md and "copy me" in dag.doc_md


def test_approval_step_is_a_hitl_approval_that_defaults_to_reject(dagbag):
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    dag = dagbag.dags[DAG_ID]
    op = dag.get_task("approve_release")
    assert isinstance(op, ApprovalOperator)
    assert op.defaults == ["Reject"] and op.response_timeout == timedelta(hours=24)
    assert op.trigger_rule == "all_success" and dag.get_task("publish").trigger_rule == "all_success"
    assert op.fail_on_reject is False  # the operator's own reject path is replaced: see the DAG
    param = dag.params.get_param("require_approval")
    assert param.schema["type"] == "boolean" and param.value is False  # nightly runs stay unattended
