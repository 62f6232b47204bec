"""The nightly DAG in the production mode: PostgreSQL, CeleryExecutor (two workers), Redis,
``mlflow server`` on PostgreSQL; runs triggered over the REST API as a user would.

The tests share one stack (tests/prod/conftest.py) and one lake, and build on each other in
order, three runs in all (each run costs 1-2 minutes, the mode's CI budget is ~10): two runs
triggered at once (the first publishes; the second gates against it while the scheduler is
restarted and a worker is SIGKILLed mid ``score_shard``), then a third run in which PostgreSQL
is stopped during ``train`` and Redis restarted while tasks are queued.
After each: the run ends ``success``, every published version is still in the publish log,
exactly once, in order, and CURRENT and the ``champion`` alias name the newest.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timezone
from urllib.parse import quote

import pytest

from include.recsys.tables.current import history, read_current
from include.recsys.tables.layout import version_dir
from include.recsys.tables.manifest import read_manifest
from tests.prod.conftest import logs_tail

pytestmark = pytest.mark.prod

RUN_TIMEOUT = 420
MODEL = "recsys_als"
runs: dict[str, str] = {}  # name -> dag_run_id, shared by the ordered tests


def _needs(*names: str) -> None:
    missing = [n for n in names if n not in runs]
    if missing:
        pytest.skip(f"needs the run(s) {missing} of the first test of this module, run in the same session")


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _age_s(value: str | None) -> float:
    return (datetime.now(timezone.utc) - _ts(value)).total_seconds() if value else float("inf")


def _champion(prod) -> str | None:
    import mlflow

    # the registry too: earlier tests in this process may have set a global registry URI
    # (include.recsys.tracking.registry calls mlflow.set_registry_uri), which a client without one uses
    client = mlflow.MlflowClient(tracking_uri=prod.mlflow_url, registry_uri=prod.mlflow_url)
    try:
        return str(client.get_model_version_by_alias(MODEL, "champion").version)
    except mlflow.exceptions.MlflowException:
        return None


def _xcom(prod, run_id: str, task_id: str) -> dict:
    path = (f"/dags/recsys_nightly_retrain/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"
            "/xcomEntries/return_value?deserialize=true&stringify=false")
    return prod.client.call(path)["value"]


def _tis(prod, run_id: str) -> dict[tuple[str, int], dict]:
    return {(ti["task_id"], ti["map_index"]): ti for ti in prod.client.task_instances(run_id)}


def _wait_success(prod, run_id: str) -> dict:
    run = prod.client.wait(run_id, RUN_TIMEOUT)
    if run["state"] != "success":
        states = {f"{t}[{m}]": ti["state"] for (t, m), ti in _tis(prod, run_id).items()}
        pytest.fail(f"run {run_id} ended {run['state']}: {states}\n{logs_tail(prod.stack)}")
    return run


def _wait_for(prod, run_id: str, predicate, what: str, timeout: float = 300.0) -> dict:
    """Poll the run's task instances (every 0.5 s) until ``predicate(tis)`` returns a TI."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tis = _tis(prod, run_id)
        found = predicate(tis)
        if found:
            return found
        failed = {f"{t}[{m}]": ti["state"] for (t, m), ti in tis.items() if ti["state"] in ("failed", "upstream_failed")}
        if failed:
            pytest.fail(f"waiting for {what}, run {run_id} has failed tasks {failed}\n{logs_tail(prod.stack)}")
        time.sleep(0.5)
    pytest.fail(f"{what} never happened in run {run_id}: {_tis(prod, run_id)}")


def _check_published(prod, run_id: str, before: list[dict]) -> str:
    """The run published exactly one version, appended once to the log after ``before``,
    served by CURRENT, complete (every file, size and checksum of its manifest) and valid."""
    import pandas as pd

    from include.recsys.tables.manifest import verify_version

    entries = history(prod.root)
    assert entries[: len(before)] == before, "the publish log lost or rewrote earlier entries"
    new = entries[len(before):]
    assert len(new) == 1, f"expected one publish by {run_id}, the log gained {new}"
    version = new[0]["version"]
    assert new[0].get("previous") == (before[-1]["version"] if before else None)
    assert read_current(prod.root) == version
    assert _xcom(prod, run_id, "publish")["version"] == version
    assert _xcom(prod, run_id, "assemble_version")["version"] == version
    manifest = verify_version(prod.root, version, checksum=True)
    table = pd.read_parquet(version_dir(prod.root, version))
    n = manifest["top_n"]
    per_user = table.groupby("user_id")["item_id"].agg(["count", "nunique"])
    assert len(table) == manifest["rows"] and (per_user["count"] == n).all() and (per_user["nunique"] == n).all()
    assert _tis(prod, run_id)[("validate_output", -1)]["state"] == "success"
    return version


