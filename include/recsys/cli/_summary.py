"""The end-of-run screen of the demo: summary, gate verdict, and where to look next.

Rendered from :func:`include.recsys.reporting.summary.collect_summary`'s dict; short on purpose (the
full figures are in the run card, the rule table of a passing gate there too).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from include.recsys.cli._console import STYLES, Out
from include.recsys.cli._progress import Failure
from include.recsys.core.fmt import fmt_num
from include.recsys.core.metric_key import parse_metric
from include.recsys.core.paths import RunPaths

METRICS = ("precision", "recall", "ndcg", "map", "coverage")


def _gate_k(gate: dict[str, Any], metrics: dict[str, Any]) -> int:
    """The gate metric's k, else the first k of the candidate's metrics (an older summary)."""
    for key in (gate.get("metric"), *metrics.get("candidate", {})):
        try:
            return parse_metric(key)[1]
        except ValueError:
            continue
    return 10


def render_metrics(out: Out, summary: dict[str, Any]) -> None:
    metrics = (summary.get("evaluation") or {}).get("metrics") or {}
    if not metrics.get("candidate"):
        return
    k = _gate_k(summary.get("gate") or {}, metrics)
    rows = [
        {"metric": f"{m}@{k}", **{name: metrics[name].get(f"{m}@{k}") for name in metrics}}
        for m in METRICS if f"{m}@{k}" in metrics["candidate"]
    ]
    out.table(rows, ["metric", *metrics], title=f"  offline metrics on "
              f"{metrics['candidate'].get('n_users_evaluated', '?')} holdout users:", indent="    ")


def render_gate(out: Out, gate: dict[str, Any]) -> None:
    if not gate:
        out.line("  gate             : not reached")
        return
    rules = gate.get("rules") or []
    results = [r.get("result") or ("PASS" if r.get("passed") else "FAIL") for r in rules]
    counts = ", ".join(f"{results.count(w)} {w.lower()}" for w in ("PASS", "FAIL", "SKIP") if w in results)
    verdict = str(gate.get("verdict"))
    forced = "  ** FORCED by force_publish: published anyway **" if gate.get("forced") else ""
    out.styled([("  gate             : ", None), (verdict, STYLES.get(verdict)),
                (f" on {gate.get('metric')} ({counts})", None), (forced, STYLES["FORCED"])])
    for rule, res in zip(rules, results):
        if res == "FAIL":
            note = str(rule.get("note") or "")
            out.line(f"    FAIL {rule.get('name')}: observed {fmt_num(rule.get('observed'))}, "
                     f"bound {fmt_num(rule.get('bound'))}. {note[:100]}".rstrip(), STYLES["FAIL"])


def render_summary(
    out: Out, summary: dict[str, Any], *, state: str, seconds: float, failures: list[Failure],
    work_dir: Path, log_path: Path | None, served: str | None,
) -> None:
    """The whole end-of-run screen."""
    out.line()
    out.styled([(f"DAG run {summary.get('run_id')}: ", "bold"), (state, STYLES.get(state)),
                (f" in {seconds:.0f}s", None)])
    for f in failures:
        out.styled([("  failed task      : ", None), (f.task, STYLES["failed"]), (f" - {f.reason}", None)])
    v = summary.get("validation") or {}
    status = "PASSED" if v.get("success") else v.get("status", "not run")
    out.styled([("  input validation : ", None), (status, STYLES.get(status)),
                (f" ({v['warnings']} warnings)" if v.get("warnings") else "", None)])
    render_metrics(out, summary)
    render_gate(out, summary.get("gate") or {})
    ov = summary.get("output_validation")
    if ov:
        c = ov.get("counts") or {}
        status = "PASSED" if ov.get("success") else "FAILED"
        out.styled([("  table validation : ", None), (status, STYLES.get(status)),
                    (f" ({c.get('passed')}/{c.get('checks')} checks)" if c else "", None)])
    p = summary.get("published") or {}
    if p:
        out.line(f"  published        : {p['version']} (CURRENT)")
    else:
        out.line(f"  published        : nothing; still served: {served or 'nothing yet'}")
    if summary.get("not_served"):  # the run's table was refused (e.g. older data than served)
        out.line(f"  not served       : {summary['not_served']}", STYLES["FAIL"])
    if summary.get("older_data"):
        out.line(f"  ** {summary['older_data']} **", STYLES["FORCED"])
    if summary.get("champion_version"):
        out.line(f"  champion model   : version {summary['champion_version']}")
    render_where(out, summary, work_dir, log_path)


def render_where(out: Out, summary: dict[str, Any], work_dir: Path, log_path: Path | None) -> None:
    out.line()
    out.line("Where to look", "bold")
    if summary.get("run_card"):
        out.line(f"  run card   : {summary['run_card']}")
    docs = [RunPaths(work_dir).data_docs / s / "index.html" for s in ("input", "output")]
    docs = [d for d in docs if d.exists()]
    if docs:
        out.line(f"  Data Docs  : {docs[0]}")
        for d in docs[1:]:
            out.line(f"               {d}")
    run_id = str(summary.get("mlflow_run_id") or "")
    ui = (os.environ.get("RECSYS_MLFLOW_UI_URL") or "http://127.0.0.1:5000").rstrip("/")
    if run_id and " " not in run_id:
        out.line(f"  MLflow UI  : make mlflow-ui, then {ui}/#/runs/{run_id}")
    else:
        out.line(f"  MLflow UI  : make mlflow-ui, then {ui} ({run_id or 'no run'})")
    port = os.environ.get("AIRFLOW__API__PORT", "8080")
    out.line(f"  Airflow UI : make airflow, then http://127.0.0.1:{port} "
             "(user admin; password printed at start)")
    out.line(f"  full log   : {log_path}" if log_path else "  full log   : streamed above (VERBOSE=1)")
    out.line()
    user = example_user(summary) or "<user_id>"
    out.line(f"Try next: .venv/bin/recsys status | .venv/bin/recsys recommend {user} -n 5 | "
             ".venv/bin/recsys card", "dim")


def example_user(summary: dict[str, Any]) -> str | None:
    """A user id of the table this run published (for the "try next" line)."""
    path = (summary.get("published") or {}).get("path")
    try:
        import pyarrow.parquet as pq

        part = sorted(Path(path).glob("part-*.parquet"))[0]
        return str(pq.ParquetFile(part).read_row_group(0, columns=["user_id"]).column(0)[0])
    except Exception:  # not published, remote, or empty: the placeholder will do
        return None
