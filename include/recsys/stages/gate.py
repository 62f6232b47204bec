"""The gate stage: the gate spec applied to the evaluation report -> ``gate.json``, the run card
and MLflow tags; a FAIL stops the run unless ``force_publish`` (the rules: :mod:`include.recsys.validation.gate`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from include.recsys.config.settings import PipelineConfig
from include.recsys.core.io import read_json, write_json
from include.recsys.core.run import RunContext
from include.recsys.reporting.run_card import write_run_card

log = logging.getLogger(__name__)


def gate(
    cfg: PipelineConfig,
    rc: RunContext,
    ev: dict[str, Any],
    model: dict[str, Any],
    snap: dict[str, Any] | None = None,
    parts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Apply the gate spec to the evaluation report: PASS / FAIL / SKIPPED with a rule table.

    Writes ``gate.json`` and the run card, logs both to MLflow (tags ``gate_verdict``,
    ``gate_forced``, one ``gate_rule.<name>`` per rule) and raises GateFailed on FAIL, unless
    ``force_publish`` is set: then a FAIL or SKIPPED verdict is kept but marked ``forced`` (a
    WARNING in the log, Slack warned by the DAG) and the run goes on to publish; the output
    validation still stands between the table and CURRENT.
    """
    from include.recsys.config.gate_spec import load_spec, spec_sha256
    from include.recsys.errors import GateFailed
    from include.recsys.tracking.runs import code_version, log_to_run
    from include.recsys.validation.gate import FAIL, PASS, decide, force, mlflow_tags

    spec = load_spec(cfg)
    paths = rc.paths(cfg)
    report_path = Path(ev.get("report") or paths.eval_report)
    report = read_json(report_path) if report_path.exists() else {"metrics": ev["metrics"]}
    result = decide(spec, report)
    if cfg.force_publish and result.verdict != PASS:
        force(result)
        log.warning(
            "FORCED PUBLISH: gate %s on %s overridden by force_publish=true (run %s); failed rules: %s",
            result.verdict, result.metric, rc.run_id, [r.name for r in result.failed()] or "none",
        )
    path = write_json(
        paths.gate,
        {**result.to_dict(), "spec_path": str(cfg.gate_spec_path), "spec_sha256": spec_sha256(cfg.gate_spec_path)},
    )
    card = write_run_card(cfg, rc, model.get("mlflow_run_id"), snap=snap, parts=parts, code_version=code_version())
    log_to_run(
        cfg,
        model["mlflow_run_id"],
        tags=mlflow_tags(result),
        artifacts={"gate": path, **({"run_card": card} if card else {})},
    )
    log.log(logging.WARNING if result.verdict != PASS else logging.INFO, "%s", result.explain())
    if result.verdict == FAIL and not result.forced:
        err = GateFailed(result)
        err.report_path = str(card or path)  # the run card, named in the Slack alert
        raise err
    return {**result.to_dict(), "path": str(path), "run_card": str(card) if card else None}
