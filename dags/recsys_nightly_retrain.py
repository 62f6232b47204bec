"""
### Nightly recommender retraining

Every night (or when triggered by hand with the form) this DAG:

1. **snapshot**: reads the interactions of the training window ending at the run's data
   interval end, keeps active users, drops exact duplicates, writes a snapshot + id maps;
2. **validate_input**: a Great Expectations suite on the snapshot (bad data fails, no retries);
   after precompute, **validate_output** checks the top-N table (N distinct unseen catalog items
   per user, ranks, scores, coverage, change vs CURRENT) before publish may serve it;
3. **split**: a leak-free time-based holdout;
4. **plan_trials -> run_trial (mapped, one task per trial) -> select_best -> train**: on the
   tuning cadence (`tune_every_days`, the `tune` param, or after a gate FAIL) a seeded random
   search on a validation split carved from the training period (each trial an MLflow child
   run, early-stopped on validation NDCG@10); otherwise no trial runs and the newest
   `best_config` in MLflow (or the defaults) is reused. `train` refits implicit ALS with that
   configuration on the whole training period, tracked in MLflow (one run per DAG run);
5. **evaluate**: candidate vs the current `champion` vs popularity on the same holdout;
6. **gate**: the declarative spec `include/config/gate.yaml` (floors, must beat the baselines,
   no regression vs champion by the paired bootstrap interval, slice, coverage and
   popularity-bias guardrails) -> PASS / FAIL / SKIPPED, with the run card
   (`run_card.html`); the `force_publish` param publishes a FAIL / SKIPPED anyway (recorded
   loudly; output validation still applies);
7. **should_publish**: stops here on `dry_run`;
8. **register**: the candidate enters the MLflow registry as `challenger`;
9. **plan_shards -> score_shard (mapped, one task per user shard) -> assemble_version**: top-N
   for every user, seen items filtered, a popularity fallback; parts + manifest form a new,
   not yet served table version (`RECSYS_SHARDS` shards; Celery/Kubernetes workers run them
   in parallel);
   **similar_items** (beside them, issue 19): for every item its top-K most similar items
   (cosine of item factors, business rules applied), validated, served by publish with the
   same version id; with `RECSYS_ITEM_RULES_PATH` the rules apply inside scoring, and with
   `RECSYS_AB_VARIANTS` each user's arm (salted hash) decides which model scores them;
10. **approve_release** (only with the `require_approval` param): a person approves or rejects
    the built, validated table in the Required Actions page (gate table, metrics vs champion,
    run card). Reject or no answer within `RECSYS_APPROVAL_TIMEOUT_HOURS` (24): the run fails,
    nothing is published, Slack hears of it. Off (default): the task succeeds at once;
11. **publish**: CURRENT points at the new version atomically, then `champion` moves; the
    `recsys_recommendations` Asset gets an event with the version, model, data interval, counts
    and gate verdict, which schedules consumers such as `recsys_consumer_example`.

A FAIL, bad input or any error leaves yesterday's table and champion served and alerts Slack
(connection `slack_alerts`). The work lives in `include/recsys/`; this file only wires it.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import pendulum
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, dag, task
from airflow.timetables.interval import CronDataIntervalTimetable

from include.recsys.config.settings import PARAM_FIELDS, load_config, param_specs
from include.recsys.notify.callbacks import (
    dag_success_callback,
    task_failure_callback,
    task_retry_callback,
)
from include.recsys.tables.assets import table_asset

DAG_ID = "recsys_nightly_retrain"
_CFG = load_config()  # parse-time settings only (the tasks load the run's own config)
RECOMMENDATIONS = table_asset(_CFG.recommendations_root)  # publish's outlet: consumers schedule on it

default_args = {
    "owner": "ml-platform",
    "retries": int(os.environ.get("RECSYS_TASK_RETRIES", "2")),
    "retry_delay": timedelta(seconds=int(os.environ.get("RECSYS_RETRY_DELAY_S", "60"))),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=15),
    "execution_timeout": timedelta(hours=1),
    "on_failure_callback": [task_failure_callback],
    "on_retry_callback": [task_retry_callback],  # logs the attempt; Slack only hears of final failures
}


def _spark_connection(cfg: Any) -> Any:
    """``backend=spark`` without ``spark_master``: the cluster of the Spark provider's connection
    (``RECSYS_SPARK_CONN_ID``, default ``spark_default``) -- its host (``local[*]``,
    ``spark://host`` + port, ``k8s://https://...``) as the master and its extra's ``conf`` dict
    under the config's own ``spark_conf``. No such connection: ``local[*]``."""
    if cfg.backend != "spark" or cfg.spark_master:
        return cfg
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(os.environ.get("RECSYS_SPARK_CONN_ID", "spark_default"))
    except AirflowNotFoundException:
        return cfg
    master = conn.host or "local[*]"
    if conn.port:
        master = f"{master}:{conn.port}"
    conf = {str(k): str(v) for k, v in (conn.extra_dejson.get("conf") or {}).items()}
    return cfg.model_copy(update={"spark_master": master, "spark_conf": {**conf, **cfg.spark_conf}})


def _context(ctx: dict[str, Any]):
    """Config (env defaults + the run's params) and the RunContext of this task."""
    from include.recsys.config.settings import load_config
    from include.recsys.core.run import RunContext

    params = ctx.get("params") or {}
    cfg = _spark_connection(load_config({k: params[k] for k in PARAM_FIELDS if k in params}))
    start = ctx.get("data_interval_start") or ctx.get("logical_date") or ctx["dag_run"].run_after
    end = ctx.get("data_interval_end") or ctx.get("logical_date") or ctx["dag_run"].run_after
    rc = RunContext(
        dag_id=getattr(ctx.get("dag"), "dag_id", DAG_ID),
        run_id=ctx.get("run_id") or ctx["dag_run"].run_id,
        interval_start=start,
        interval_end=end,
        try_number=getattr(ctx.get("ti"), "try_number", 1) or 1,
    )
    return cfg, rc


def _run(fn: Any, ctx: dict[str, Any], *args: Any) -> Any:
    """Run stage ``fn(cfg, rc, *args)`` for this task (each task imports its stage inside its
    body, so parsing this file stays fast).

    A :class:`~include.recsys.errors.PermanentError` (bad input, a failed check or gate, a broken
    contract or config) fails the task at once; anything else, transient errors included, is
    retried with backoff. The stage's freed memory is handed back to the OS when it ends.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from include.recsys.core.memory import stage_memory
    from include.recsys.errors import PermanentError

    cfg, rc = _context(ctx)
    try:
        with stage_memory():
            return fn(cfg, rc, *args)
    except PermanentError as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


def _end_mlflow_run(status: str):
    def callback(context: dict[str, Any]) -> None:
        """Close the run's MLflow run when the DAG run ends; never fails the DAG run."""
        import logging

        try:
            from include.recsys.tracking.runs import end_mlflow_run

            cfg, rc = _context(context)
            end_mlflow_run(cfg, rc, status)
        except Exception:  # MLflow down must not turn a finished run into an error
            logging.getLogger(__name__).exception("could not close the MLflow run")

    return callback


class ReleaseApprovalOperator(ApprovalOperator):
    """Approve / Reject of the built table when ``require_approval`` is on; otherwise succeeds at
    once (a success, not a skip: publish keeps ``all_success``, so a skipped table build upstream
    can never let publish run). A Reject, or no answer within ``response_timeout`` (the default
    answer is Reject), fails the task without retries: the run fails, nothing is published and
    the failure alert tells Slack who rejected it or that nobody answered."""

    def execute(self, context):
        from include.recsys.notify.approval import approval_request
        from include.recsys.notify.callbacks import mlflow_run_url
        from include.recsys.tables.current import read_current

        cfg, rc = _context(context)
        if not cfg.require_approval:
            self.log.info("require_approval is off: %s is published without a human review", rc.version)
            return {"required": False, "version": rc.version}
        mlflow_run_id = context["ti"].xcom_pull(task_ids="train", key="return_value") or {}
        self.subject, self.body = approval_request(
            rc.work_dir(cfg), rc.version, read_current(cfg.recommendations_root), run_id=rc.run_id,
            mlflow_url=mlflow_run_url(mlflow_run_id.get("mlflow_run_id")),
        )
        return super().execute(context)

    def execute_complete(self, context, event):
        from airflow.providers.standard.operators.hitl import HITLOperator
        from airflow.sdk.exceptions import AirflowFailException

        from include.recsys.notify.approval import rejection_message
        from include.recsys.tables.current import read_current

        answer = HITLOperator.execute_complete(self, context, event)  # validates the answer
        cfg, rc = _context(context)
        if answer["chosen_options"] == [self.APPROVE]:
            self.log.info("approved by %s at %s", answer["responded_by_user"], answer["responded_at"])
            return {"required": True, "approved": True, "by": answer["responded_by_user"],
                    "at": str(answer["responded_at"]), "version": rc.version}
        raise AirflowFailException(rejection_message(
            rc.version, read_current(cfg.recommendations_root), by=answer["responded_by_user"],
            at=answer["responded_at"], timed_out=bool(event.get("timedout")), hours=cfg.approval_timeout_hours,
        ))


@dag(
    dag_id=DAG_ID,
    schedule=CronDataIntervalTimetable(os.environ.get("RECSYS_SCHEDULE", "0 0 * * *"), timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=6),
    default_args=default_args,
    params={name: Param(**spec) for name, spec in param_specs().items()},
    tags=["recsys", "ml", "nightly"],
    on_success_callback=[_end_mlflow_run("FINISHED"), dag_success_callback],  # summary: opt-in
    on_failure_callback=_end_mlflow_run("FAILED"),
    doc_md=__doc__,
)
def recsys_nightly_retrain():
    @task(execution_timeout=timedelta(minutes=30))
    def snapshot(**ctx) -> dict:
        from include.recsys.stages.snapshot import snapshot as stage

        return _run(stage, ctx)

    @task(execution_timeout=timedelta(minutes=30))
    def validate_input(snap: dict, **ctx) -> dict:
        from include.recsys.stages.validate_input import validate_input as stage

        return _run(stage, ctx, snap)

    @task(execution_timeout=timedelta(minutes=30))
    def split(snap: dict, **ctx) -> dict:
        from include.recsys.stages.split import split as stage

        return _run(stage, ctx, snap)

    @task(execution_timeout=timedelta(minutes=30))
    def plan_trials(parts: dict, snap: dict, **ctx) -> list:
        from include.recsys.stages.tune import plan_trials as stage

        return _run(stage, ctx, parts, snap)

    @task(execution_timeout=timedelta(hours=1), max_active_tis_per_dagrun=8)
    def run_trial(trial: dict, **ctx) -> dict:
        from include.recsys.stages.tune import run_trial as stage

        return _run(stage, ctx, trial)

    # none_failed: runs when run_trial expanded to nothing (no tuning tonight). A trial whose fit
    # fails or diverges still succeeds (reported not ok, it never wins); a failed plan_trials or
    # trial task leaves select_best and train upstream_failed: one alert, the run fails
    @task(execution_timeout=timedelta(minutes=10), trigger_rule="none_failed")
    def select_best(trials: list, **ctx) -> dict:
        from include.recsys.stages.tune import select_best as stage

        return _run(stage, ctx, list(trials or []))

    @task(execution_timeout=timedelta(hours=2))
    def train(parts: dict, snap: dict, best: dict, **ctx) -> dict:
        from include.recsys.stages.train import train as stage

        return _run(stage, ctx, parts, snap, best)

    @task(execution_timeout=timedelta(hours=1))
    def evaluate(parts: dict, model: dict, **ctx) -> dict:
        from include.recsys.stages.evaluate import evaluate as stage

        return _run(stage, ctx, parts, model)

    @task(execution_timeout=timedelta(minutes=10))
    def gate(ev: dict, model: dict, snap: dict, parts: dict, **ctx) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from include.recsys.stages.gate import gate as stage

        verdict = _run(stage, ctx, ev, model, snap, parts)  # FAIL raises (no retries)
        if verdict["verdict"] != "PASS":
            # SKIPPED fails nothing, and a forced FAIL/SKIPPED publishes: Slack hears of both
            from include.recsys.notify.callbacks import send_gate_verdict

            send_gate_verdict(verdict, dag_id=DAG_ID, run_id=ctx["run_id"], mlflow_run_id=model.get("mlflow_run_id"))
            if not verdict.get("forced"):
                raise AirflowSkipException(f"gate {verdict['verdict']}: nothing will be published")
        return verdict

    @task.short_circuit(execution_timeout=timedelta(minutes=5))
    def should_publish(verdict: dict, **ctx) -> bool:
        cfg, _ = _context(ctx)
        if cfg.dry_run:
            print(f"dry_run: gate {verdict['verdict']}, nothing is registered or published")
        return not cfg.dry_run

    @task(execution_timeout=timedelta(minutes=30))
    def register(model: dict, **ctx) -> dict:
        from include.recsys.stages.register import register as stage

        return _run(stage, ctx, model)

    @task(execution_timeout=timedelta(minutes=10))
    def plan_shards(snap: dict, **ctx) -> list:
        from include.recsys.stages.shards import plan_shards as stage

        return _run(stage, ctx, snap)

    @task(execution_timeout=timedelta(hours=2), max_active_tis_per_dagrun=16)
    def score_shard(shard: dict, snap: dict, model: dict, reg: dict, **ctx) -> dict:
        from include.recsys.stages.shards import score_shard as stage

        return _run(stage, ctx, snap, model, reg, shard)

    @task(execution_timeout=timedelta(minutes=30))
    def assemble_version(
        snap: dict, model: dict, reg: dict, ev: dict, verdict: dict, parts: list, **ctx
    ) -> dict:
        from include.recsys.stages.assemble import assemble_version as stage

        # parts[:] reads every shard's XCom in one request; list(parts) iterates item by item and
        # probes one offset past the end, which Airflow's client logs as "[error] XCom not found"
        return _run(stage, ctx, snap, model, reg, ev, verdict, parts[:])

    @task(execution_timeout=timedelta(minutes=30))
    def validate_output(snap: dict, pre: dict, **ctx) -> dict:
        from include.recsys.stages.validate_output import validate_output as stage

        return _run(stage, ctx, snap, pre)

    # issue 19: the similar-items table of the registered model (cosine of item factors, business
    # rules applied), validated here; publish serves it together with the recommendations
    @task(execution_timeout=timedelta(hours=1))
    def similar_items(snap: dict, model: dict, reg: dict, **ctx) -> dict:
        from include.recsys.stages.similar import similar_items as stage

        return _run(stage, ctx, snap, model, reg)

    @task(execution_timeout=timedelta(minutes=10), outlets=[RECOMMENDATIONS])
    def publish(pre: dict, reg: dict, model: dict, **ctx) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from include.recsys.stages.publish import publish as stage
        from include.recsys.tables.assets import move_event_extra

        result = _run(stage, ctx, pre, reg, model)
        cfg, rc = _context(ctx)
        extra = move_event_extra(
            cfg.recommendations_root, result["version"], reason="publish", run_id=rc.run_id,
            interval_start=rc.interval_start, interval_end=rc.interval_end,
        )
        if extra is None:
            # CURRENT did not move (e.g. older data than served): a skipped task emits no asset
            # event, so no consumer wakes up for a version that is not served
            raise AirflowSkipException(f"CURRENT did not move to {result['version']}: {result}")
        ctx["outlet_events"][RECOMMENDATIONS].extra = extra
        return result

    approve_release = ReleaseApprovalOperator(
        task_id="approve_release",
        subject="Publish the new recommendations?",  # replaced by the run's own subject and body
        defaults="Reject",  # no answer within the timeout counts as Reject
        response_timeout=timedelta(hours=_CFG.approval_timeout_hours),
        execution_timeout=timedelta(minutes=10),
    )

    snap = snapshot()
    checked = validate_input(snap)
    split_paths = split(snap)
    checked >> split_paths
    trials = plan_trials(split_paths, snap)
    trial_results = run_trial.expand(trial=trials)
    best = select_best(trials)
    trial_results >> best
    model = train(split_paths, snap, best)
    ev = evaluate(split_paths, model)
    verdict = gate(ev, model, snap, split_paths)
    go = should_publish(verdict)
    reg = register(model)
    go >> reg
    shards = plan_shards(snap)
    reg >> shards
    part_files = score_shard.partial(snap=snap, model=model, reg=reg).expand(shard=shards)
    pre = assemble_version(snap, model, reg, ev, verdict, part_files)
    checked_out = validate_output(snap, pre)
    published = publish(pre, reg, model)
    checked_out >> approve_release >> published
    similar_items(snap, model, reg) >> published


nightly_dag = recsys_nightly_retrain()