def test_two_triggers_at_once_first_run_publishes_on_both_workers(prod):
    assert history(prod.root) == [] and read_current(prod.root) is None and _champion(prod) is None
    # two manual triggers at once: max_active_runs=1 queues the second behind the first
    runs["first"] = prod.client.trigger({})
    runs["second"] = prod.client.trigger({})
    _wait_success(prod, runs["first"])
    tis = _tis(prod, runs["first"])
    shards = [ti for (task, _), ti in tis.items() if task == "score_shard"]
    assert len(shards) == 4 and all(ti["state"] == "success" for ti in shards)
    assert {ti["hostname"] for ti in shards} == {"worker1", "worker2"}, [ti["hostname"] for ti in shards]
    assert {ti["hostname"] for ti in tis.values() if ti["hostname"]} <= {"worker1", "worker2"}
    version = _check_published(prod, runs["first"], [])
    assert _champion(prod) == "1"
    assert read_manifest(prod.root, version)["model_version"] == "1"
    runs["after_first"] = history(prod.root)


def test_scheduler_restart_mid_run_completes(prod):
    _needs("first", "second")
    run_id = runs["second"]
    # the second run starts only now; restart the scheduler once it has a task running
    running = _wait_for(
        prod, run_id, lambda tis: next((t for t in tis.values() if t["state"] == "running"), None), "a running task"
    )
    prod.stack.restart("scheduler")  # SIGTERM, wait, start: as a deploy or a crash-restart does
    # the new scheduler adopts the running task and schedules the rest of the run (its end,
    # and the absence of extra tries, are checked after the next fault in the same run)
    _wait_for(prod, run_id, lambda tis: tis.get(("plan_shards", -1)) if tis[("plan_shards", -1)]["state"] == "success"
              else None, "plan_shards success after the restart")
    tis = _tis(prod, run_id)
    extra = {f"{t}[{m}]": ti["try_number"] for (t, m), ti in tis.items() if (ti["try_number"] or 0) > 1}
    assert not extra, f"the restart ({running['task_id']} was running) cost extra tries: {extra}"


def test_worker_sigkill_mid_score_shard_retries_on_the_other_worker(prod):
    _needs("first", "second")
    run_id = runs["second"]  # the same run: one run for both faults keeps CI short

    def running_shard(tis):
        # one that started just now: the kill must land before it could finish (~5 s)
        return next((t for (task, _), t in tis.items()
                     if task == "score_shard" and t["state"] == "running" and t["hostname"]
                     and _age_s(t["start_date"]) < 3.0), None)

    victim = _wait_for(prod, run_id, running_shard, "a running score_shard")
    killed, index = victim["hostname"], victim["map_index"]
    pids = prod.stack.kill_tree(killed)  # the worker and its task processes; not restarted yet
    assert len(pids) >= 2, f"expected the worker and its task process, killed {pids}"
    try:
        def retried(tis):
            ti = tis[("score_shard", index)]
            return ti if ti["try_number"] > victim["try_number"] and ti["state"] in ("running", "success") else None

        _wait_for(prod, run_id, retried, f"the retry of score_shard[{index}]", timeout=RUN_TIMEOUT)
    finally:
        prod.stack.start(killed)  # back (compose would restart it), while the run goes on
    _wait_success(prod, run_id)
    tries = prod.client.tries(run_id, "score_shard", index)
    assert len(tries) == 2 and tries[-1]["state"] == "success", tries
    assert tries[0]["hostname"] == killed and tries[-1]["hostname"] != killed, tries
    # the scheduler restart and the kill cost no try beyond the killed one
    extra = {f"{t}[{m}]": ti["try_number"] for (t, m), ti in _tis(prod, run_id).items()
             if (ti["try_number"] or 0) > 1 and (t, m) != ("score_shard", index)}
    assert not extra, extra
    _check_published(prod, run_id, runs["after_first"])  # published exactly once, after the first
    prod.stack.wait_healthy(120)


