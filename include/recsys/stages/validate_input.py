"""The ``validate_input`` stage: the snapshot against the input contract (GX suite, source
statistics, drift against the history of earlier runs)."""

from __future__ import annotations

import logging
from typing import Any

from include.recsys.config.settings import PipelineConfig
from include.recsys.core.run import RunContext
from include.recsys.stages._shared import _log_validation_to_mlflow

log = logging.getLogger(__name__)


def validate_input(cfg: PipelineConfig, rc: RunContext, snap: dict[str, Any]) -> dict[str, Any]:
    """Input contract (GX suite + source stats + drift vs history); DataValidationError on errors.

    Reports and Data Docs go to ``<work>/validation/`` (logged to MLflow by ``train``); the
    statistics are appended to ``<data_dir>/validation_history/<dag_id>.jsonl`` only on success.
    """
    from include.recsys.errors import DataValidationError
    from include.recsys.validation.history import (
        history_path,
        read_snapshot,
        validate_snapshot,
    )

    df, codes = read_snapshot(snap["snapshot"], snap.get("users"), snap.get("items"))  # ids: categoricals
    paths = rc.paths(cfg)
    paths.validation.mkdir(parents=True, exist_ok=True)
    report_path = paths.input_report
    try:
        report, stats = validate_snapshot(
            df,
            snap,
            run_id=rc.run_id,
            history_file=history_path(cfg.data_dir, rc.dag_id),
            source=str(cfg.source),
            window_days=cfg.window_days,
            event_types=list(cfg.event_weights),
            report_path=report_path,
            docs_dir=paths.data_docs / "input",
            codes=codes,
            suite_frame=_spark_frame(cfg, snap["snapshot"]),
        )
    except DataValidationError:
        # a refused snapshot never reaches train: its reports and Data Docs go to MLflow now
        _log_validation_to_mlflow(cfg, rc)
        raise
    log.info("input validation: %s", report.summary())
    return {
        "report": str(report_path),
        "success": report.success,
        "warnings": len(report.warnings),
        "counts": report.counts(),
        "data_docs": report.data_docs,
    }


def _spark_frame(cfg: PipelineConfig, path: str) -> Any:
    """backend=spark: the snapshot as a Spark DataFrame, so the GX suite runs on the cluster
    (GX's Spark datasource); the statistics and drift checks read the integer codes here."""
    if cfg.backend != "spark":
        return None
    from include.recsys.backends.spark import session

    return session(cfg).read.parquet(str(path))
