"""Fault injection where Airflow's own behaviour is the point: retries with backoff, the
execution timeout, and the freshness check DAG noticing a missed nightly run. Tiny DAGs
built from the nightly DAG's ``default_args`` run through ``dag.test()`` in a subprocess with
an isolated AIRFLOW_HOME (one ``airflow db migrate`` for the module) and a fake Slack.

Each test's docstring reads ``fault -> expected outcome`` (see tests/faults/list_faults.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from include.recsys.tables.current import history, read_current
from include.recsys.tables.layout import STAGING_PREFIX, version_dir
from tests.fakes.slack_server import FakeSlack
from tests.faults import _helpers as h

ROOT = Path(__file__).resolve().parents[2]

_DAGS = textwrap.dedent(
    '''
    from __future__ import annotations

    import os
    import sys
    import time
    from datetime import datetime, timedelta
    from pathlib import Path

    from airflow.sdk import DAG, task

    from recsys_nightly_retrain import default_args  # the project's retry/backoff/alert policy

    STATE = Path(os.environ["FAULT_STATE_DIR"])

    with DAG("fault_transient", schedule=None, start_date=datetime(2024, 1, 1), catchup=False,
             default_args=default_args, max_active_runs=1) as dag_transient:

        @task
        def flaky():
            attempts = STATE / "attempts.txt"
            with open(attempts, "a") as fh:
                fh.write(f"{time.time()}\\n")
            n = len(attempts.read_text().splitlines())
            if n <= 2:
                raise ConnectionError(f"transient: upstream store unavailable (attempt {n})")
            return n

        flaky()

    with DAG("fault_timeout", schedule=None, start_date=datetime(2024, 1, 1), catchup=False,
             default_args={**default_args, "retries": 0}, max_active_runs=1) as dag_timeout:

        @task(execution_timeout=timedelta(seconds=3))
        def precompute():
            """Writes a version far too slowly: the timeout interrupts write_version."""
            from include.recsys.tables import versions
            from tests.faults import _helpers as h

            real = versions.write_part

            def slow_part(*args, **kwargs):
                out = real(*args, **kwargs)
                time.sleep(2)
                return out

            versions.write_part = slow_part
            h.write(os.environ["FAULT_RECS"], "v_timeout", rows_per_part=h.TOP_N)
            return "v_timeout"

        @task
        def publish(version):
            from include.recsys.tables.current import point_current

            point_current(os.environ["FAULT_RECS"], version)

        publish(precompute())

    if __name__ == "__main__":
        dag = {"transient": dag_transient, "timeout": dag_timeout}[sys.argv[1]]
        dr = dag.test()
        tis = {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
        print("DAG_RUN_RESULT " + __import__("json").dumps({"state": str(dr.state), "tis": tis}), flush=True)
    '''
)


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("fault_airflow")
    dags = home / "dags"
    dags.mkdir()
    (dags / "fault_dags.py").write_text(_DAGS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RECSYS_"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'dags'}",
        RECSYS_TASK_RETRIES="2",
        RECSYS_RETRY_DELAY_S="1",
        RECSYS_DATA_DIR=str(home / "data"),
        RECSYS_SLACK_CONN_ID="slack_alerts",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=env, cwd=home, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return env


def _dag_test(env: dict[str, str], args: list[str], extra: dict[str, str]) -> tuple[dict, str]:
    proc = subprocess.run(
        [sys.executable, *args], env={**env, **extra}, cwd=env["AIRFLOW_HOME"],
        capture_output=True, text=True, timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("DAG_RUN_RESULT ")]
    assert lines, output[-5000:]
    return json.loads(lines[-1].split(" ", 1)[1]), output


def test_fault_transient_task_error_retried_with_backoff(airflow_env, tmp_path) -> None:
    """A task raises a transient error on its first two attempts -> retried with exponential
    backoff (the nightly DAG's default_args), the third attempt succeeds, the run succeeds and
    Slack stays quiet (retries are only logged)."""
    state = tmp_path / "state"
    state.mkdir()
    with FakeSlack() as slack:
        result, output = _dag_test(
            airflow_env,
            [str(Path(airflow_env["AIRFLOW__CORE__DAGS_FOLDER"]) / "fault_dags.py"), "transient"],
            {"FAULT_STATE_DIR": str(state), "AIRFLOW_CONN_SLACK_ALERTS": slack.conn_json()},
        )
        assert result["state"] == "success", output[-5000:]
        assert result["tis"] == {"flaky": "success"}
        times = [float(t) for t in (state / "attempts.txt").read_text().split()]
        assert len(times) == 3
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert all(g >= 0.9 for g in gaps), gaps  # retry_delay 1 s, doubled per attempt (+ jitter)
        assert output.count("will be retried, no alert sent") == 2, output[-5000:]
        assert slack.requests == []


def test_fault_task_exceeds_execution_timeout(airflow_env, tmp_path) -> None:
    """A precompute task runs past its execution_timeout while writing a version -> it fails
    with AirflowTaskTimeout, publish never runs, CURRENT unchanged, the half-written staging
    folder removed, one Slack alert."""
    recs = tmp_path / "recs"
    h.publish(recs, "v1")
    with FakeSlack() as slack:
        result, output = _dag_test(
            airflow_env,
            [str(Path(airflow_env["AIRFLOW__CORE__DAGS_FOLDER"]) / "fault_dags.py"), "timeout"],
            {"FAULT_STATE_DIR": str(tmp_path), "FAULT_RECS": str(recs),
             "AIRFLOW_CONN_SLACK_ALERTS": slack.conn_json()},
        )
        assert result["state"] == "failed", output[-5000:]
        assert result["tis"]["precompute"] == "failed"
        assert result["tis"]["publish"] == "upstream_failed"
        assert "AirflowTaskTimeout" in output
        assert read_current(recs) == "v1"
        assert not version_dir(recs, "v_timeout").exists()
        assert not list(recs.glob(f"{STAGING_PREFIX}*"))
        assert [e["version"] for e in history(recs)] == ["v1"]
        assert slack.wait_for(1)
        assert len(slack.requests) == 1
        text = json.dumps(slack.requests[0].json)
        assert "fault_timeout.precompute" in text and "Timeout" in text


def test_fault_missed_nightly_run_alerts_via_freshness_dag(airflow_env, tmp_path) -> None:
    """The nightly run did not publish (CURRENT is 3 days old and the
    daily deadline has passed) ->
    the hourly recsys_freshness_check DAG succeeds and posts exactly one freshness alert naming both problems."""
    data = tmp_path / "data"
    recs = data / "recommendations"
    h.publish(recs, "v_old")
    h.set_commit_time(recs, (datetime.now(timezone.utc) - timedelta(days=3)).isoformat())
    code = (
        "import json\n"
        "from recsys_freshness_check import freshness_dag as dag\n"
        "dr = dag.test()\n"
        "tis = {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}\n"
        "print('DAG_RUN_RESULT ' + json.dumps({'state': str(dr.state), 'tis': tis}), flush=True)\n"
    )
    with FakeSlack() as slack:
        extra = {
            "RECSYS_DATA_DIR": str(data),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW_CONN_SLACK_ALERTS": slack.conn_json(),
            "RECSYS_FRESHNESS_MAX_AGE_HOURS": "30",
            "RECSYS_FRESHNESS_DEADLINE_UTC": "00:00",
        }
        result, output = _dag_test(airflow_env, ["-c", code], extra)
        assert result == {"state": "success", "tis": {"check_freshness": "success"}}, output[-5000:]
        assert slack.wait_for(1)
        assert len(slack.requests) == 1
        msg = slack.requests[0].json
        assert "stale" in msg["text"] and "v_old" in msg["text"]
        body = json.dumps(msg)
        assert "more than the allowed 30 h" in body and "no nightly publish today" in body