def test_second_run_gates_against_the_first(prod):
    _needs("first", "second")
    run_id = runs["second"]
    ev = _xcom(prod, run_id, "evaluate")
    assert ev["champion_version"] == "1" and "champion" in ev["metrics"]
    rules = {r["name"]: r for r in _xcom(prod, run_id, "gate")["rules"]}
    assert rules["no_regression"]["bound"] is not None and "champion" in rules["no_regression"]["note"]
    assert _champion(prod) == "2"


def test_two_manual_triggers_keep_one_history(prod):
    _needs("first", "second")
    first, second = (prod.client.run(runs[k]) for k in ("first", "second"))
    assert _ts(first["end_date"]) <= _ts(second["start_date"]), "max_active_runs=1: the runs must not overlap"
    entries = history(prod.root)
    assert [e["version"] for e in entries] == [
        _xcom(prod, runs["first"], "publish")["version"], _xcom(prod, runs["second"], "publish")["version"]
    ]
    assert entries[1]["previous"] == entries[0]["version"]
    assert read_current(prod.root) == entries[1]["version"]


def _third_run(prod) -> str:
    if "third" not in runs:
        runs["third_before"] = history(prod.root)
        runs["third"] = prod.client.trigger({})
    return runs["third"]


def test_postgres_stopped_during_a_task_recovers(prod):
    if prod.pg is None:
        pytest.skip(f"no private PostgreSQL ({prod.no_pg}); the machine's own server is never stopped")
    run_id = _third_run(prod)

    def train_running(tis):
        ti = tis.get(("train", -1))
        return ti if ti and ti["state"] == "running" else None

    _wait_for(prod, run_id, train_running, "train running")
    prod.pg.stop("immediate")  # every connection drops, as a crash of the DB server does
    time.sleep(5)
    prod.pg.start()
    # the components reconnect or crash and are restarted (restart: always); the task retries
    # if it must and succeeds (the run's end is checked after the next fault in the same run)
    done = _wait_for(prod, run_id, lambda tis: tis[("train", -1)] if tis[("train", -1)]["state"] in (
        "success", "failed", "upstream_failed") else None, "train finished", timeout=RUN_TIMEOUT)
    tries = prod.client.tries(run_id, "train")
    assert done["state"] == "success" and tries[-1]["state"] == "success", tries
    prod.stack.wait_healthy(120)
    print(f"train: {len(tries)} tries; components restarted: {prod.stack.restarts}")


def test_redis_restart_with_tasks_queued_loses_nothing(prod):
    if prod.redis is None:
        pytest.skip(f"no private Redis ({prod.no_redis}); the machine's own server is never restarted")
    run_id = _third_run(prod)
    late = {"score_shard", "assemble_version", "validate_output", "approve_release", "publish"}

    def queued_late(tis):
        return next((t for (task, _), t in tis.items() if task in late and t["state"] == "queued"), None)

    queued = _wait_for(prod, run_id, queued_late, "a queued task after register", timeout=RUN_TIMEOUT)
    prod.redis.stop()  # no persistence: every queued message is gone
    prod.redis.start()
    _wait_success(prod, run_id)
    tis = _tis(prod, run_id)
    assert all(ti["state"] in ("success", "skipped") for ti in tis.values())
    for (task, index), ti in tis.items():
        tries = prod.client.tries(run_id, task, index) if ti["try_number"] and ti["try_number"] > 1 else []
        ran = Counter(t["state"] for t in tries if t.get("start_date"))
        assert ran.get("success", 0) <= 1, f"{task}[{index}] succeeded more than once: {tries}"
    _check_published(prod, run_id, runs["third_before"])  # no double publish, nothing lost
    assert _champion(prod) == str(len(history(prod.root)))  # one model version per publish
    prod.stack.wait_healthy(120)
    print(f"redis restarted while {queued['task_id']}[{queued['map_index']}] was queued")
