"""TODO docstring."""

from __future__ import annotations

import logging
import re
from typing import Any

from include.recsys.config.settings import PipelineConfig
from include.recsys.core.io import read_json, write_json
from include.recsys.core.run import RunContext
from include.recsys.reporting.run_card import RUN_CARD

log = logging.getLogger(__name__)


PUBLISH_OUTCOME = "publish.json"  # in the run's work folder: served, or why not


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

    work = rc.work_dir(cfg)
    summary: dict[str, Any] = {"run_id": rc.run_id, "interval_end": rc.end.isoformat()}
    if (work / "validation" / "input_report.json").exists():
        rep = read_json(work / "validation" / "input_report.json")
        summary["validation"] = {
            "success": rep.get("success"),
            "warnings": len([r for r in rep.get("results", []) if not r.get("success") and r.get("severity") == "warning"]),
            "status": "FAILED" if not rep.get("success") else "PASSED",
        }
    if (work / "validation" / "output_report.json").exists():
        rep = read_json(work / "validation" / "output_report.json")
        summary["output_validation"] = {"success": rep.get("success"), "counts": rep.get("counts")}
    if (work / "eval" / "report.json").exists():
        summary["evaluation"] = read_json(work / "eval" / "report.json")
    if (work / "gate.json").exists():
        summary["gate"] = read_json(work / "gate.json")
    if (work / RUN_CARD).exists():
        summary["run_card"] = str(work / RUN_CARD)
    root = cfg.recommendations_root
    if read_current(root) == rc.version:
        summary["published"] = {"version": rc.version, "path": str(version_dir(root, rc.version))}
    outcome = read_json(work / PUBLISH_OUTCOME) if (work / PUBLISH_OUTCOME).exists() else {}
    if outcome and not outcome.get("served"):
        summary["not_served"] = outcome.get("reason")  # "stale: serving data up to X, ..."
    elif outcome.get("older_data"):
        summary["older_data"] = outcome["older_data"]["note"]
    try:
        summary["mlflow_run_id"] = get_or_create_run(cfg, rc.run_id, rc.mlflow_tags())
        summary["champion_version"] = alias_version(cfg, CHAMPION)
    except Exception as exc:  # summary must not fail because MLflow is unreachable
        summary["mlflow_run_id"] = f"unavailable ({exc})"
    write_json(work / "summary.json", summary)
    return summary
