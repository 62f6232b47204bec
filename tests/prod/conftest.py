"""The production mode, run for real: one stack shared by every test of tests/prod.

A private PostgreSQL cluster (initdb/pg_ctl in a temp folder) and a private redis-server (own
port, no persistence) so that the fault tests may stop and restart them; on them the local
stack of deploy/local/stack.py: Airflow metadata, Celery result backend and MLflow store in
PostgreSQL, Redis broker, api-server, scheduler, dag-processor, triggerer, two Celery workers
(concurrency 1 each) and ``mlflow server``, supervised as compose's ``restart: always`` would.

Test-only settings (explicit, on top of deploy/airflow.env, which they may not change): short
heartbeat / queued timeouts so that faults recover in seconds, no tuning, 4 score shards, and
a schedule that never fires (unpausing must not start a scheduled run beside the test's).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import types
from pathlib import Path

import pytest

from deploy.local.stack import (
    AirflowClient,
    LocalStack,
    PrivatePostgres,
    PrivateRedis,
    StackConfig,
    free_port,
    pg_bindir,
)

DATA_PRESET = "tiny"

TEST_ENV = {
    # a killed worker's task is failed (then retried) 30 s after its last heartbeat
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    # a message lost with the broker is re-queued 45 s after the task was queued
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "45",
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "5",
    # Feb 29 cron from 2026: the first interval ends in 2032, so no scheduled run ever starts
    "RECSYS_SCHEDULE": "0 0 29 2 *",
    "RECSYS_TUNE_EVERY_DAYS": "0",
    "RECSYS_SHARDS": "4",
    "RECSYS_TASK_RETRIES": "2",
    "RECSYS_RETRY_DELAY_S": "2",
}

_timings: list[tuple[str, float]] = []


MACHINE_PG = ("127.0.0.1", 5432)  # the machine's own servers: used only when no private one can start
MACHINE_REDIS = ("127.0.0.1", 6379)


def _listening(addr: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(addr, timeout=2):
            return True
    except OSError:
        return False


def _no_private_pg() -> str | None:
    if pg_bindir() is None:
        return "the PostgreSQL server binaries (initdb, pg_ctl) are not installed"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser (initdb refuses root)"
    return None


def _no_private_redis() -> str | None:
    return None if shutil.which("redis-server") else "redis-server is not installed"


# module scope: the stack (~3-5 GB, 9 processes) stops as soon as its tests are done
@pytest.fixture(scope="module")
def prod(tmp_path_factory):
    """Private PostgreSQL and Redis when their binaries exist (every fault test runs), else the
    machine's own servers with this session's own databases (the tests that would stop the
    server skip); skips only when neither exists."""
    no_pg, no_redis = _no_private_pg(), _no_private_redis()
    if no_pg and not _listening(MACHINE_PG):
        pytest.skip(f"production mode needs PostgreSQL: {no_pg}, and nothing listens on 127.0.0.1:5432")
    if no_redis and not _listening(MACHINE_REDIS):
        pytest.skip(f"production mode needs Redis: {no_redis}, and nothing listens on 127.0.0.1:6379")
    from include.recsys.data import synth

    t0 = time.monotonic()
    pg = None if no_pg else PrivatePostgres()
    redis = None if no_redis else PrivateRedis()
    stack = None
    try:
        if pg:
            pg.start()
        if redis:
            redis.start()
        cfg = StackConfig(
            state_dir=tmp_path_factory.mktemp("prod-stack"),
            pg_url=pg.url if pg else "postgresql+psycopg2://postgres@%s:%d" % MACHINE_PG,
            redis_url=redis.url if redis else "redis://%s:%d/14" % MACHINE_REDIS,
            db_prefix=f"recsys_prodtest_{os.getpid()}", api_port=free_port(), mlflow_port=free_port(),
            workers=2, worker_concurrency=1, extra_env=dict(TEST_ENV),
        )
        stack = LocalStack(cfg)
        synth.ensure_default_data(stack.data_dir / "lake" / "interactions", synth.PRESETS[DATA_PRESET])
        stack.up(timeout=300)
        stack.supervise()
        client = AirflowClient(stack.api_url, "admin", stack.admin_password)
        client.unpause()
        where = f"{'private' if pg else 'machine'} PostgreSQL + {'private' if redis else 'machine'} Redis"
        _timings.append((f"stack up ({where}, migrate, 7 processes)", time.monotonic() - t0))
        yield types.SimpleNamespace(
            stack=stack, client=client, pg=pg, redis=redis, no_pg=no_pg, no_redis=no_redis,
            root=stack.data_dir / "recommendations", mlflow_url=stack.mlflow_url,
        )
    finally:
        t1 = time.monotonic()
        if stack is not None:
            stack.down()
            if pg is None:  # the machine's server: drop this session's databases
                stack.drop_databases()
        if redis:
            redis.destroy()
        if pg:
            pg.destroy()
        _timings.append(("stack down", time.monotonic() - t1))


@pytest.fixture(autouse=True)
def _wall_time(request):
    t0 = time.monotonic()
    yield
    _timings.append((request.node.name, time.monotonic() - t0))


def pytest_terminal_summary(terminalreporter):
    if not _timings:
        return
    terminalreporter.section("production mode: wall times")
    for name, seconds in _timings:
        terminalreporter.write_line(f"{seconds:7.1f} s  {name}")
    terminalreporter.write_line(f"{sum(s for _, s in _timings):7.1f} s  total")


def logs_tail(stack: LocalStack, names: tuple[str, ...] = ("scheduler", "worker1", "worker2"), n: int = 3000) -> str:
    """The end of the given components' logs, for assertion messages."""
    out = []
    for name in names:
        path = Path(stack.logs) / f"{name}.log"
        if path.exists():
            out.append(f"--- {name}.log\n{path.read_text(errors='replace')[-n:]}")
    return "\n".join(out)
