"""What a newcomer sees from ``make demo``: one line per task, a short summary and where to
look, with the Airflow task logs in a file instead of on the screen. Runs the demo entry point
for real (dag.test, MLflow, GX, Parquet) on the tiny preset, with the fake Slack of
test_nightly_dag.py; stdout is a pipe, so this is the plain-text (CI) rendering."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e._env import DATA_END, ROOT
from tests.e2e.test_nightly_dag import env  # noqa: F401  (env: the fixture)

pytestmark = pytest.mark.e2e


def demo(env, *args: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:  # noqa: F811
    return subprocess.run(
        [sys.executable, "-m", "include.recsys.cli.demo", "--preset", "tiny", "--data-end", DATA_END, *args],
        env={**env["env"], "RECSYS_RICH": "", **(extra_env or {})},
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )


def path_after(label: str, text: str) -> Path:
    m = re.search(rf"^\s*{label}\s*: (\S+)", text, re.M)
    assert m, f"no {label!r} line in:\n{text}"
    return Path(m.group(1))


def test_success_is_short_and_points_to_the_log_card_and_uis(env):  # noqa: F811
    proc = demo(env)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    lines = out.splitlines()
    assert len(lines) < 60, out
    # progress: one line per task, mapped tasks collapsed, figures from the stages' XComs
    assert re.search(r"^\s+ok\s+snapshot\s+[\d.]+s\s+[\d,]+ rows in -> [\d,]+ rows out", out, re.M), out
    assert re.search(r"^\s+ok\s+score_shard 2/2\s+[\d.]+s\s+[\d,]+ rows out", out, re.M), out
    assert re.search(r"^\s+ok\s+publish\s+.*CURRENT -> \S+", out, re.M), out
    # the summary and the gate verdict
    assert re.search(r"^DAG run \S+: success in \d+s$", out, re.M)
    assert "input validation : PASSED" in out
    assert re.search(r"gate\s+: PASS on ndcg@10", out)
    assert re.search(r"published\s+: \S+ \(CURRENT\)", out)
    # where to look: files that exist, and how to open the UIs
    card, log = path_after("run card", out), path_after("full log", out)
    assert card.exists() and card.name == "run_card.html"
    assert log.exists() and log.parent == card.parent  # the log lives in the run's work folder
    assert path_after("Data Docs", out).exists()
    assert "make mlflow-ui" in out and "make airflow" in out
    # the noise went to the file, and a successful run logs no misleading XCom error
    text = log.read_text()
    assert "[DAG TEST]" in text and "Task instance state updated" in text
    assert "[DAG TEST]" not in out and "Traceback" not in out
    assert "XCom not found" not in text
    # the CLI reads what the run published, and the registry's aliases
    cli = [sys.executable, "-m", "include.recsys.cli"]
    status = subprocess.run([*cli, "status", "--json"], env=env["env"], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    version = re.search(r"published\s+: (\S+)", out).group(1)
    assert info["current"] == version and info["freshness"]["ok"] is True
    assert info["model"]["champion"] == info["model"]["version"] is not None
    assert info["runs"][0]["published"] == version and info["runs"][0]["gate"] == "PASS"
    latest = subprocess.run([*cli, "card"], env=env["env"], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert latest.stdout.strip() == str(card)


def test_failure_prints_the_task_the_reason_and_its_last_lines(env):  # noqa: F811
    proc = demo(env, "--conf", '{"source_path": "/nonexistent/interactions"}')
    out = proc.stdout
    assert proc.returncode == 1
    assert len(out.splitlines()) < 40, out
    reason = "SourceError: interaction source /nonexistent/interactions does not exist"
    assert re.search(rf"^\s+FAILED\s+snapshot\s+.*{reason}", out, re.M), out
    assert "last log lines of snapshot:" in out
    assert re.search(r"not run \(an upstream task failed\)", out)
    assert "failed task      : snapshot" in out
    assert "Traceback" not in out and "File \"" not in out  # no traceback wall
    assert "published        : nothing; still served:" in out
    log = path_after("full log", out)
    assert "Traceback" in log.read_text()  # ... it is in the log


def test_verbose_streams_the_logs(env):  # noqa: F811
    proc = demo(env, "--conf", '{"source_path": "/nonexistent/interactions"}', extra_env={"VERBOSE": "1"})
    assert proc.returncode == 1
    assert "[DAG TEST]" in proc.stdout + proc.stderr
    assert "full log   : streamed above (VERBOSE=1)" in proc.stdout
