"""The production-like stack on one machine, without Docker (``make prod-up`` / ``prod-down``).

What docker-compose.yaml runs, as local processes: Airflow's metadata DB, the Celery result
backend and MLflow's backend store in PostgreSQL (one database each, created here), a Redis
broker, ``airflow db migrate``, the api-server, scheduler, dag-processor, triggerer, two Celery
workers and an ``mlflow server`` with a local artifact root.

Configuration has one source of truth: deploy/airflow.env and deploy/mlflow.env, read unchanged
by docker-compose.yaml (``env_file:``) and here. What differs between the two deployments is
named in :data:`HOST_SETTINGS` (the keys compose sets in ``environment:``; here their local
values) and :data:`LOCAL_ONLY` (what one host running every component needs, with the reason);
tests/deploy/test_compose.py checks both sides.

    python -m deploy.local.stack up
    python -m deploy.local.stack status
    python -m deploy.local.stack down [--drop]    # --drop: also drop the databases

The state (logs, pids, secrets, data, artifacts) lives in ``--state`` (default .airflow/prod).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

log = logging.getLogger("recsys.stack")

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_ENV_FILE = ROOT / "deploy" / "airflow.env"
MLFLOW_ENV_FILE = ROOT / "deploy" / "mlflow.env"
BIN = Path(sys.executable).parent
DAG_ID = "recsys_nightly_retrain"

#: Settings docker-compose.yaml sets per service in ``environment:`` because their values depend
#: on the deployment (service host names, secrets, folders); the local stack sets each of them
#: too (:meth:`LocalStack.host_env`). Everything else comes from deploy/airflow.env.
HOST_SETTINGS: tuple[str, ...] = (
    "AIRFLOW__CORE__AUTH_MANAGER",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY",
    "AIRFLOW__API__BASE_URL",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "PYTHONPATH",
    "RECSYS_DATA_DIR",
    "RECSYS_MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_URI",
    "RECSYS_MLFLOW_UI_URL",
    "AIRFLOW_CONN_SLACK_ALERTS",
    "AIRFLOW_CONN_SPARK_DEFAULT",
    "RECSYS_BACKEND",
    "NUMBA_CACHE_DIR",
)

#: Settings compose gives the worker service alone (besides Docker's DUMB_INIT_SETSID).
WORKER_SETTINGS: tuple[str, ...] = ("AIRFLOW__CELERY__WORKER_CONCURRENCY",)

#: Settings only the local stack sets, and why (compose gets them from the image or Docker).
LOCAL_ONLY: dict[str, str] = {
    "AIRFLOW_HOME": "the image's /opt/airflow; here a folder of the stack's state",
    "AIRFLOW__CORE__DAGS_FOLDER": "the image mounts dags/ at AIRFLOW_HOME/dags",
    "AIRFLOW__CORE__PLUGINS_FOLDER": "the image mounts plugins/ at AIRFLOW_HOME/plugins",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "Airflow's simple auth manager (FAB is in the image only)",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": "the admin password, written by the stack",
    "AIRFLOW__API__HOST": "one host: the api-server listens on 127.0.0.1 only",
    "AIRFLOW__API__PORT": "one host: a free port",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": "one host: a free port",
    "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": "one host: a free port",
    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": "one host: a free port per worker",
    "RECSYS_WORKER_HOSTNAME": "one host: each worker's own name on task instances",
    "RECSYS_STACK_ID": "marks every process of this stack, so `down` also finds orphans",
}

AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


def read_env_file(path: Path | str) -> dict[str, str]:
    """``KEY=VALUE`` lines of a compose ``env_file`` (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            if not sep:
                raise ValueError(f"{path}: {line!r} is not KEY=VALUE")
            values[key.strip()] = value.strip()
    return values


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(url: str, *, data: Any = None, token: str | None = None, method: str | None = None,
          timeout: float = 10.0) -> Any:
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, method=method or ("POST" if body else "GET"))
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def _as_root_for(user: str) -> list[str]:
    """``runuser -u user --`` when running as root (initdb and postgres refuse root)."""
    return ["runuser", "-u", user, "--"] if os.geteuid() == 0 else []


