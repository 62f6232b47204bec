"""
### Roll back the served recommendations

Trigger by hand. Points `CURRENT` back to the version named in the form (empty: the version
served before the current one) and moves the MLflow `champion` alias to that table's model
version, so the table and the alias agree. Every move is recorded in the append-only publish
log (`_history.jsonl` beside `CURRENT`). The same is available from the shell:
`python -m include.recsys.reader rollback [--to VERSION]` (CURRENT only).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task

from include.recsys.alerts import ops_default_args


@dag(
    dag_id="recsys_rollback",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=30),
    default_args=ops_default_args(retry_delay_s=30, execution_timeout_min=10),
    params={
        "to_version": Param("", type="string", description="Version id to serve; empty: the previous one."),
        "reason": Param("", type="string", description="Why (kept in the publish and alias history)."),
    },
    tags=["recsys", "ops"],
    doc_md=__doc__,
)
def recsys_rollback():
    @task
    def rollback(**ctx) -> dict:
        from include.recsys import pipeline
        from include.recsys.config import load_config

        rc = pipeline.RunContext(
            dag_id="recsys_rollback",
            run_id=ctx["run_id"],
            interval_start=ctx["dag_run"].run_after,
            interval_end=ctx["dag_run"].run_after,
        )
        p = ctx["params"]
        reason = p.get("reason") or f"rollback by {ctx['run_id']}"
        return pipeline.rollback(load_config(), rc, p.get("to_version") or None, reason)

    rollback()


rollback_dag = recsys_rollback()
