"""Run the whole nightly pipeline once, in-process, on the embedded default data.

    python -m include.recsys.cli.demo [--preset default] [--conf '{"factors": 32}'] [--verbose]

Generates the synthetic data set if the lake is empty, runs the DAG with ``dag.test()`` for
the data interval that ends after the newest partition, and shows one line per task as it
finishes, then a short summary (metrics, gate verdict, what was published) and where to look
next (run card, Data Docs, MLflow and Airflow UIs). The full logs (Airflow task logs, library
logging) go to ``<run work folder>/demo.log``, whose path is printed; ``--verbose`` or
``VERBOSE=1`` streams them to the terminal instead. Expects the Airflow metadata DB to be
migrated (``make demo`` does it). Exit code: 0 when the DAG run succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import os
import sys
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pendulum

from include.recsys.config.settings import PROJECT_ROOT, load_config

log = logging.getLogger("recsys.demo")


def load_dag():
    path = PROJECT_ROOT / "dags" / "recsys_nightly_retrain.py"
    spec = importlib.util.spec_from_file_location("recsys_nightly_retrain", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from airflow.sdk import DAG

    return next(v for v in vars(module).values() if isinstance(v, DAG))


def _state(value: Any) -> str:
    """'success' for DagRunState.SUCCESS or 'success' alike."""
    return str(getattr(value, "value", value))


def _args(argv: list[str] | None) -> argparse.Namespace:
    from include.recsys.data import synth

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="default", choices=sorted(synth.PRESETS))
    ap.add_argument("--conf", default="{}", help="JSON of DAG params, e.g. '{\"factors\": 32}'")
    ap.add_argument("--logical-date", default=None, help="YYYY-MM-DD (default: day after the data)")
    ap.add_argument("--data-end", default="", help="last day of generated data (default: yesterday)")
    ap.add_argument("--json", default=None, help="also write the result as JSON to this path")
    ap.add_argument("--verbose", action="store_true", default=os.environ.get("VERBOSE", "") not in ("", "0"),
                    help="stream the full logs here instead of a log file (also VERBOSE=1)")
    return ap.parse_args(argv)


def _prepare_data(cfg, preset: str, data_end: str) -> tuple[date, str]:
    from include.recsys.data import synth

    if cfg.source_format == "parquet" and not cfg.source_path:
        spec = dataclasses.replace(synth.PRESETS[preset], end_date=data_end)
        info = synth.ensure_default_data(cfg.source, spec)
        days = f"{info['partitions']} daily partitions, {info['first_day']} .. {info['last_day']}"
        line = f"{cfg.source} ({days})"
        return date.fromisoformat(info["last_day"]), line
    return date.today() - timedelta(days=1), str(cfg.source_path or cfg.source)


def _task_states(dr, task_ids: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """task id -> states of its instances; task ids in the order they ran (the DAG's order
    for those that never started)."""
    states: dict[str, list[str]] = {}
    rank = {t: i for i, t in enumerate(task_ids)}
    def key(t):
        started = t.start_date.timestamp() if t.start_date else 0.0
        return (t.start_date is None, started, rank.get(t.task_id, 0), t.map_index)

    tis = sorted(dr.get_task_instances(), key=key)
    for ti in tis:
        states.setdefault(ti.task_id, []).append(_state(ti.state))
    return states, list(states)


def _expected_work_dir(dag, cfg, logical, run_after) -> Path | None:
    """The work folder ``dag.test(logical_date=logical, run_after=run_after)`` will use, worked
    out the way dag.test does (manual data interval of the DAG's timetable, manual run id), so
    the log can live there from the start. None when that cannot be worked out."""
    try:
        from airflow.models.dagrun import DagRun
        from airflow.serialization.encoders import coerce_to_core_timetable
        from airflow.utils.types import DagRunType

        from include.recsys.core.run import RunContext

        interval = coerce_to_core_timetable(dag.timetable).infer_manual_data_interval(run_after=logical)
        run_id = DagRun.generate_run_id(run_type=DagRunType.MANUAL, logical_date=logical, run_after=run_after)
        return RunContext(dag.dag_id, run_id, interval.start, interval.end).work_dir(cfg)
    except Exception:
        log.warning("could not work out the run's work folder ahead of the run", exc_info=True)
        return None


def _move_log(capture, work: Path | None) -> Path | None:
    """Move the captured log to ``<work>/demo.log`` (the open descriptors follow the rename)."""
    from include.recsys.core.paths import RunPaths

    target = None if work is None else RunPaths(work).demo_log
    if capture.path is None or target is None or capture.path == target:
        return capture.path
    os.replace(capture.path, target)
    capture.path = target
    return target


def _run(dag, logical, run_after, conf: dict[str, Any], out, capture) -> tuple[Any, Any]:
    """dag.test() with the progress listener attached; returns (DagRun, TaskProgress)."""
    from include.recsys.cli._progress import TaskProgress, listen

    progress = TaskProgress(out, capture)
    progress.width = max(len(t) for t in dag.task_ids)
    undo = listen(progress)
    try:
        dr = dag.test(logical_date=logical, run_after=run_after, run_conf=conf or None)
    finally:
        undo()
    states, order = _task_states(dr, list(dag.task_ids))
    progress.finish(states, order)
    return dr, progress


def main(argv: list[str] | None = None) -> int:
    from include.recsys.cli._console import Out
    from include.recsys.cli._progress import LogCapture
    from include.recsys.core.io import atomic_write

    args = _args(argv)
    cfg = load_config()
    conf = json.loads(args.conf)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    log_path = None if args.verbose else cfg.runs_root / f"demo-{stamp}.log"
    capture = LogCapture(log_path)
    t0 = time.monotonic()
    try:
        with capture as stream:
            out = Out(stream)
            dr, summary = _demo(args, cfg, conf, out, capture, t0)
    except Exception as exc:  # the traceback is in the log; the screen gets one line and the tail
        first = (str(exc).strip().splitlines() or [""])[0]
        sys.stderr.write(f"demo failed: {type(exc).__name__}: {first}\n")
        for ln in capture.tail(0, lines=10):
            sys.stderr.write(f"  | {ln}\n")
        if capture.path is not None:
            sys.stderr.write(f"full log: {capture.path}\n")
        return 2
    ok = _state(dr.state) == "success"
    if args.json:
        states = {ti.task_id: _state(ti.state) for ti in dr.get_task_instances()}
        atomic_write(args.json, json.dumps(
            {"state": _state(dr.state), "run_id": dr.run_id, "tasks": states, "summary": summary,
             "log": str(capture.path) if capture.path else None},
            default=str,
        ))
    return 0 if ok else 1


def _demo(args: argparse.Namespace, cfg, conf: dict[str, Any], out, capture, t0: float):
    """Prepare the data, run the DAG with progress lines, render the summary."""
    from include.recsys.cli._summary import render_summary
    from include.recsys.core.run import RunContext
    from include.recsys.reporting.summary import collect_summary
    from include.recsys.tables.current import read_current

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out.line("recsys demo: the nightly retraining DAG, run once in this process", "bold")
    last, data_line = _prepare_data(cfg, args.preset, args.data_end)
    out.line(f"  data : {data_line}")
    day = date.fromisoformat(args.logical_date) if args.logical_date else last + timedelta(days=1)
    logical = pendulum.datetime(day.year, day.month, day.day, tz="UTC")
    run_after = pendulum.now("UTC")
    run_cfg = cfg.with_overrides(conf)
    dag = load_dag()
    log_path = _move_log(capture, _expected_work_dir(dag, run_cfg, logical, run_after))
    out.line(f"  run  : {dag.dag_id} for the data interval ending {day.isoformat()}")
    out.line(f"  log  : {log_path} (VERBOSE=1 streams it here)" if log_path else "  log  : streamed")
    out.line("  starting Airflow in-process (the first run takes ~15 s before the first task) ...", "dim")
    dr, progress = _run(dag, logical, run_after, conf, out, capture)
    rc = RunContext(dr.dag_id, dr.run_id, dr.data_interval_start, dr.data_interval_end)
    work = rc.work_dir(run_cfg)
    log_path = _move_log(capture, work)  # a no-op unless the guess above was wrong
    summary = collect_summary(run_cfg, rc)
    render_summary(
        out, summary, state=_state(dr.state), seconds=time.monotonic() - t0,
        failures=progress.failures, work_dir=work, log_path=log_path,
        served=read_current(run_cfg.recommendations_root),
    )
    return dr, summary


if __name__ == "__main__":
    sys.exit(main())
