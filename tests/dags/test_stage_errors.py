"""The nightly DAG's stage wrapper (``_run``) classifies failures by the library's error family:
every :class:`PermanentError` fails its task on the first try, every :class:`TransientError`
(and any unexpected error) is retried with the DAG's backoff. Real Airflow (``dag.test()`` in a
subprocess with its own AIRFLOW_HOME), tasks built from the real ``_run`` and ``default_args``."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from include.recsys import errors

ROOT = Path(__file__).resolve().parents[2]


def _family(base: type) -> list[str]:
    return sorted(n for n, c in inspect.getmembers(errors, inspect.isclass)
                  if issubclass(c, base) and c is not base and c.__module__ == errors.__name__)


PERMANENT = _family(errors.PermanentError)
TRANSIENT = _family(errors.TransientError)

_DAG = textwrap.dedent(
    '''
    from __future__ import annotations

    import json
    import os
    import sys
    from datetime import datetime
    from pathlib import Path

    from airflow.sdk import DAG, task

    from include.recsys import errors
    from recsys_nightly_retrain import _run, default_args  # the wrapper and retry policy under test

    STATE = Path(os.environ["FAULT_STATE_DIR"])


    def _attempt(name: str) -> int:
        with open(STATE / f"{name}.txt", "a") as fh:
            fh.write("x\\n")
        return len((STATE / f"{name}.txt").read_text().split())


    def _error(cls_name: str):
        cls = getattr(errors, cls_name)
        exc = cls.__new__(cls)  # any constructor: only the class matters to the wrapper
        Exception.__init__(exc, f"{cls_name} raised on purpose")
        return exc


    def stage_raising(name: str, cls_name: str, succeed_on: int | None):
        def stage(cfg, rc):
            n = _attempt(name)
            if succeed_on is not None and n >= succeed_on:
                return {"attempts": n}
            raise _error(cls_name) if cls_name != "RuntimeError" else RuntimeError("a bug")
        return stage


    with DAG("stage_errors", schedule=None, start_date=datetime(2024, 1, 1), catchup=False,
             default_args=default_args, max_active_runs=1) as dag:
        for cls_name in json.loads(os.environ["FAULT_PERMANENT"]):
            @task(task_id=f"permanent_{cls_name}")
            def permanent(cls_name=cls_name, **ctx):
                return _run(stage_raising(f"permanent_{cls_name}", cls_name, None), ctx)
            permanent()
        for cls_name in json.loads(os.environ["FAULT_TRANSIENT"]):
            @task(task_id=f"transient_{cls_name}")
            def transient(cls_name=cls_name, **ctx):
                return _run(stage_raising(f"transient_{cls_name}", cls_name, 3), ctx)
            transient()

        @task(task_id="unexpected_RuntimeError")
        def unexpected(**ctx):
            return _run(stage_raising("unexpected_RuntimeError", "RuntimeError", None), ctx)
        unexpected()

    if __name__ == "__main__":
        dr = dag.test()
        tis = {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
        print("DAG_RUN_RESULT " + json.dumps({"state": str(dr.state), "tis": tis}), flush=True)
    '''
)


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    home = tmp_path_factory.mktemp("stage_errors")
    dags, state = home / "dags", home / "state"
    dags.mkdir()
    state.mkdir()
    (dags / "stage_errors.py").write_text(_DAG)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RECSYS_"))}
    env.update(
        AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'dags'}", RECSYS_TASK_RETRIES="2", RECSYS_RETRY_DELAY_S="1",
        RECSYS_DATA_DIR=str(home / "data"), RECSYS_SLACK_CONN_ID="slack_alerts",
        FAULT_STATE_DIR=str(state), FAULT_PERMANENT=json.dumps(PERMANENT), FAULT_TRANSIENT=json.dumps(TRANSIENT),
    )
    migrate = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, cwd=home,
                             capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    proc = subprocess.run([sys.executable, str(dags / "stage_errors.py")], env=env, cwd=home,
                          capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("DAG_RUN_RESULT ")]
    assert proc.returncode == 0 and lines, output[-5000:]
    return json.loads(lines[-1].split(" ", 1)[1]), state, output


def _attempts(state: Path, task_id: str) -> int:
    return len((state / f"{task_id}.txt").read_text().split())


def test_the_families_are_not_empty() -> None:
    """errors.py defines the classes the DAG relies on in each family."""
    assert {"SourceError", "DataValidationError", "GateFailed", "TrainingError", "PublishError"} <= set(PERMANENT)
    assert {"MlflowUnavailable", "StorageError", "PublishBusy"} <= set(TRANSIENT)
    assert not set(PERMANENT) & set(TRANSIENT)


def test_every_permanent_error_fails_its_task_on_the_first_try(result) -> None:
    """Each PermanentError subclass raised by a stage -> the task fails after one attempt (no
    retry), with the error's class named in the log."""
    res, state, output = result
    for name in PERMANENT:
        task_id = f"permanent_{name}"
        assert res["tis"][task_id] == "failed", (task_id, res["tis"][task_id])
        assert _attempts(state, task_id) == 1, f"{task_id} was retried: {_attempts(state, task_id)} attempts"
        assert f"{name}: {name} raised on purpose" in output, task_id


def test_transient_and_unexpected_errors_are_retried(result) -> None:
    """Each TransientError subclass fails twice, then the third attempt succeeds (retried with
    backoff); an unexpected error is retried too and fails after retries + 1 attempts."""
    res, state, _ = result
    for name in TRANSIENT:
        task_id = f"transient_{name}"
        assert res["tis"][task_id] == "success", (task_id, res["tis"][task_id])
        assert _attempts(state, task_id) == 3, task_id
    assert res["tis"]["unexpected_RuntimeError"] == "failed"
    assert _attempts(state, "unexpected_RuntimeError") == 3
    assert res["state"] == "failed"
