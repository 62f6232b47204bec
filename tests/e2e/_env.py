"""What the end-to-end tests share: an isolated Airflow home + data folder with the fake Slack
wired in (``airflow db migrate`` done), running the demo entry point, and reading CURRENT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.fakes.slack_server import FakeSlack

ROOT = Path(__file__).resolve().parents[2]
DATA_END = "2026-11-20"


def airflow_env(base: Path, slack: FakeSlack, **overrides: str) -> dict[str, str]:
    """The environment of a DAG run under ``base`` (its own metadata DB, data and MLflow store;
    Slack goes to ``slack``), with the metadata DB migrated. ``overrides`` win."""
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(base / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": str(ROOT),
        "RECSYS_DATA_DIR": str(base / "data"),
        "RECSYS_TASK_RETRIES": "1",
        "RECSYS_RETRY_DELAY_S": "1",
        "AIRFLOW_CONN_SLACK_ALERTS": slack.conn_json(),
        "RECSYS_SLACK_CONN_ID": "slack_alerts",
        **overrides,
    }
    env.pop("MLFLOW_TRACKING_URI", None)  # tests use the SQLite store under RECSYS_DATA_DIR
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    return env


def run_demo(env: dict, *args: str, extra_env: dict | None = None) -> dict:
    """One run of the demo entry point (tiny preset); its ``--json`` result plus stdout and the
    exit code."""
    out = env["base"] / f"result-{len(list(env['base'].glob('result-*')))}.json"
    proc = subprocess.run(
        [sys.executable, "-m", "include.recsys.cli.demo", "--preset", "tiny", "--data-end", DATA_END,
         "--json", str(out), *args],
        env={**env["env"], **(extra_env or {})}, capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert out.exists(), f"demo wrote no result\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}"
    result = json.loads(out.read_text())
    result["stdout"] = proc.stdout
    result["returncode"] = proc.returncode
    return result


def current(env: dict) -> str | None:
    p = env["data"] / "recommendations" / "CURRENT"
    return p.read_text().strip() if p.exists() else None