def pg_bindir() -> Path | None:
    """Folder of initdb/pg_ctl (Debian keeps them under /usr/lib/postgresql/<v>/bin)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    return None


class PrivatePostgres:
    """A PostgreSQL cluster of its own (initdb in a temp folder), for faults a test may inject."""

    def __init__(self, port: int | None = None):
        self.bindir = pg_bindir()
        if self.bindir is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found; install postgresql")
        self.port = port or free_port()
        # under /tmp itself: the postgres user must reach it (pytest's temp dirs are 0700 root)
        self.dir = Path(tempfile.mkdtemp(prefix="recsys-pg-"))
        (self.dir / "sock").mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            shutil.chown(self.dir / "sock", "postgres")
        self._run("initdb", "-D", str(self.dir / "data"), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}"

    def _run(self, tool: str, *args: str) -> None:
        cmd = [*_as_root_for("postgres"), str(self.bindir / tool), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} failed ({proc.returncode}): {proc.stderr[-2000:]}")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir / 'sock'} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w", "-o", opts, "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        cmd = [*_as_root_for("postgres"), str(self.bindir / "pg_ctl"), "-D", str(self.dir / "data"), "status"]
        return subprocess.run(cmd, capture_output=True).returncode == 0

    def destroy(self) -> None:
        if self.running():
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRedis:
    """A redis-server of its own, without persistence (a restart loses every queued message)."""

    def __init__(self, port: int | None = None):
        if not shutil.which("redis-server"):
            raise RuntimeError("redis-server not found; install redis-server")
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="recsys-redis-"))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", str(self.dir)]
        self.proc = subprocess.Popen(cmd, stdout=open(self.dir / "log", "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"redis-server on port {self.port} did not answer; see {self.dir / 'log'}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclasses.dataclass
class StackConfig:
    """Where the stack keeps its state and which servers it uses."""

    state_dir: Path
    pg_url: str = "postgresql+psycopg2://postgres@127.0.0.1:5432"  # server, no database
    redis_url: str = "redis://127.0.0.1:6379/0"
    db_prefix: str = "recsys_prod"
    api_port: int = 8080
    mlflow_port: int = 5000
    workers: int = 2
    worker_concurrency: int = 2
    mlflow_workers: int = 1
    #: deployment additions (e.g. shorter scheduler timeouts); may not change a shared setting
    extra_env: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def databases(self) -> dict[str, str]:
        return {k: f"{self.db_prefix}_{k}" for k in ("airflow", "mlflow", "celery")}


class LocalStack:
    """Start, watch and stop the stack's processes; every setting from :meth:`env`."""

    def __init__(self, cfg: StackConfig):
        self.cfg = cfg
        self.state = Path(cfg.state_dir)
        self.state.mkdir(parents=True, exist_ok=True)
        self.logs = self.state / "logs"
        self.logs.mkdir(exist_ok=True)
        self.stack_id = f"{cfg.db_prefix}-{os.getpid()}-{int(time.time())}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.wanted: set[str] = set()
        self.restarts: dict[str, int] = {}
        self._ports = self._load_ports()
        self._secrets = self._load_secrets()
        self._watch: threading.Thread | None = None
        self._stop_watch = threading.Event()
        self._lock = threading.RLock()

    # --- settings ------------------------------------------------------------------------
    def _load_ports(self) -> dict[str, int]:
        path = self.state / "ports.json"
        ports = json.loads(path.read_text()) if path.exists() else {}
        for name in ("scheduler_health", "trigger_log", *[f"worker{i}_log" for i in range(1, self.cfg.workers + 1)]):
            ports.setdefault(name, free_port())
        path.write_text(json.dumps(ports))
        return ports

    def _load_secrets(self) -> dict[str, str]:
        """Generated once per state folder, as .env is for compose."""
        path = self.state / "secrets.json"
        if path.exists():
            return json.loads(path.read_text())
        from cryptography.fernet import Fernet

        values = {
            "fernet": Fernet.generate_key().decode(),
            "jwt": secrets.token_hex(64),  # >= 64 bytes: no HMAC key-length warning
            "api": secrets.token_hex(32),
            "admin_password": secrets.token_urlsafe(16),
        }
        path.write_text(json.dumps(values))
        path.chmod(0o600)
        passwords = self.state / "passwords.json"
        passwords.write_text(json.dumps({"admin": values["admin_password"]}))
        passwords.chmod(0o600)
        return values

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.cfg.api_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.cfg.mlflow_port}"

    @property
    def admin_password(self) -> str:
        return self._secrets["admin_password"]

    @property
    def data_dir(self) -> Path:
        return self.state / "data"

    def db_url(self, key: str) -> str:
        return f"{self.cfg.pg_url}/{self.cfg.databases[key]}"

    def host_env(self) -> dict[str, str]:
        """The local values of :data:`HOST_SETTINGS` (compose: service names and .env)."""
        return {
            "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.db_url("airflow"),
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.db_url("celery"),
            "AIRFLOW__CELERY__BROKER_URL": self.cfg.redis_url,
            "AIRFLOW__CORE__FERNET_KEY": self._secrets["fernet"],
            "AIRFLOW__API_AUTH__JWT_SECRET": self._secrets["jwt"],
            "AIRFLOW__API__SECRET_KEY": self._secrets["api"],
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "PYTHONPATH": str(ROOT),
            "RECSYS_DATA_DIR": str(self.data_dir),
            "RECSYS_MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "RECSYS_MLFLOW_UI_URL": self.mlflow_url,
            "AIRFLOW_CONN_SLACK_ALERTS": os.environ.get("AIRFLOW_CONN_SLACK_ALERTS", ""),
            # backend=spark on one host: Spark in local mode inside each task's process
            "AIRFLOW_CONN_SPARK_DEFAULT": os.environ.get(
                "AIRFLOW_CONN_SPARK_DEFAULT", json.dumps({"conn_type": "spark", "host": "local[*]"})
            ),
            "RECSYS_BACKEND": os.environ.get("RECSYS_BACKEND", "implicit"),
            # one cache for all workers on this host, warmed once (numba's cache is process-safe)
            "NUMBA_CACHE_DIR": str(self.state / "numba-cache"),
        }

    def local_env(self, worker: int | None = None) -> dict[str, str]:
        env = {
            "AIRFLOW_HOME": str(self.state / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.state / "passwords.json"),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.cfg.api_port),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(self._ports["scheduler_health"]),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self._ports["trigger_log"]),
            "RECSYS_STACK_ID": self.stack_id,
        }
        if worker is not None:
            env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = str(self._ports[f"worker{worker}_log"])
            env["RECSYS_WORKER_HOSTNAME"] = f"worker{worker}"
            env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] = str(self.cfg.worker_concurrency)
        return env

    def settings(self, component: str = "scheduler", worker: int | None = None) -> dict[str, str]:
        """Every setting this stack gives a component (without the inherited environment)."""
        if component == "mlflow":
            return {**read_env_file(MLFLOW_ENV_FILE), "RECSYS_STACK_ID": self.stack_id}
        shared = read_env_file(AIRFLOW_ENV_FILE)
        clash = set(shared) & set(self.cfg.extra_env)
        if clash:
            raise ValueError(f"extra_env may not change deploy/airflow.env settings: {sorted(clash)}")
        return {**shared, **self.host_env(), **self.local_env(worker), **self.cfg.extra_env}

    def env(self, component: str = "scheduler", worker: int | None = None) -> dict[str, str]:
        """The process environment: ours, minus anything Airflow/MLflow/RECSYS the shell had."""
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("AIRFLOW", "RECSYS_", "MLFLOW_")) and k != "PYTHONDONTWRITEBYTECODE"}
        base["PATH"] = f"{BIN}:{base.get('PATH', '')}"
        return {**base, **self.settings(component, worker)}

    # --- databases -----------------------------------------------------------------------
    def _admin_conn(self):
        import psycopg2
        from sqlalchemy.engine import make_url

        url = make_url(self.cfg.pg_url)
        conn = psycopg2.connect(host=url.host, port=url.port or 5432, user=url.username or "postgres",
                                password=url.password, dbname="postgres", connect_timeout=10)
        conn.autocommit = True
        return conn

    def create_databases(self) -> None:
        conn = self._admin_conn()  # not `with conn`: psycopg2 would open a transaction block
        try:
            with conn.cursor() as cur:
                for name in self.cfg.databases.values():
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                    if cur.fetchone() is None:
                        cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        log.info("databases ready: %s", ", ".join(self.cfg.databases.values()))

    def drop_databases(self) -> None:
        conn = self._admin_conn()
        try:
            with conn.cursor() as cur:
                for name in self.cfg.databases.values():
                    cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            conn.close()

    def migrate(self) -> None:
        out = self.logs / "db-migrate.log"
        with open(out, "ab") as fh:
            proc = subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=self.env(), stdout=fh,
                                  stderr=subprocess.STDOUT, cwd=ROOT, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed; see {out}:\n{out.read_text()[-3000:]}")

    # --- processes -----------------------------------------------------------------------
    def components(self) -> list[str]:
        return ["mlflow", *AIRFLOW_COMPONENTS, *[f"worker{i}" for i in range(1, self.cfg.workers + 1)]]

    def _command(self, name: str) -> tuple[list[str], dict[str, str]]:
        airflow = str(BIN / "airflow")
        if name == "mlflow":
            port = self.cfg.mlflow_port
            artifacts = self.state / "mlflow-artifacts"
            artifacts.mkdir(exist_ok=True)
            cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                   "--workers", str(self.cfg.mlflow_workers), "--backend-store-uri", self.db_url("mlflow"),
                   "--serve-artifacts", "--default-artifact-root", "mlflow-artifacts:/",
                   "--artifacts-destination", str(artifacts),
                   "--allowed-hosts", f"127.0.0.1,127.0.0.1:{port},localhost,localhost:{port}"]
            return cmd, self.env("mlflow")
        if name.startswith("worker"):
            i = int(name[len("worker"):])
            cmd = [airflow, "celery", "worker", "--celery-hostname", f"{name}@{socket.gethostname()}"]
            return cmd, self.env(name, worker=i)
        return [airflow, name], self.env(name)

    def start(self, name: str) -> None:
        with self._lock:
            cmd, env = self._command(name)
            logfile = open(self.logs / f"{name}.log", "ab")
            self.procs[name] = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=logfile, stderr=subprocess.STDOUT,
                                                start_new_session=True)
            logfile.close()
            self.wanted.add(name)
            self._write_pids()
            log.info("started %s (pid %d)", name, self.procs[name].pid)

    def _write_pids(self) -> None:
        pids = {n: p.pid for n, p in self.procs.items() if p.poll() is None}
        (self.state / "pids.json").write_text(json.dumps({"stack_id": self.stack_id, "pids": pids}))

    def kill_tree(self, name: str, sig: int = signal.SIGKILL) -> list[int]:
        """Signal a component and every process below it (task processes have their own
        process groups, so killing the group is not enough); returns the pids signalled."""
        import psutil

        with self._lock:
            self.wanted.discard(name)
            proc = self.procs.get(name)
            if proc is None:
                return []
            try:
                tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                tree = []
            for p in tree:
                try:
                    p.send_signal(sig)
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(tree, timeout=10)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            return [p.pid for p in tree]

    def stop(self, name: str, timeout: float = 30.0) -> None:
        """SIGTERM (warm shutdown: a worker finishes its tasks), then SIGKILL what is left."""
        import psutil

        with self._lock:
            self.wanted.discard(name)
            proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        self.kill_tree(name)
        for p in psutil.wait_procs(children, timeout=1)[1]:  # orphans of the component
            p.kill()

    def restart(self, name: str) -> None:
        self.stop(name)
        self.start(name)

    def _supervise(self, interval: float) -> None:
        while not self._stop_watch.wait(interval):
            with self._lock:
                for name in sorted(self.wanted):
                    proc = self.procs.get(name)
                    if proc is not None and proc.poll() is not None:
                        log.warning("%s exited (%s); restarting it", name, proc.returncode)
                        self.restarts[name] = self.restarts.get(name, 0) + 1
                        self.start(name)

    def supervise(self, interval: float = 2.0) -> None:
        """Restart components that exit, as compose's ``restart: always`` does."""
        self._stop_watch.clear()
        self._watch = threading.Thread(target=self._supervise, args=(interval,), daemon=True)
        self._watch.start()

    # --- lifecycle -----------------------------------------------------------------------
    def up(self, timeout: float = 300.0, warm: bool = True) -> None:
        """Databases, migration, then every component; returns when all are healthy."""
        self.data_dir.mkdir(exist_ok=True)
        self.create_databases()
        self.start("mlflow")  # its own database: starts while Airflow migrates
        warmer = self._warm_numba() if warm else None
        self.migrate()
        for name in self.components():
            if name != "mlflow":
                self.start(name)
        self.wait_healthy(timeout)
        if warmer is not None and warmer.wait(timeout) != 0:
            log.warning("numba warm-up failed; workers compile in their first tasks")

    def _warm_numba(self) -> subprocess.Popen:
        """Compile the top-k kernels once into the shared NUMBA_CACHE_DIR (a fresh worker
        would otherwise compile them in its first scoring task)."""
        code = "from include.recsys.scoring.topk import warm_up; warm_up()"
        return subprocess.Popen([sys.executable, "-c", code], env=self.env(), cwd=ROOT,
                                stdout=open(self.logs / "numba-warm.log", "ab"), stderr=subprocess.STDOUT)

    def health(self) -> dict[str, bool]:
        status: dict[str, bool] = {}
        try:
            status["mlflow"] = str(_http(f"{self.mlflow_url}/health", timeout=5)).strip() == "OK"
        except (OSError, urllib.error.URLError):
            status["mlflow"] = False
        try:
            body = _http(f"{self.api_url}/api/v2/monitor/health", timeout=5)
            status["api-server"] = body["metadatabase"]["status"] == "healthy"
            for key, name in (("scheduler", "scheduler"), ("dag_processor", "dag-processor"), ("triggerer", "triggerer")):
                status[name] = (body.get(key) or {}).get("status") == "healthy"
        except (OSError, urllib.error.URLError, KeyError, TypeError):
            status.update({n: False for n in AIRFLOW_COMPONENTS})
        for i in range(1, self.cfg.workers + 1):
            logfile = self.logs / f"worker{i}.log"
            text = logfile.read_text(errors="replace") if logfile.exists() else ""
            # the newest start of this worker reached "ready" (the log is appended per start)
            status[f"worker{i}"] = text.rfind(" ready.") > text.rfind("-------------- celery@")
        return status

    def wait_healthy(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        status: dict[str, bool] = {}
        while time.monotonic() < deadline:
            status = self.health()
            if all(status.values()):
                return
            dead = [n for n in self.wanted if self.procs[n].poll() is not None and not self._watch]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited; see their logs in {self.logs}")
            time.sleep(1)
        bad = sorted(n for n, ok in status.items() if not ok)
        raise RuntimeError(f"not healthy after {timeout:.0f} s: {', '.join(bad)}; see the logs in {self.logs}")

    def down(self) -> None:
        """Stop every component (workers first, warm), then reap anything left of the stack."""
        self._stop_watch.set()
        if self._watch is not None:
            self._watch.join(10)
        with self._lock:
            self.wanted.clear()
            alive = {n: p for n, p in self.procs.items() if p.poll() is None}
        for proc in alive.values():  # all at once: each shuts down in parallel
            proc.terminate()
        deadline = time.monotonic() + 20
        for proc in alive.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for name in alive:
            self.kill_tree(name)
        reap(self.stack_id)
        (self.state / "pids.json").unlink(missing_ok=True)


def reap(stack_id: str) -> list[int]:
    """SIGKILL every process still marked with this stack's RECSYS_STACK_ID (orphaned tasks)."""
    import psutil

    found = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.environ().get("RECSYS_STACK_ID") == stack_id:
                p.kill()
                found.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


class AirflowClient:
    """The REST calls the stack's users (and tests) make: token, trigger, runs, task instances."""

    def __init__(self, base_url: str, username: str, password: str):
        self.base = base_url.rstrip("/")
        self.username, self.password = username, password
        self._token: str | None = None

    def token(self) -> str:
        if self._token is None:
            body = _http(f"{self.base}/auth/token", data={"username": self.username, "password": self.password})
            self._token = body["access_token"]
        return self._token

    def call(self, path: str, data: Any = None, method: str | None = None) -> Any:
        try:
            return _http(f"{self.base}/api/v2{path}", data=data, token=self.token(), method=method, timeout=30)
        except urllib.error.HTTPError as exc:
            if exc.code == 401 and self._token:  # expired token: once more with a new one
                self._token = None
                return _http(f"{self.base}/api/v2{path}", data=data, token=self.token(), method=method, timeout=30)
            raise RuntimeError(f"{method or 'GET'} {path}: HTTP {exc.code} {exc.read()[:500]!r}") from exc

    def unpause(self, dag_id: str = DAG_ID) -> None:
        self.call(f"/dags/{dag_id}", data={"is_paused": False}, method="PATCH")

    def trigger(self, conf: dict[str, Any] | None = None, dag_id: str = DAG_ID) -> str:
        body = self.call(f"/dags/{dag_id}/dagRuns", data={"logical_date": None, "conf": conf or {}})
        return body["dag_run_id"]

    def run(self, run_id: str, dag_id: str = DAG_ID) -> dict[str, Any]:
        return self.call(f"/dags/{dag_id}/dagRuns/{urllib.request.quote(run_id, safe='')}")

    def task_instances(self, run_id: str, dag_id: str = DAG_ID) -> list[dict[str, Any]]:
        rid = urllib.request.quote(run_id, safe="")
        return self.call(f"/dags/{dag_id}/dagRuns/{rid}/taskInstances?limit=1000")["task_instances"]

    def tries(self, run_id: str, task_id: str, map_index: int = -1, dag_id: str = DAG_ID) -> list[dict[str, Any]]:
        rid = urllib.request.quote(run_id, safe="")
        return self.call(f"/dags/{dag_id}/dagRuns/{rid}/taskInstances/{task_id}/{map_index}/tries")["task_instances"]

    def wait(self, run_id: str, timeout: float = 600.0, dag_id: str = DAG_ID) -> dict[str, Any]:
        """Poll until the run ends; returns the run (state success or failed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                run = self.run(run_id, dag_id)
            except (RuntimeError, OSError) as exc:  # api-server briefly away (a fault test)
                log.info("waiting for %s: %s", run_id, exc)
                time.sleep(2)
                continue
            if run["state"] in ("success", "failed"):
                return run
            time.sleep(2)
        raise TimeoutError(f"DAG run {run_id} did not finish within {timeout:.0f} s")


def _config_from_args(args: argparse.Namespace) -> StackConfig:
    return StackConfig(
        state_dir=Path(args.state), pg_url=args.pg_url, redis_url=args.redis_url, db_prefix=args.db_prefix,
        api_port=args.api_port, mlflow_port=args.mlflow_port,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="The production-like stack on this machine (no Docker).")
    ap.add_argument("action", choices=("up", "down", "status"))
    ap.add_argument("--state", default=os.environ.get("PROD_STATE", str(ROOT / ".airflow" / "prod")))
    ap.add_argument("--pg-url", default=os.environ.get("PROD_PG_URL", StackConfig.pg_url))
    ap.add_argument("--redis-url", default=os.environ.get("PROD_REDIS_URL", StackConfig.redis_url))
    ap.add_argument("--db-prefix", default=os.environ.get("PROD_DB_PREFIX", StackConfig.db_prefix))
    ap.add_argument("--api-port", type=int, default=int(os.environ.get("AIRFLOW_PORT", 8080)))
    ap.add_argument("--mlflow-port", type=int, default=int(os.environ.get("MLFLOW_PORT", 5000)))
    ap.add_argument("--drop", action="store_true", help="down: also drop the stack's databases")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stack = LocalStack(_config_from_args(args))
    if args.action == "up":
        try:
            stack.up()
        except Exception:
            stack.down()
            raise
        (stack.state / "pids.json").write_text(json.dumps(
            {"stack_id": stack.stack_id, "pids": {n: p.pid for n, p in stack.procs.items()}}))
        print(f"Airflow  {stack.api_url}  (admin / {stack.admin_password})\nMLflow   {stack.mlflow_url}\n"
              f"logs     {stack.logs}\nstop     make prod-down")
        return 0
    if args.action == "status":
        print(json.dumps(stack.health(), indent=2))
        return 0
    pids_file = stack.state / "pids.json"
    if pids_file.exists():
        info = json.loads(pids_file.read_text())
        for name, pid in info["pids"].items():
            try:
                os.kill(pid, signal.SIGTERM)
                log.info("stopping %s (pid %d)", name, pid)
            except ProcessLookupError:
                pass
        time.sleep(10)
        reap(info["stack_id"])
        pids_file.unlink()
    if args.drop:
        stack.drop_databases()
    return 0


if __name__ == "__main__":
    sys.exit(main())
