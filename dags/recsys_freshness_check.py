"""
### Freshness check of the served recommendations

Hourly. Alerts Slack (connection `slack_alerts`) when nothing is published, when `CURRENT`
is older than `RECSYS_FRESHNESS_MAX_AGE_HOURS` (30), or when the nightly publish has not
happened by `RECSYS_FRESHNESS_DEADLINE_UTC` (06:00 UTC). One message per problem, repeated every
`RECSYS_FRESHNESS_REALERT_HOURS` (6) while it lasts. `RECSYS_FRESHNESS_ENABLED=false` removes
the schedule. The logic is in `include/recsys/tables/freshness.py`.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import dag, task

from include.recsys.notify.callbacks import ops_default_args

DAG_ID = "recsys_freshness_check"
ENABLED = (os.environ.get("RECSYS_FRESHNESS_ENABLED") or "true").strip().lower() not in {"0", "false", "no", "off"}


@dag(
    dag_id=DAG_ID,
    schedule=os.environ.get("RECSYS_FRESHNESS_SCHEDULE", "@hourly") if ENABLED else None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=30),
    default_args=ops_default_args(retry_delay_s=60, execution_timeout_min=5),
    tags=["recsys", "monitoring"],
    doc_md=__doc__,
)
def recsys_freshness_check():
    @task
    def check_freshness() -> dict:
        from include.recsys.stages.freshness_check import run_check

        return run_check()

    check_freshness()


freshness_dag = recsys_freshness_check()
