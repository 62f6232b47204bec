"""Run the whole nightly pipeline once, in-process, on the embedded default data.

    python -m include.recsys.demo [--preset default] [--conf '{"factors": 32}']

Generates the synthetic data set if the lake is empty, runs the DAG with ``dag.test()`` for
the data interval that ends after the newest partition, and prints a short summary. Expects
the Airflow metadata DB to be migrated (``make demo`` does it).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import sys
from datetime import date, timedelta
from pathlib import Path

import pendulum

from include.recsys.config import PROJECT_ROOT, load_config

log = logging.getLogger("recsys.demo")


def load_dag():
    path = PROJECT_ROOT / "dags" / "recsys_nightly_retrain.py"
    spec = importlib.util.spec_from_file_location("recsys_nightly_retrain", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from airflow.sdk import DAG

    return next(v for v in vars(module).values() if isinstance(v, DAG))


def _state(value) -> str:
    """'success' for DagRunState.SUCCESS or 'success' alike."""
    return str(getattr(value, "value", value))


def main(argv: list[str] | None = None) -> int:
    from include.recsys import synth
    from include.recsys.pipeline import RunContext, collect_summary, format_summary

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="default", choices=sorted(synth.PRESETS))
    ap.add_argument("--conf", default="{}", help="JSON of DAG params, e.g. '{\"factors\": 32}'")
    ap.add_argument("--logical-date", default=None, help="YYYY-MM-DD (default: day after the data)")
    ap.add_argument("--data-end", default="", help="last day of generated data (default: yesterday)")
    ap.add_argument("--json", default=None, help="also write the result as JSON to this path")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    cfg = load_config()
    if cfg.source_format == "parquet" and not cfg.source_path:
        info = synth.ensure_default_data(cfg.source, dataclasses.replace(synth.PRESETS[args.preset], end_date=args.data_end))
        print(f"data: {cfg.source} ({info['partitions']} daily partitions, {info['first_day']} .. {info['last_day']})")
        last = date.fromisoformat(info["last_day"])
    else:
        last = date.today() - timedelta(days=1)
    day = date.fromisoformat(args.logical_date) if args.logical_date else last + timedelta(days=1)
    logical = pendulum.datetime(day.year, day.month, day.day, tz="UTC")

    dag = load_dag()
    conf = json.loads(args.conf)
    dr = dag.test(logical_date=logical, run_conf=conf or None)
    rc = RunContext(dag.dag_id, dr.run_id, dr.data_interval_start, dr.data_interval_end)
    summary = collect_summary(cfg.with_overrides(conf), rc)
    print()
    print(f"DAG run {dr.run_id}: {_state(dr.state)}")
    states = {ti.task_id: _state(ti.state) for ti in dr.get_task_instances()}
    failed = sorted(t for t, s in states.items() if s == "failed")
    if failed:
        print(f"  failed tasks     : {', '.join(failed)} (their log says why; Slack was alerted)")
    print(format_summary(summary))
    print(f"  work folder      : {rc.work_dir(cfg.with_overrides(conf))}")
    ok = _state(dr.state) == "success"
    if args.json:
        Path(args.json).write_text(
            json.dumps({"state": _state(dr.state), "run_id": dr.run_id, "tasks": states, "summary": summary}, default=str)
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
