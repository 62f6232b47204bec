"""
### Example consumer of the recommendations Asset (copy me)

Scheduled on the `recsys_recommendations` Asset: it runs each time `recsys_nightly_retrain`
publishes a table version or `recsys_rollback` serves an earlier one. It reads the version named
by the triggering event (not whatever CURRENT says when it runs) through the reader
(`include.recsys.tables.reader.RecommendationStore`) and writes rows and users per source (`model` /
`fallback`, and per A/B variant when the table has one) to
`<RECSYS_DATA_DIR>/consumers/recommendation_counts/version=<v>.json`.

The event's metadata (`extra`) carries `version`, `previous_version`, `reason`
(`publish` / `rollback`), `model_name`, `model_version`, `data_interval_start/end`, `users`,
`rows`, `gate_verdict`. A manual run reads the newest event of the Asset, else CURRENT.
Replace `count_recommendations` with your own work: warm a cache, export to a feature store, ...
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import dag, task

from include.recsys.notify.callbacks import ops_default_args
from include.recsys.tables.assets import table_asset

RECOMMENDATIONS = table_asset()


@dag(
    dag_id="recsys_consumer_example",
    schedule=[RECOMMENDATIONS],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=30),
    default_args=ops_default_args(retry_delay_s=30, execution_timeout_min=10),
    tags=["recsys", "consumer", "example"],
    doc_md=__doc__,
)
def recsys_consumer_example():
    @task(inlets=[RECOMMENDATIONS])
    def count_recommendations(**ctx) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from include.recsys.config.settings import load_config
        from include.recsys.errors import PublishError
        from include.recsys.tables.assets import event_version, summarize_version

        cfg = load_config()
        triggering = [e for events in (ctx.get("triggering_asset_events") or {}).values() for e in events]
        version = event_version(triggering)
        if version is None:  # a manual run: the newest event of the Asset, else CURRENT
            try:
                version = event_version(list(ctx["inlet_events"][RECOMMENDATIONS]))
            except (KeyError, LookupError):
                version = None
        if version is None:
            from include.recsys.tables.reader import RecommendationStore

            version = RecommendationStore(cfg.recommendations_root).current_version()
        out = os.environ.get("RECSYS_CONSUMER_OUT") or cfg.data_dir / "consumers" / "recommendation_counts"
        try:
            return summarize_version(cfg.recommendations_root, version, out)
        except (LookupError, PublishError) as exc:  # the version was cleaned up since the event: retrying cannot help
            raise AirflowFailException(f"version {version} is not readable any more: {exc}") from exc

    count_recommendations()


consumer_dag = recsys_consumer_example()
