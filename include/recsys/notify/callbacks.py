"""Airflow callbacks that post to Slack: a task failed for good, a gate verdict worth a warning,
a DAG run succeeded (opt-in); each builds its payload with :mod:`.blocks` and posts it with
:func:`~include.recsys.notify.slack.send_slack` (never raises, never blocks for long).

What is posted
--------------
* a task failed for good: :func:`task_failure_callback` (one message; a failed gate or input
  validation posts the rule table and the run card path instead); with
  ``$RECSYS_MLFLOW_UI_URL`` set, a link to the MLflow run (its id comes from the ``train``
  task's XCom; MLflow itself is never queried from a callback, so an MLflow outage cannot
  slow the alert down);
* a failed attempt that will be retried: nothing -- :func:`task_retry_callback` logs it;
* gate SKIPPED, or a FAIL / SKIPPED published anyway by ``force_publish`` (a warning):
  :func:`send_gate_verdict` from the gate task (nothing fails, so no callback);
* DAG run succeeded: :func:`dag_success_callback`, only if ``$RECSYS_SLACK_NOTIFY_SUCCESS``;
* stale / missing table: ``include.recsys.stages.freshness_check`` (the hourly check DAG).

Retries vs failures
-------------------
In Airflow 3 (task SDK, ``airflow.sdk.execution_time.task_runner.finalize``) a
failed attempt that still has retries left ends in ``UP_FOR_RETRY`` and runs
``on_retry_callback``; ``on_failure_callback`` only runs when the task instance
ends in ``FAILED`` (last retry exhausted, or a non-retryable failure).  Using
:func:`task_failure_callback` as ``on_failure_callback`` therefore produces one
message per task failure, not one per attempt.  Exceptions raised by callbacks
are caught and logged by the task runner, but this module does not rely on it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

from include.recsys.notify.blocks import (
    EXCERPT_CHARS,
    _publish_notice,
    failure_blocks,
    gate_blocks,
    success_blocks,
)
from include.recsys.notify.slack import (
    _conn_id,
    _redact,
    _truncate,
    send_slack,
)

log = logging.getLogger(__name__)


#: Base URL of the MLflow UI (e.g. ``http://127.0.0.1:5000``); unset: no MLflow link.
MLFLOW_UI_ENV = "RECSYS_MLFLOW_UI_URL"

#: ``true`` posts a summary when a DAG run succeeds (default ``false``: success is quiet).
NOTIFY_SUCCESS_ENV = "RECSYS_SLACK_NOTIFY_SUCCESS"


def _get(obj: Any, attr: str) -> Any:
    """``getattr`` that tolerates ``None`` objects and raising properties."""
    if obj is None:
        return None
    try:
        return getattr(obj, attr, None)
    except Exception:
        return None


def _error_excerpt(exc: Any) -> tuple[str, str]:
    """Return ``(error_type, redacted tail of the message)`` for ``exc``."""
    if exc is None:
        return "UnknownError", ""
    if isinstance(exc, BaseException):
        error_type = type(exc).__name__
        message = str(exc) or repr(exc)
    else:  # Airflow sometimes passes a plain string
        error_type, message = "Error", str(exc)
    try:  # Airflow's secrets masker knows connection passwords / variables seen so far.
        from airflow.sdk._shared.secrets_masker import redact as airflow_redact

        message = str(airflow_redact(message))
    except Exception:
        pass
    return error_type, _truncate(_redact(message).strip(), EXCERPT_CHARS, tail=True)


def mlflow_run_url(run_id: str | None) -> str | None:
    """Link to an MLflow run in the UI at ``$RECSYS_MLFLOW_UI_URL`` (None when either is unknown).

    Uses the UI's direct run route ``<base>/#/runs/<run_id>`` (no experiment id needed).
    """
    base = (os.environ.get(MLFLOW_UI_ENV) or "").strip().rstrip("/")
    if not base or not run_id or not re.fullmatch(r"[0-9A-Za-z_-]{1,64}", str(run_id)):
        return None
    return f"{base}/#/runs/{run_id}"


def _mlflow_run_id_from_xcom(ti: Any) -> str | None:
    """The DAG run's MLflow run id, from the ``train`` task's XCom (None before train ran).

    Only attempted when ``$RECSYS_MLFLOW_UI_URL`` is set; never asks MLflow itself, so a
    failure caused by an unreachable MLflow cannot slow the alert down.
    """
    if not os.environ.get(MLFLOW_UI_ENV) or ti is None or not hasattr(ti, "xcom_pull"):
        return None
    try:
        value = ti.xcom_pull(task_ids="train")
    except Exception:
        return None
    if isinstance(value, Mapping) and isinstance(value.get("mlflow_run_id"), str):
        return value["mlflow_run_id"]
    return None


def _domain_payload(
    exc: Any, dag_id: str, run_id: str, mlflow_url: str | None = None
) -> dict[str, Any] | None:
    """A rule table for a failed gate or failed input validation (the exception's cause).

    The DAG raises ``AirflowFailException(...) from GateFailed | DataValidationError``; the
    cause carries the rules / checks and, when the stage set it, ``report_path`` (the run card).
    Anything else returns None (generic failure message).
    """
    cause = getattr(exc, "__cause__", None) or exc
    report_path = getattr(cause, "report_path", None)
    report_path = str(report_path) if report_path else None
    result = getattr(cause, "result", None)  # GateFailed
    if result is not None and hasattr(result, "rules"):
        reasons = [
            {"rule": r.name, "observed": r.observed, "bound": r.bound, "passed": r.passed,
             "result": getattr(r, "result", None)}
            for r in result.rules
        ]
        return gate_blocks(
            dag_id=dag_id, run_id=run_id, verdict=result.verdict, reasons=reasons,
            report_path=report_path, mlflow_url=mlflow_url,
        )
    report = getattr(cause, "report", None)  # DataValidationError
    if report is not None and hasattr(report, "errors"):
        reasons = [
            {
                "rule": f"{r.get('column') or 'table'}: {r.get('check') or r.get('expectation_type')}",
                "observed": r.get("unexpected_count", r.get("observed_value")),
                "bound": r.get("severity"),
                "passed": False,
            }
            for r in report.errors
        ]
        return gate_blocks(
            dag_id=dag_id, run_id=run_id, reasons=reasons,
            verdict="OUTPUT VALIDATION FAILED" if type(cause).__name__.startswith("Output")
            else "INPUT VALIDATION FAILED",
            report_path=report_path or getattr(report, "data_docs", None) or getattr(report, "path", None),
            mlflow_url=mlflow_url,
        )
    return None


def _ids(ctx: Mapping[str, Any]) -> tuple[Any, str, str, str, Any]:
    """(ti, dag_id, task_id, run_id, logical_date) from an Airflow context, all optional."""
    ti = ctx.get("ti") or ctx.get("task_instance")
    dag_run = ctx.get("dag_run")
    dag_id = _get(ti, "dag_id") or _get(ctx.get("dag"), "dag_id") or _get(dag_run, "dag_id") or "unknown_dag"
    task_id = _get(ti, "task_id") or _get(ctx.get("task"), "task_id") or "unknown_task"
    run_id = ctx.get("run_id") or _get(ti, "run_id") or _get(dag_run, "run_id") or "unknown_run"
    logical_date = ctx.get("logical_date") or _get(dag_run, "logical_date")
    return ti, str(dag_id), str(task_id), str(run_id), logical_date


def task_failure_callback(context: Mapping[str, Any]) -> None:
    """``on_failure_callback`` that posts one Slack message per failed task.

    Reads ``ti``/``task_instance``, ``dag``, ``task``, ``dag_run``, ``run_id``,
    ``logical_date`` and ``exception`` from the Airflow context (all optional),
    builds :func:`failure_blocks` (or the rule table of a failed gate / input validation)
    and sends it with :func:`send_slack` using the connection named by
    ``$RECSYS_SLACK_CONN_ID`` (default ``slack_alerts``). The MLflow run link is added when
    ``$RECSYS_MLFLOW_UI_URL`` is set and the ``train`` task already pushed the run id.
    Never raises.
    """
    try:
        ctx: Mapping[str, Any] = context if isinstance(context, Mapping) else {}
        ti, dag_id, task_id, run_id, logical_date = _ids(ctx)
        exc = ctx.get("exception")
        error_type, excerpt = _error_excerpt(exc)
        log_url = _get(ti, "log_url")
        mlflow_url = mlflow_run_url(_mlflow_run_id_from_xcom(ti))
        payload = _domain_payload(exc, dag_id, run_id, mlflow_url)
        if payload is None:
            payload = failure_blocks(
                dag_id=dag_id,
                task_id=task_id,
                run_id=run_id,
                try_number=_get(ti, "try_number"),
                logical_date=logical_date,
                error_type=error_type,
                error_excerpt=excerpt,
                log_url=log_url if isinstance(log_url, str) else None,
                mlflow_url=mlflow_url,
            )
        send_slack(payload, _conn_id())
    except Exception:
        log.exception("task_failure_callback failed; alert not sent")


def task_retry_callback(context: Mapping[str, Any]) -> None:
    """``on_retry_callback``: one log line per failed attempt that will be retried; posts nothing.

    Policy: Slack hears about a task once, when it has failed for good
    (:func:`task_failure_callback`); an attempt that a retry may still fix is only logged (in
    the task log, with the error type and the attempt number). Never raises.
    """
    try:
        ctx: Mapping[str, Any] = context if isinstance(context, Mapping) else {}
        ti, dag_id, task_id, run_id, _ = _ids(ctx)
        error_type, excerpt = _error_excerpt(ctx.get("exception"))
        last = excerpt.splitlines()[-1] if excerpt else ""
        log.warning(
            "attempt %s of %s.%s (run %s) failed with %s: %s; will be retried, no alert sent",
            _get(ti, "try_number") or "?", dag_id, task_id, run_id, error_type, last,
        )
    except Exception:
        log.exception("task_retry_callback failed")


def send_gate_verdict(
    verdict: Mapping[str, Any],
    *,
    dag_id: str,
    run_id: str,
    report_path: str | None = None,
    mlflow_run_id: str | None = None,
) -> bool:
    """Post the rule table of a gate verdict dict (``GateResult.to_dict()``), e.g. SKIPPED.

    FAIL is posted by :func:`task_failure_callback` (the gate task fails); SKIPPED does not
    fail anything, so the gate task calls this before skipping downstream; a FAIL / SKIPPED
    overridden by ``force_publish`` (``verdict["forced"]``) is posted as a warning. The message
    names the run card (``verdict["run_card"]``, else ``verdict["path"]``). Never raises.
    """
    try:
        reasons = [
            {"rule": r.get("name"), "observed": r.get("observed"), "bound": r.get("bound"),
             "passed": r.get("passed"), "result": r.get("result")}
            for r in verdict.get("rules", [])
        ]
        payload = gate_blocks(
            dag_id=dag_id,
            run_id=run_id,
            verdict=str(verdict.get("verdict", "?")),
            reasons=reasons,
            report_path=report_path or verdict.get("run_card") or verdict.get("path"),
            mlflow_url=mlflow_run_url(mlflow_run_id),
            forced=bool(verdict.get("forced")),
        )
        return send_slack(payload, _conn_id())
    except Exception:
        log.exception("send_gate_verdict failed; alert not sent")
        return False


def notify_success_enabled() -> bool:
    return (os.environ.get(NOTIFY_SUCCESS_ENV) or "false").strip().lower() in {"1", "true", "yes", "on"}


def dag_success_callback(context: Mapping[str, Any]) -> None:
    """DAG ``on_success_callback``: a short summary, only when ``$RECSYS_SLACK_NOTIFY_SUCCESS``
    is true (default false), and always when the run served nothing because its data is older
    than what is served or served older data by ``allow_older_data``. Reads CURRENT and its
    manifest: "published" is the served version when this run published it. Never raises."""
    try:
        import json as _json

        from include.recsys.config.settings import load_config
        from include.recsys.tables.current import read_current
        from include.recsys.tables.layout import MANIFEST, version_dir

        ctx: Mapping[str, Any] = context if isinstance(context, Mapping) else {}
        _, dag_id, _, run_id, logical_date = _ids(ctx)
        notice = _publish_notice(run_id)
        if not notify_success_enabled() and not notice:
            return
        root = load_config().recommendations_root
        current = read_current(root)
        published, details = None, {}
        if current:
            try:
                m = _json.loads((version_dir(root, current) / MANIFEST).read_text())
            except Exception:
                m = {}
            if m.get("airflow_run_id") == run_id:
                published = current
                details = {
                    "rows": m.get("rows"),
                    "users": m.get("users"),
                    "model version": m.get("model_version"),
                    **{k: v for k, v in (m.get("metrics") or {}).items() if k == (m.get("gate") or {}).get("metric")},
                }
        send_slack(
            success_blocks(dag_id=dag_id, run_id=run_id, logical_date=logical_date, published=published,
                           details=details, notice=notice),
            _conn_id(),
        )
    except Exception:
        log.exception("dag_success_callback failed; summary not sent")


def ops_default_args(*, retry_delay_s: int, execution_timeout_min: int) -> dict[str, Any]:
    """``default_args`` of the small operational DAGs (rollback, freshness check): one retry
    with backoff, a timeout, the quiet retry log and one Slack message per final failure."""
    from datetime import timedelta

    return {
        "owner": "ml-platform",
        "retries": 1,
        "retry_delay": timedelta(seconds=retry_delay_s),
        "retry_exponential_backoff": 2.0,
        "execution_timeout": timedelta(minutes=execution_timeout_min),
        "on_failure_callback": [task_failure_callback],
        "on_retry_callback": [task_retry_callback],
    }
