"""Driver of tests/e2e/test_assets_approval.py, run in its own process (its own AIRFLOW_HOME).

    python tests/e2e/assets_approval_driver.py OUT.json

Runs, in one process (Airflow initialises once), on the tiny generated data set:
  A  nightly, require_approval off            -> publishes, asset event
  B  nightly, require_approval on, Approve    -> publishes, asset event, consumer run reads it
  C  nightly, require_approval on, Reject     -> nothing published
  R  rollback                                 -> asset event with reason=rollback
and writes what happened (task states, CURRENT, asset events from the metadata DB, the
approval request as the REST API showed it) to OUT.json; the tests assert on it.
The approval is answered like a person would, through Airflow's REST API (in-process
TestClient) from a helper thread while ``dag.test()`` waits in the main thread.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
import threading
import time
import traceback
from pathlib import Path

import pendulum

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
DATA_END = "2026-11-20"
NIGHTLY, CONSUMER, ROLLBACK = "recsys_nightly_retrain", "recsys_consumer_example", "recsys_rollback"
CONF: dict = {}  # the defaults: the gate passes on the tiny data set (as in test_nightly_dag)


def load(name: str):
    from airflow.sdk import DAG

    spec = importlib.util.spec_from_file_location(name, ROOT / "dags" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return next(v for v in vars(module).values() if isinstance(v, DAG))


def state(x) -> str:
    return str(getattr(x, "value", x))


def asset_events(uri: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as s:
        rows = s.scalars(
            select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.uri == uri).order_by(AssetEvent.id)
        ).all()
        return [{"id": e.id, "extra": e.extra, "dag_id": e.source_dag_id, "task_id": e.source_task_id,
                 "run_id": e.source_run_id} for e in rows]


def queued_for(dag_id: str) -> int:
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as s:
        return s.scalar(select(func.count()).select_from(AssetDagRunQueue).where(AssetDagRunQueue.target_dag_id == dag_id))


def unpause(dag_id: str) -> None:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as s:
        s.get(DagModel, dag_id).is_paused = False


def answer(choice: str, seen: dict, stop: threading.Event) -> None:
    """Wait for the pending approval of the nightly DAG and answer it through the REST API."""
    try:
        from airflow.api_fastapi.app import create_app
        from fastapi.testclient import TestClient

        client = TestClient(create_app())
        while not stop.is_set():
            r = client.get("/api/v2/dags/~/dagRuns/~/hitlDetails", params={"response_received": "false"})
            pending = [d for d in r.json().get("hitl_details", []) if d["task_instance"]["dag_id"] == NIGHTLY]
            if pending:
                d = pending[0]
                run_id, task_id = d["task_instance"]["dag_run_id"], d["task_instance"]["task_id"]
                seen.update(subject=d["subject"], body=d["body"], options=d["options"], task_id=task_id,
                            ti_state=d["task_instance"]["state"], defaults=d.get("defaults"))
                url = f"/api/v2/dags/{NIGHTLY}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails"
                p = client.patch(url, json={"chosen_options": [choice], "params_input": {}})
                seen.update(status=p.status_code, response=p.json())
                again = client.patch(url, json={"chosen_options": [choice], "params_input": {}})
                seen["second_answer_status"] = again.status_code
                return
            time.sleep(0.5)
    except Exception:
        seen["error"] = traceback.format_exc()


def nightly_run(dag, day: str, conf: dict, choice: str | None = None) -> dict:
    from include.recsys.config.settings import load_config
    from include.recsys.tables.current import read_current

    seen: dict = {}
    stop = threading.Event()
    thread = threading.Thread(target=answer, args=(choice, seen, stop), daemon=True) if choice else None
    if thread:
        thread.start()
    d = pendulum.parse(day)
    dr = dag.test(logical_date=pendulum.datetime(d.year, d.month, d.day, tz="UTC"), run_conf={**CONF, **conf})
    stop.set()
    if thread:
        thread.join(timeout=30)
    root = load_config().recommendations_root
    ti = {t.task_id: state(t.state) for t in dr.get_task_instances()}
    approval = next((t for t in dr.get_task_instances() if t.task_id == "approve_release"), None)
    return {"state": state(dr.state), "run_id": dr.run_id, "tasks": ti, "current": read_current(root),
            "approval": seen, "approve_xcom": approval.xcom_pull(task_ids="approve_release") if approval else None}


def main(out: str) -> None:
    from include.recsys.config.settings import load_config
    from include.recsys.data import synth

    cfg = load_config()
    synth.ensure_default_data(cfg.source, dataclasses.replace(synth.PRESETS["tiny"], end_date=DATA_END))
    # Airflow's models before any thread (two threads importing them at once deadlock)
    import airflow.api_fastapi.app  # noqa: F401
    import airflow.models  # noqa: F401
    from airflow.models.hitl import HITLDetail  # noqa: F401

    from include.recsys.tables.assets import table_uri

    result: dict = {"uri": table_uri(cfg.recommendations_root)}
    nightly, consumer, rollback = load(NIGHTLY), load(CONSUMER), load(ROLLBACK)
    steps = [
        ("A", lambda: nightly_run(nightly, "2026-11-21", {})),
        ("unpause", lambda: unpause(CONSUMER)),  # the first dag.test wrote every DAG to the DB
        ("B", lambda: nightly_run(nightly, "2026-11-21", {"require_approval": True}, "Approve")),
        ("queued_for_consumer", lambda: queued_for(CONSUMER)),
        ("asset_triggered", lambda: _asset_triggered_consumer(consumer)),
        ("consumer", lambda: _consumer(consumer)),
        ("C", lambda: _forced_fail(nightly)),
        ("R", lambda: _rollback(rollback)),
    ]
    for name, step in steps:
        t0 = time.perf_counter()
        try:
            result[name] = step()
        except Exception:
            result[name] = {"error": traceback.format_exc()}
        result.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)
        result["events_after_" + name] = asset_events(result["uri"])
        Path(out).write_text(json.dumps(result, default=str, indent=1))


def _forced_fail(dag) -> dict:
    """A gate FAIL forced by force_publish still waits for the person (who rejects it)."""
    import os

    os.environ["RECSYS_GATE_MIN_METRIC"] = "0.99"  # tasks run in this process: they read it
    try:
        return nightly_run(dag, "2026-11-21", {"require_approval": True, "force_publish": True}, "Reject")
    finally:
        os.environ.pop("RECSYS_GATE_MIN_METRIC")


def _asset_triggered_consumer(dag) -> dict:
    """The scheduler's own path: it turns the queued event into an asset-triggered run of the
    consumer; its task then runs the way dag.test() runs tasks (dag.test() only runs new
    manual runs)."""
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.sdk.definitions.dag import _run_task
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState
    from sqlalchemy import select

    with create_session() as s:
        SchedulerJobRunner(job=Job())._create_dag_runs_asset_triggered(dag_models=[s.get(DagModel, CONSUMER)], session=s)
    with create_session() as s:
        dr = s.scalars(select(DagRun).where(DagRun.dag_id == CONSUMER)).one()
        consumed = [(e.extra or {}).get("version") for e in dr.consumed_asset_events]
        dr.dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
        dr.state = DagRunState.RUNNING
        s.commit()
        for _ in range(5):  # the minimal scheduling loop of dag.test()
            s.expire_all()
            schedulable, _ = dr.update_state(session=s)
            for ti in schedulable:
                ti.try_number += 1
                ti.state = TaskInstanceState.SCHEDULED
            s.commit()
            ready = [t for t in dr.get_task_instances(session=s) if t.state == TaskInstanceState.SCHEDULED]
            if not ready:
                break
            for ti in ready:
                _run_task(ti=ti, task=dag.task_dict[ti.task_id], run_triggerer=True)
        s.expire_all()
        ti = dr.get_task_instances(session=s)[0]
        return {"run_id": dr.run_id, "run_type": state(dr.run_type), "consumed_versions": consumed,
                "ti_state": state(ti.state), "xcom": ti.xcom_pull(task_ids="count_recommendations")}


def _consumer(dag) -> dict:
    dr = dag.test()
    ti = next(t for t in dr.get_task_instances() if t.task_id == "count_recommendations")
    return {"state": state(dr.state), "xcom": ti.xcom_pull(task_ids="count_recommendations")}


def _rollback(dag) -> dict:
    from include.recsys.config.settings import load_config
    from include.recsys.tables.current import read_current

    dr = dag.test(run_conf={"reason": "e2e: back to the unapproved table"})
    return {"state": state(dr.state), "current": read_current(load_config().recommendations_root),
            "tasks": {t.task_id: state(t.state) for t in dr.get_task_instances()}}


if __name__ == "__main__":
    main(sys.argv[1])
