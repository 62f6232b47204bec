"""
### Roll back the served recommendations

Trigger by hand. Points `CURRENT` back to the version named in the form (empty: the version
served before the current one) and moves the MLflow `champion` alias to that table's model
version, so the table and the alias agree. Every move is one commit in the table's commit log
(`_log/<sequence>.json` beside `CURRENT`); the target must verify (every file its manifest
lists is present with its recorded size). The same is available from the shell:
`python -m include.recsys.tables.reader rollback [--to VERSION]` (CURRENT only).

The move emits an event of the `recsys_recommendations` Asset with `reason=rollback` (the
form's reason as `note`), so consumers scheduled on it re-read the served version.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task

from include.recsys.notify.callbacks import ops_default_args
from include.recsys.tables.assets import table_asset

RECOMMENDATIONS = table_asset()


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
    @task(outlets=[RECOMMENDATIONS])
    def rollback(**ctx) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from include.recsys.config.settings import load_config
        from include.recsys.core.run import RunContext
        from include.recsys.stages import rollback as rollback_mod
        from include.recsys.tables.assets import move_event_extra

        rc = RunContext(
            dag_id="recsys_rollback",
            run_id=ctx["run_id"],
            interval_start=ctx["dag_run"].run_after,
            interval_end=ctx["dag_run"].run_after,
        )
        p = ctx["params"]
        reason = p.get("reason") or f"rollback by {ctx['run_id']}"
        cfg = load_config()
        result = rollback_mod.rollback(cfg, rc, p.get("to_version") or None, reason)
        extra = move_event_extra(
            cfg.recommendations_root, result["to"], reason="rollback", run_id=rc.run_id, note=reason
        )
        if extra is None or result["from"] == result["to"]:  # nothing moved: no asset event
            raise AirflowSkipException(f"CURRENT did not move: {result}")
        ctx["outlet_events"][RECOMMENDATIONS].extra = extra
        return result

    rollback()


rollback_dag = recsys_rollback()
