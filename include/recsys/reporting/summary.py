"""What one run did, read back from its work folder: the summary the demo and the CLI show,
and the publish stage's outcome (``publish.json``: served, or why not) that alerts quote."""

from __future__ import annotations

import logging
import re
from typing import Any

from include.recsys.config.settings import PipelineConfig
from include.recsys.core.io import read_json, write_json
from include.recsys.core.paths import PUBLISH_OUTCOME
from include.recsys.core.run import RunContext

log = logging.getLogger(__name__)


def publish_outcome(cfg: PipelineConfig, run_id: str) -> dict[str, Any] | None:
    """What the publish stage of DAG run ``run_id`` did (``publish.json``), None if it did not run."""
    key = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)
    found = sorted(cfg.runs_root.glob(f"*/{key}/{PUBLISH_OUTCOME}")) if cfg.runs_root.exists() else []
    return read_json(found[-1]) if found else None


def collect_summary(cfg: PipelineConfig, rc: RunContext) -> dict[str, Any]:
    """What one run did, read back from its work folder, MLflow and the published table."""
    from include.recsys.tables.current import read_current
    from include.recsys.tables.layout import version_dir
    from include.recsys.tracking.registry import CHAMPION, alias_version
    from include.recsys.tracking.runs import get_or_create_run

    paths = rc.paths(cfg)
    summary: dict[str, Any] = {"run_id": rc.run_id, "interval_end": rc.end.isoformat()}
    if paths.input_report.exists():
        rep = read_json(paths.input_report)
        summary["validation"] = {
            "success": rep.get("success"),
            "warnings": len([r for r in rep.get("results", []) if not r.get("success") and r.get("severity") == "warning"]),
            "status": "FAILED" if not rep.get("success") else "PASSED",
        }
    if paths.output_report.exists():
        rep = read_json(paths.output_report)
        summary["output_validation"] = {"success": rep.get("success"), "counts": rep.get("counts")}
    if paths.eval_report.exists():
        summary["evaluation"] = read_json(paths.eval_report)
    if paths.gate.exists():
        summary["gate"] = read_json(paths.gate)
    if paths.run_card.exists():
        summary["run_card"] = str(paths.run_card)
    root = cfg.recommendations_root
    if read_current(root) == rc.version:
        summary["published"] = {"version": rc.version, "path": str(version_dir(root, rc.version))}
    outcome = read_json(paths.publish_outcome) if paths.publish_outcome.exists() else {}
    if outcome and not outcome.get("served"):
        summary["not_served"] = outcome.get("reason")  # "stale: serving data up to X, ..."
    elif outcome.get("older_data"):
        summary["older_data"] = outcome["older_data"]["note"]
    try:
        summary["mlflow_run_id"] = get_or_create_run(cfg, rc.run_id, rc.mlflow_tags())
        summary["champion_version"] = alias_version(cfg, CHAMPION)
    except Exception as exc:  # summary must not fail because MLflow is unreachable
        summary["mlflow_run_id"] = f"unavailable ({exc})"
    write_json(paths.summary, summary)
    return summary
