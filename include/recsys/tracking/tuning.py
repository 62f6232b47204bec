"""The tuning's memory in MLflow: the best configuration a run found (tags on its run, found
again by later runs that reuse it), the last gate verdict that may call for tuning, and each
trial's per-sweep validation metric."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from include.recsys.backends.implicit import MODEL_FIELDS
from include.recsys.config.settings import PipelineConfig
from include.recsys.tracking.mlflow import _client, _guarded, _quote, experiment_id

log = logging.getLogger(__name__)


BEST_TAG = "best_config"

BEST_JSON_TAG = "best_config_json"

TUNED_END_TAG = "tuned_interval_end"


@_guarded
def _search_runs(cfg: PipelineConfig, filter_string: str, max_results: int) -> list[Any]:
    """The experiment's runs matching ``filter_string``, newest first."""
    return _client(cfg).search_runs(
        [experiment_id(cfg)],
        filter_string=filter_string,
        order_by=["attributes.start_time DESC"],
        max_results=max_results,
    )


def last_best_config(cfg: PipelineConfig, exclude_run_id: str | None = None) -> dict[str, Any] | None:
    """The newest run of the experiment tagged ``best_config=true``: run id, config, tuned end."""
    for run in _search_runs(cfg, f"tags.{BEST_TAG} = 'true'", 5):
        if run.info.run_id == exclude_run_id:
            continue
        try:
            config = json.loads(run.data.tags[BEST_JSON_TAG])
        except (KeyError, ValueError):
            log.warning("run %s is tagged %s but has no readable %s", run.info.run_id, BEST_TAG, BEST_JSON_TAG)
            continue
        return {
            "run_id": run.info.run_id,
            "config": {k: v for k, v in config.items() if k in MODEL_FIELDS},
            "tuned_interval_end": run.data.tags.get(TUNED_END_TAG),
        }
    return None


def last_gate_verdict(cfg: PipelineConfig, dag_id: str, exclude_run_id: str | None = None) -> tuple[str, str] | None:
    """(verdict, MLflow run id) of the newest other run of ``dag_id`` that has a gate verdict."""
    for run in _search_runs(cfg, f"tags.dag_id = '{_quote(dag_id)}'", 50):
        verdict = run.data.tags.get("gate_verdict")
        if verdict and run.info.run_id != exclude_run_id and "mlflow.parentRunId" not in run.data.tags:
            return verdict, run.info.run_id
    return None


@_guarded
def log_history(cfg: PipelineConfig, run_id: str, history: list[float | None], key: str = "valid_ndcg_at_10") -> None:
    """Per-sweep validation metric as an MLflow metric history (step = sweep)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    ms = [Metric(key, float(v), now, step) for step, v in enumerate(history, start=1) if v is not None]
    if ms:
        _client(cfg).log_batch(run_id, metrics=ms)
