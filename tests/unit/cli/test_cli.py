"""The ``recsys`` command on tiny tables: every subcommand in human and ``--json`` mode, and the
error cases a newcomer meets first (nothing published, unknown user, no previous version),
each a one-line error with a meaningful exit code."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from include.recsys.cli import app
from include.recsys.cli._common import EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_USAGE
from include.recsys.tables.current import history, point_current, read_current
from include.recsys.tables.versions import write_version
from tests.faults._helpers import TOP_N, USERS, fallback, table

V1, V2 = "20261120T000000Z-aaaaaaaa", "20261121T000000Z-bbbbbbbb"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch):
    """No ambient setting may point the CLI at a real table, MLflow or token."""
    for var in ("RECSYS_DATA_DIR", "RECSYS_RECOMMENDATIONS_DIR", "RECSYS_MLFLOW_TRACKING_URI",
                "MLFLOW_TRACKING_URI", "RECSYS_READER_TOKEN", "RECSYS_READER_TOKEN_FILE", "RECSYS_RICH"):
        monkeypatch.delenv(var, raising=False)


def run(data, *args: str):
    return CliRunner().invoke(app, ["--data-dir", str(data), *args])


def publish_versions(data, *versions: str) -> None:
    """Complete versions (tiny tables whose items name their version), served in order. The
    manifests carry no model version: rollback then has no alias to move (no MLflow needed)."""
    root = data / "recommendations"
    for v in versions:
        write_version(root, v, table(v), fallback(v), {"top_n": TOP_N})
        point_current(root, v, reason="publish by test")


def error_line(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr  # one line, no traceback
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def data(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def published(data):
    publish_versions(data, V1, V2)
    return data


# --- status -----------------------------------------------------------------------------------


def test_status_shows_current_interval_model_and_freshness(published):
    r = run(published, "status")
    assert r.exit_code == 0, r.output
    assert f"CURRENT        {V2}" in r.stdout
    assert "freshness      ok" in r.stdout
    assert f"{len(USERS) * TOP_N} rows, {len(USERS)} users" in r.stdout
    assert "no MLflow store yet" in r.stdout  # status never creates an MLflow DB
    assert not (published / "mlflow").exists()


def test_status_json(published, tmp_path):
    work = tmp_path / "data" / "runs" / "20261121T000000Z" / "manual__x"
    work.mkdir(parents=True)
    (work / "gate.json").write_text(json.dumps({"verdict": "FAIL", "metric": "ndcg@10"}))
    r = run(published, "status", "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["current"] == V2 and info["rows"] == len(USERS) * TOP_N
    assert info["freshness"]["ok"] is True and info["model"]["champion"] is None
    assert info["runs"][0]["gate"] == "FAIL" and info["runs"][0]["published"] == "-"


@pytest.mark.parametrize("mode", [[], ["--json"]])
def test_status_with_nothing_published(data, mode):
    r = run(data, "status", *mode)
    assert r.exit_code == EXIT_NOT_FOUND
    assert "nothing is published" in error_line(r)
    if mode:
        assert json.loads(r.stdout) == {"error": error_line(r)[len("error: "):], "exit_code": EXIT_NOT_FOUND}


# --- versions ---------------------------------------------------------------------------------


def test_versions_human_and_json(published):
    r = run(published, "versions")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split()[:2] == ["version", "created_at"]
    assert lines[1].startswith(V1) and lines[2].startswith(V2) and lines[2].rstrip().endswith("CURRENT")
    rows = json.loads(run(published, "versions", "--json").stdout)
    assert [(v["version"], v["current"]) for v in rows] == [(V1, False), (V2, True)]


@pytest.mark.parametrize("mode", [[], ["--json"]])
def test_versions_with_nothing_published(data, mode):
    r = run(data, "versions", *mode)
    assert r.exit_code == EXIT_NOT_FOUND and "nothing is published" in error_line(r)


# --- recommend --------------------------------------------------------------------------------


def test_recommend_human(published):
    r = run(published, "recommend", USERS[0], "-n", "3")
    assert r.exit_code == 0, r.output
    assert f"user {USERS[0]} - version {V2} - source: model" in r.stdout
    rows = [ln.split() for ln in r.stdout.splitlines()[2:]]
    assert [row[:2] for row in rows] == [["1", f"{V2}:item1"], ["2", f"{V2}:item2"], ["3", f"{V2}:item3"]]


def test_recommend_json_and_older_version(published):
    r = run(published, "recommend", USERS[1], "--json", "--version", V1)
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert got["version"] == V1 and got["known"] is True and got["source"] == "model"
    assert [i["item_id"] for i in got["items"]] == [f"{V1}:item{k}" for k in range(1, TOP_N + 1)]


@pytest.mark.parametrize("mode", [[], ["--json"]])
def test_recommend_unknown_user_fails_unless_fallback_asked(published, mode):
    r = run(published, "recommend", "nobody", *mode)
    assert r.exit_code == EXIT_NOT_FOUND
    assert "user 'nobody' is not in version" in error_line(r) and "--fallback" in error_line(r)
    r = run(published, "recommend", "nobody", "--fallback", *mode)
    assert r.exit_code == 0, r.output
    if mode:
        got = json.loads(r.stdout)
        assert got["known"] is False and got["source"] == "fallback"
        assert [i["item_id"] for i in got["items"]] == [f"{V2}:pop{k}" for k in (1, 2, 3)]
    else:
        assert "popularity fallback (unknown user)" in r.stdout and f"{V2}:pop1" in r.stdout


def test_recommend_bad_n_is_a_usage_error(published):
    r = run(published, "recommend", USERS[0], "-n", str(TOP_N + 1))
    assert r.exit_code == EXIT_USAGE and "exceeds" in error_line(r)
    r = run(published, "recommend", USERS[0], "-n", "0")  # rejected by the option itself
    assert r.exit_code == EXIT_USAGE


@pytest.mark.parametrize("mode", [[], ["--json"]])
def test_recommend_with_nothing_published(data, mode):
    r = run(data, "recommend", USERS[0], *mode)
    assert r.exit_code == EXIT_NOT_FOUND and "nothing is published" in error_line(r)


# --- similar ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [[], ["--json"]])
def test_similar_says_the_table_does_not_exist(published, mode):
    r = run(published, "similar", "item1", *mode)
    assert r.exit_code == EXIT_NOT_FOUND
    assert "no similar-items table published under" in error_line(r)
    assert str(published / "similar_items") in error_line(r)


# --- rollback ---------------------------------------------------------------------------------


def test_rollback_serves_the_previous_version(published):
    r = run(published, "rollback", "--reason", "bad recommendations")
    assert r.exit_code == 0, r.output
    assert f"rolled back: CURRENT {V2} -> {V1}" in r.stdout and "bad recommendations" in r.stdout
    root = published / "recommendations"
    assert read_current(root) == V1
    assert history(root)[-1]["reason"] == "rollback"


def test_rollback_to_a_named_version_json(published):
    root = published / "recommendations"
    publish_versions(published, "20261122T000000Z-cccccccc")
    r = run(published, "rollback", V1, "--reason", "pin", "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert got["from"] == "20261122T000000Z-cccccccc" and got["to"] == V1 and got["reason"] == "pin"
    assert read_current(root) == V1


@pytest.mark.parametrize("mode", [[], ["--json"]])
def test_rollback_without_a_previous_version_is_refused(data, mode):
    publish_versions(data, V1)
    r = run(data, "rollback", "--reason", "x", *mode)
    assert r.exit_code == EXIT_REFUSED and "no previous version" in error_line(r)
    assert read_current(data / "recommendations") == V1


def test_rollback_errors(published, data):
    r = run(published, "rollback", "20200101T000000Z-nothere", "--reason", "x")
    assert r.exit_code == EXIT_NOT_FOUND and "is not a complete version" in error_line(r)
    r = run(published, "rollback", V2, "--reason", "x")
    assert r.exit_code == EXIT_REFUSED and "already served" in error_line(r)
    r = run(published, "rollback")  # --reason is required
    assert r.exit_code == EXIT_USAGE and "--reason" in r.output
    assert read_current(published / "recommendations") == V2


def test_rollback_with_nothing_published(tmp_path):
    r = run(tmp_path / "empty", "rollback", "--reason", "x")
    assert r.exit_code == EXIT_NOT_FOUND and "nothing is published" in error_line(r)


# --- card -------------------------------------------------------------------------------------


def _run_folder(data, name: str, run_id: str, verdict: str | None, version: str | None = None):
    work = data / "runs" / "20261121T000000Z" / name
    work.mkdir(parents=True)
    if verdict:
        (work / "run_card.html").write_text("<html>card</html>")
        (work / "run_card.json").write_text(json.dumps({
            "run_id": run_id, "interval_end": "2026-11-21 00:00:00+00:00", "gate": {"verdict": verdict},
            "published": {"version": version} if version else None,
        }))
    return work


def test_card_newest_by_run_and_by_version(published):
    old = _run_folder(published, "manual__a", "manual__a:1", "PASS", V2)
    new = _run_folder(published, "manual__b", "manual__b:2", "FAIL")
    import os

    os.utime(old, (1, 1))  # the newest run is the one with the newest folder
    r = run(published, "card")
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(new / "run_card.html")
    assert run(published, "card", "manual__a:1").stdout.strip() == str(old / "run_card.html")
    assert run(published, "card", "manual__a").stdout.strip() == str(old / "run_card.html")
    got = json.loads(run(published, "card", V2, "--json").stdout)
    assert got == {"run_id": "manual__a:1", "interval_end": "2026-11-21 00:00", "gate": "PASS",
                   "published": V2, "card": str(old / "run_card.html")}


@pytest.mark.parametrize("mode", [[], ["--json"]])
def test_card_errors(data, mode):
    r = run(data, "card", *mode)
    assert r.exit_code == EXIT_NOT_FOUND and "no run card" in error_line(r)
    _run_folder(data, "manual__c", "manual__c", None)
    r = run(data, "card", "manual__c", *mode)
    assert r.exit_code == EXIT_NOT_FOUND and "failed before the gate" in error_line(r)
    r = run(data, "card", "manual__zzz", *mode)
    assert r.exit_code == EXIT_NOT_FOUND and "no run 'manual__zzz'" in error_line(r)


# --- serve, help, usage -----------------------------------------------------------------------


def test_serve_refuses_to_start_unsafely(published):
    r = run(published, "serve", "--host", "0.0.0.0", "--no-auth")
    assert r.exit_code == EXIT_REFUSED and "loopback" in error_line(r)


def test_help_has_examples_and_exit_codes():
    r = CliRunner().invoke(app, ["--help"])
    assert r.exit_code == 0
    text = " ".join(r.stdout.split())
    assert "Exit codes: 0 ok; 1 usage" in text and "recsys recommend u42 -n 5" in text
    for cmd in ("status", "versions", "recommend", "similar", "rollback", "card", "serve"):
        assert cmd in text


def test_library_errors_map_to_exit_codes_through_the_hierarchy():
    from include.recsys.cli._common import EXIT_UNAVAILABLE, CliError, _classify
    from include.recsys.errors import (
        GateSpecError,
        MlflowUnavailable,
        PermanentError,
        PublishBusy,
        PublishError,
        RegistryError,
        StaleData,
        StorageError,
    )

    assert _classify(PublishBusy("lock held")) == ("lock held (retry later)", EXIT_UNAVAILABLE)
    assert _classify(MlflowUnavailable("down"))[1] == _classify(StorageError("s3"))[1] == EXIT_UNAVAILABLE
    assert _classify(PublishError("version v has no manifest"))[1] == EXIT_NOT_FOUND
    assert _classify(StaleData("2026-11-20", "2026-11-19"))[1] == EXIT_REFUSED
    assert _classify(RegistryError("no previous version"))[1] == EXIT_REFUSED
    assert _classify(GateSpecError("bad key"))[1] == EXIT_USAGE  # a PermanentError and a ValueError
    assert _classify(KeyError("u1")) == ("u1", EXIT_NOT_FOUND)
    assert isinstance(CliError("x"), PermanentError)
    assert _classify(CliError("x", EXIT_REFUSED)) == ("x", EXIT_REFUSED)
    assert _classify(RuntimeError("a bug")) is None


def test_usage_errors_exit_1(data):
    assert run(data, "versions", "--bogus").exit_code == EXIT_USAGE
    assert run(data, "nosuchcommand").exit_code == EXIT_USAGE


# --- the demo's progress lines and log capture (no Airflow needed) ------------------------------


def test_log_capture_sends_every_writer_to_the_file(tmp_path):
    """In a child process (pytest replaces sys.stdout itself): print, logging and raw writes to
    fd 2 land in the file; the stream LogCapture returns still reaches the real stdout."""
    import subprocess
    import sys
    from pathlib import Path

    log = tmp_path / "run" / "demo.log"
    code = (
        "import logging, os, sys\n"
        "from include.recsys.cli._progress import LogCapture\n"
        "logging.basicConfig(level=logging.INFO)\n"
        f"with LogCapture(__import__('pathlib').Path({str(log)!r})) as screen:\n"
        "    print('print noise')\n"
        "    os.write(2, b'fd-level noise\\n')\n"
        "    logging.getLogger('x').warning('logging noise')\n"
        "    screen.write('progress line\\n')\n"
        "print('after')\n"
    )
    root = Path(__file__).resolve().parents[3]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = log.read_text()
    assert "print noise" in text and "fd-level noise" in text and "logging noise" in text
    assert proc.stdout.splitlines() == ["progress line", "after"] and proc.stderr == ""


def test_failure_tail_drops_bookkeeping_and_traceback_frames():
    from include.recsys.cli._progress import meaningful

    lines = [
        "2026-12-03T17:25:08.906725Z [info     ] ::endgroup::                   [task] loc=task_runner.py:2232",
        "2026-12-03T17:25:08.928776Z [error    ] Task failed with exception     [task] loc=task_runner.py:1639",
        "Traceback (most recent call last):",
        '  File "/work/main/include/recsys/data/source.py", line 294, in read_source',
        '    raise SourceError(f"interaction source {path} does not exist")',
        "include.recsys.errors.SourceError: interaction source /x does not exist",
        "",
        "The above exception was the direct cause of the following exception:",
        "Traceback (most recent call last):",
        '  File "/work/main/dags/recsys_nightly_retrain.py", line 109, in _stage',
        "           ^^^^^^^^^^^^^",
        "airflow.sdk.exceptions.AirflowFailException: SourceError: interaction source /x does not exist",
        "2026-12-03T17:25:09.009603Z [info     ] Task instance state updated    [airflow] loc=x.py:1",
        "2026-12-03T17:25:09.1Z [warning  ] Slack connection 'slack_alerts' not configured",
    ]
    assert meaningful(lines) == [
        "[error    ] Task failed with exception     [task]",
        "SourceError: interaction source /x does not exist",
        "AirflowFailException: SourceError: interaction source /x does not exist",
        "[warning  ] Slack connection 'slack_alerts' not configured",
    ]


class _TI:
    def __init__(self, task_id, map_index=-1, state="success", try_number=1):
        self.task_id, self.map_index, self.state, self.try_number = task_id, map_index, state, try_number


def test_progress_lines_collapse_mapped_tasks_and_report_failures(monkeypatch, tmp_path):
    import io

    from include.recsys.cli import _progress
    from include.recsys.cli._console import Out

    values = {
        ("snapshot", -1): {"stats": {"rows_read": 1200, "rows": 1000, "users": 40, "items": 9}},
        ("score_shard", 0): {"rows": 300, "users": 30}, ("score_shard", 1): {"rows": 100, "users": 10},
    }
    monkeypatch.setattr(_progress, "_xcom", lambda ti: values.get((ti.task_id, ti.map_index)))
    monkeypatch.setattr(_progress, "_mapped_total", lambda ti: 2)
    log = tmp_path / "demo.log"
    log.write_text("")
    buf = io.StringIO()
    p = _progress.TaskProgress(Out(buf, rich=False), _progress.LogCapture(log))
    for ti in (_TI("snapshot"), _TI("score_shard", 0), _TI("score_shard", 1)):
        p.on_task_instance_running(None, ti)
        p.on_task_instance_success(None, ti)
    gate = _TI("gate", state="failed")
    p.on_task_instance_running(None, gate)
    with open(log, "a") as fh:
        fh.write("2026-12-03T17:25:08Z [info ] gate FAIL on ndcg@10: floor 0.2 < 0.99 [x]\n")
    p.on_task_instance_failed(None, gate, RuntimeError("GateFailed: floor"))
    never_ran = {"publish": ["upstream_failed"], "register": ["upstream_failed"]}
    p.finish(never_ran, ["gate", "register", "publish"])
    lines = buf.getvalue().splitlines()
    assert lines[0].split()[:2] == ["ok", "snapshot"] and "1,200 rows in -> 1,000 rows out" in lines[0]
    assert lines[1].split()[:3] == ["ok", "score_shard", "2/2"] and "400 rows out (40 users)" in lines[1]
    assert lines[2].split()[:2] == ["FAILED", "gate"] and lines[2].endswith("GateFailed: floor")
    assert "gate FAIL on ndcg@10: floor 0.2 < 0.99" in lines[4]  # the task's own last log lines
    assert "2 tasks" in lines[-1] and "an upstream task failed" in lines[-1]
    assert "register, publish" in lines[-1]
    assert [f.task for f in p.failures] == ["gate"]


def test_output_is_rich_on_a_terminal_and_plain_otherwise(monkeypatch):
    import io

    from include.recsys.cli._console import Out, wants_rich

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert wants_rich(Tty()) and not wants_rich(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not wants_rich(Tty())
    rows = [{"metric": "ndcg@10", "candidate": 0.26831}]
    rich, plain = Tty(), io.StringIO()
    Out(rich, rich=True).table(rows, ["metric", "candidate"])
    Out(plain, rich=False).table(rows, ["metric", "candidate"])
    assert "┃" in rich.getvalue() and "0.2683" in rich.getvalue()
    assert plain.getvalue().splitlines() == ["metric   candidate", "ndcg@10     0.2683"]
