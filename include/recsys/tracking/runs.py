"""The MLflow run of a DAG run: created once, found again by its ``airflow_run_id`` tag on every
retry and task, logged to by id (tasks never hold an active run), and closed when the DAG run
ends. Child runs (tuning trials) hang under it."""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from include.recsys.config.settings import PROJECT_ROOT, PipelineConfig
from include.recsys.core.run import RunContext
from include.recsys.tracking.mlflow import _client, _guarded, _quote, experiment_id

log = logging.getLogger(__name__)


def end_mlflow_run(cfg: PipelineConfig, rc: RunContext, status: str) -> None:
    """Mark this DAG run's MLflow run FINISHED / FAILED (called when the DAG run ends)."""
    end_run(cfg, get_or_create_run(cfg, rc.run_id, rc.mlflow_tags()), status)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The code that runs: ``RECSYS_CODE_VERSION`` (set by an image build), else the git sha of
    PROJECT_ROOT (suffixed ``-dirty`` with uncommitted changes to tracked files), else "unknown"."""
    if os.environ.get("RECSYS_CODE_VERSION"):
        return os.environ["RECSYS_CODE_VERSION"]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0 or not sha.stdout.strip():
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10,
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def lineage_tags() -> dict[str, str]:
    version = code_version()
    tags = {"code_version": version}
    if version != "unknown":
        tags["mlflow.source.git.commit"] = version.removesuffix("-dirty")
    return tags


@_guarded
def get_or_create_run(
    cfg: PipelineConfig, airflow_run_id: str, tags: dict[str, str], *, reopen: bool = False
) -> str:
    """The MLflow run id of this DAG run (created once, found again on retries).

    ``reopen``: a task that works in the run (train) marks a run that was already closed (the
    DAG run failed, then a task was cleared) RUNNING again; the DAG-level callback closes it.
    """
    client = _client(cfg)
    exp_id = experiment_id(cfg)
    found = client.search_runs(
        [exp_id],
        filter_string=f"tags.airflow_run_id = '{_quote(airflow_run_id)}'",
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )
    # child runs (tuning trials) carry the same airflow_run_id tag: the DAG run's run is the
    # one without a parent
    found = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    if found:
        run = found[0]
        if reopen and run.info.status != "RUNNING":
            client.update_run(run.info.run_id, status="RUNNING")
            log.info("MLflow run %s resumed (was %s)", run.info.run_id, run.info.status)
        return run.info.run_id
    run = client.create_run(
        exp_id,
        run_name=airflow_run_id,
        tags={**lineage_tags(), **{k: str(v) for k, v in tags.items()}, "airflow_run_id": airflow_run_id},
    )
    log.info("MLflow run %s created for Airflow run %s", run.info.run_id, airflow_run_id)
    return run.info.run_id


@_guarded
def start_child_run(
    cfg: PipelineConfig,
    parent_run_id: str,
    name: str,
    params: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """A child run of ``parent_run_id`` (e.g. one tuning trial), found again by name on retries.

    Log to it with :func:`log_to_run` and close it with :func:`end_run`.
    """
    client = _client(cfg)
    parent = client.get_run(parent_run_id)
    found = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{_quote(parent_run_id)}' "
        f"and tags.`mlflow.runName` = '{_quote(name)}'",
        max_results=1,
    )
    if found:
        run_id = found[0].info.run_id
    else:
        inherited = {k: v for k, v in parent.data.tags.items() if k in ("airflow_run_id", "dag_id", "code_version")}
        run_id = client.create_run(
            parent.info.experiment_id,
            run_name=name,
            tags={**inherited, **(tags or {}), "mlflow.parentRunId": parent_run_id},
        ).info.run_id
    if params:
        log_to_run(cfg, run_id, params=params)
    return run_id


@_guarded
def log_to_run(
    cfg: PipelineConfig,
    run_id: str,
    *,
    params: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
    artifacts: dict[str, Path] | None = None,
) -> None:
    """Log to an existing run without ending it (tasks resume the run by id).

    Params are write-once in MLflow: ones already logged are skipped (a retry), with a warning
    if the value differs. Metric names: ``@`` becomes ``_at_`` (``ndcg@10`` -> ``ndcg_at_10``).
    Params, metrics and tags go in one ``log_batch`` call, which MLflow's client splits by its
    per-request counts (100 params/tags, 1000 metrics). Its 1 MB request limit is far off: a
    stage logs a few dozen values of at most 4000 characters (the config is ~60 params, ~1 kB).
    """
    from mlflow.entities import Metric, Param, RunTag

    client = _client(cfg)
    ps: list[Param] = []
    if params:
        existing = client.get_run(run_id).data.params
        for k, v in params.items():
            if k not in existing:
                ps.append(Param(k, str(v)))
            elif existing[k] != str(v):
                log.warning("param %s already logged as %r; keeping it (new value %r)", k, existing[k], v)
    ms: list[Metric] = []
    if metrics:
        now = int(time.time() * 1000)
        ms = [Metric(k.replace("@", "_at_"), float(v), now, 0) for k, v in metrics.items()]
    ts = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
    if ps or ms or ts:
        client.log_batch(run_id, metrics=ms, params=ps, tags=ts)
    for sub, path in (artifacts or {}).items():
        path = Path(path)
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=sub)
        elif path.exists():
            client.log_artifact(run_id, str(path), artifact_path=sub)


@_guarded
def end_run(cfg: PipelineConfig, run_id: str, status: str = "FINISHED") -> None:
    _client(cfg).set_terminated(run_id, status=status)


@_guarded
def run_tags(cfg: PipelineConfig, run_id: str) -> dict[str, str]:
    return dict(_client(cfg).get_run(run_id).data.tags)
