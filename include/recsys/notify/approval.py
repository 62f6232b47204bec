"""What a person sees when a release waits for approval, and what the run says after a No.

The nightly DAG's ``approve_release`` task (an Airflow ``ApprovalOperator``, only when
``require_approval`` is on) shows :func:`approval_request`'s subject and body: the gate verdict
and rule table, the key metrics of the candidate against the champion and popularity, the
version that would go live and the run card. :func:`rejection_message` is the error a rejected
or unanswered release fails with (the Slack alert quotes it). Runs without Airflow: it reads
the run's ``gate.json`` and ``eval/report.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from include.recsys.core.fmt import fmt_num
from include.recsys.core.paths import RunPaths

log = logging.getLogger(__name__)


#: Metrics shown side by side (the gate metric first, then these when the report has them).
KEY_METRICS = ("ndcg@10", "recall@10", "precision@10", "map@10", "coverage@10")

_MODELS = ("candidate", "champion", "popularity")


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def _md(text: Any) -> str:
    """A table cell: pipes and newlines would break the Markdown table."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def gate_table(gate: dict[str, Any]) -> list[str]:
    """The gate's rules as Markdown table lines."""
    lines = ["| rule | result | observed | bound | note |", "|---|---|---|---|---|"]
    for r in gate.get("rules") or []:
        res = r.get("result") or ("PASS" if r.get("passed") else "FAIL")
        note = str(r.get("note") or "")
        note = note if len(note) <= 120 else note[:117] + "..."
        lines.append(f"| {_md(r.get('name'))} | {res} | {fmt_num(r.get('observed'))} | {fmt_num(r.get('bound'))} | {_md(note)} |")
    return lines


def metrics_table(report: dict[str, Any], gate_metric: str | None) -> list[str]:
    """Candidate vs champion vs popularity on the key metrics, with the relative change."""
    metrics = report.get("metrics") or {}
    models = [m for m in _MODELS if m in metrics]
    keys = [k for k in dict.fromkeys([gate_metric, *KEY_METRICS]) if k and k in metrics.get("candidate", {})]
    if not models or not keys:
        return ["(no evaluation report)"]
    head = "| metric | " + " | ".join(models) + (" | vs champion |" if "champion" in models else " |")
    lines = [head, "|---" * (len(models) + 1 + ("champion" in models)) + "|"]
    for k in keys:
        row = [fmt_num(metrics[m].get(k)) for m in models]
        if "champion" in models:
            cand, champ = metrics["candidate"].get(k), metrics["champion"].get(k)
            delta = f"{(cand - champ) / champ:+.1%}" if isinstance(cand, float) and isinstance(champ, float) and champ else "n/a"
            row.append(delta)
        lines.append(f"| {k} | " + " | ".join(row) + " |")
    return lines


def approval_request(
    work_dir: Path | str, version: str, current: str | None, *, run_id: str, mlflow_url: str | None = None
) -> tuple[str, str]:
    """(subject, Markdown body) for the approval of ``version`` built by the run in ``work_dir``."""
    paths = RunPaths(Path(work_dir))
    gate = _read(paths.gate)
    report = _read(paths.eval_report)
    verdict = gate.get("verdict", "unknown")
    forced = bool(gate.get("forced"))
    subject = f"Publish recommendations {version}? Gate {verdict}" + (" (FORCED by force_publish)" if forced else "")
    champion = report.get("champion_version")
    card = paths.run_card
    body = [
        f"**Run** `{run_id}` built table version `{version}`; CURRENT serves `{current or 'nothing yet'}`.",
        f"Approve: it goes live now and `champion` moves to this model. Reject, or no answer in time: "
        f"nothing is published and `{current or 'nothing'}` stays served.",
        "",
    ]
    if forced:
        body += [f"**WARNING: the gate said {verdict}; force_publish overrode it. Review the failed rules.**", ""]
    body += [f"### Gate: {verdict} on {gate.get('metric', 'n/a')}", *gate_table(gate), ""]
    body += [
        f"### Key metrics (holdout; champion = model version {champion or 'none'})",
        *metrics_table(report, gate.get("metric")),
        "",
        f"Run card: `{card}`" + ("" if card.exists() else " (not written)"),
    ]
    if mlflow_url:
        body.append(f"MLflow run: {mlflow_url}")
    return subject, "\n".join(body)


def rejection_message(
    version: str, current: str | None, *, by: Any = None, at: Any = None, timed_out: bool = False, hours: int | None = None
) -> str:
    """Why nothing was published after the approval step (the task's error and the alert text)."""
    who = (by.get("name") or by.get("id")) if isinstance(by, dict) else by
    if timed_out:
        what = f"no answer within {hours} h: counted as Reject" if hours else "no answer in time: counted as Reject"
    else:
        what = f"rejected by {who or 'unknown user'}" + (f" at {at}" if at else "")
    return (
        f"Release of recommendations {version} {what}. Nothing was published: CURRENT stays at "
        f"{current or 'nothing'} and the champion alias did not move. Rerun the DAG (or clear "
        f"approve_release) to ask again."
    )
