"""The production stack (docker-compose.yaml, Dockerfile, .env.example) checked without Docker.

Docker cannot run containers on every machine that runs the tests, so these parse the files and
check what makes the stack correct and safe: the services, pinned images, healthchecks, no default
credentials (secrets only as required ``${VAR:?...}`` references to .env), ports on 127.0.0.1,
the same RECSYS_* settings as the local mode, the project folders mounted, Celery wiring.
When a compose CLI is installed, ``docker compose config`` validates the file for real.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy.local.stack import (
    AIRFLOW_ENV_FILE,
    HOST_SETTINGS,
    LOCAL_ONLY,
    MLFLOW_ENV_FILE,
    WORKER_SETTINGS,
    LocalStack,
    StackConfig,
    read_env_file,
)
from include.recsys.config.settings import PipelineConfig

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yaml"
AIRFLOW_VERSION = "3.3.2"

AIRFLOW_SERVICES = {
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
    "airflow-init",
}
REQUIRED_SERVICES = AIRFLOW_SERVICES | {"postgres", "redis", "mlflow", "mlflow-db"}
SECRETS = {
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY",
    "POSTGRES_PASSWORD",
    "MLFLOW_DB_PASSWORD",
    "REDIS_PASSWORD",
    "AIRFLOW_ADMIN_PASSWORD",
    "FLOWER_BASIC_AUTH",
}
REQUIRED_REF = re.compile(r"^\$\{(?P<var>[A-Z0-9_]+):\?[^}]+\}$")
SECRET_KEY = re.compile(r"PASSWORD|SECRET|FERNET|_KEY$|TOKEN|BASIC_AUTH", re.I)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _env_files(service: dict) -> list[Path]:
    files = service.get("env_file") or []
    files = [files] if isinstance(files, (str, dict)) else files
    return [ROOT / (f["path"] if isinstance(f, dict) else f) for f in files]


def _env(service: dict) -> dict[str, str]:
    """What the container gets, as compose resolves it: its env_file(s), then ``environment``."""
    merged: dict[str, str] = {}
    for path in _env_files(service):
        merged.update(read_env_file(path))
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    merged.update({k: str(v) for k, v in env.items()})
    return merged


def test_services_present(services):
    assert REQUIRED_SERVICES <= set(services), REQUIRED_SERVICES - set(services)
    assert services["airflow-cli"]["profiles"] == ["debug"]
    assert services["flower"]["profiles"] == ["flower"]
    assert "api-server" in str(services["airflow-apiserver"]["command"])
    assert "scheduler" in str(services["airflow-scheduler"]["command"])
    assert "dag-processor" in str(services["airflow-dag-processor"]["command"])
    assert "celery worker" in str(services["airflow-worker"]["command"])
    assert "triggerer" in str(services["airflow-triggerer"]["command"])


def test_images_pinned(services):
    for name, svc in services.items():
        image = svc.get("image", "")
        assert image, f"{name}: no image"
        ref = image.split("}")[-1] if image.startswith("${") else image
        default = re.match(r"^\$\{[A-Z_]+:-(?P<img>[^}]+)\}$", image)
        ref = default.group("img") if default else ref
        assert ":" in ref and not ref.endswith(":latest"), f"{name}: image {image!r} not pinned"
    for name in AIRFLOW_SERVICES | {"airflow-cli", "flower", "mlflow"}:
        svc = services[name]
        assert svc["build"]["dockerfile"] == "Dockerfile", name
        assert AIRFLOW_VERSION in svc["image"], f"{name}: {svc['image']}"


def test_dockerfile_pins_base_and_installs_with_constraints():
    text = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms == [f"apache/airflow:{AIRFLOW_VERSION}-python3.11"]
    joined = text.replace("\\\n", " ")  # continuation lines
    pip = " ".join(re.findall(r"^RUN pip install.*$", joined, re.M))
    assert "requirements.txt" in pip and "-c" in pip and "constraints.txt" in pip, pip
    assert f"apache-airflow=={AIRFLOW_VERSION}" in pip
    copies = re.findall(r"^COPY\s+(?:--\S+\s+)*(.+)$", text, re.M)
    sources = {src for line in copies for src in line.split()[:-1]}
    assert sources == {"requirements.txt", "constraints.txt", "dags/", "plugins/", "include/"}, sources
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".env", ".venv", ".git", "data", ".airflow"):
        assert path in ignored, f".dockerignore must exclude {path}"
    assert "/.env" in (ROOT / ".gitignore").read_text().split()
    assert f"=={AIRFLOW_VERSION}" in (ROOT / "requirements.txt").read_text()


def test_healthcheck_on_every_service(services):
    for name, svc in services.items():
        hc = svc.get("healthcheck")
        assert hc and hc.get("test") and not hc.get("disable"), f"{name}: no healthcheck"
        assert hc["test"][0] in {"CMD", "CMD-SHELL"}, name


def test_no_default_credentials(compose, services):
    text = COMPOSE.read_text()
    assert "airflow:airflow" not in text
    assert not re.search(r"_PASSWORD:\s*\$\{[A-Z_]+:-", text), "password with a default value"
    found = set()
    for name, svc in services.items():
        for key, value in _env(svc).items():
            if SECRET_KEY.search(key) and key not in {"MLFLOW_S3_ENDPOINT_URL"}:
                if key.startswith("AWS_"):  # optional S3 credentials: from .env or nothing
                    assert value == f"${{{key}:-}}", f"{name}: {key}={value}"
                    continue
                m = REQUIRED_REF.match(value)
                assert m, f"{name}: {key}={value!r} must be a required ${{VAR:?...}} from .env"
                found.add(m.group("var"))
            # credentials inside URLs are references to .env too
            for user_pass in re.findall(r"://([^@/\s]*)@", value):
                password = user_pass.split(":", 1)[1] if ":" in user_pass else ""
                assert REQUIRED_REF.match(password), f"{name}: {key} embeds {password!r}"
                found.add(REQUIRED_REF.match(password).group("var"))
    assert SECRETS <= found, SECRETS - found
    # the admin user comes from .env too, never the old airflow/airflow default
    init = _env(services["airflow-init"])
    assert REQUIRED_REF.match(init["_AIRFLOW_WWW_USER_PASSWORD"])
    assert init["_AIRFLOW_WWW_USER_USERNAME"] != "${_AIRFLOW_WWW_USER_USERNAME:-airflow}"


def test_env_example_holds_only_placeholders():
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    assert SECRETS <= set(values), SECRETS - set(values)
    for key in SECRETS | {"AIRFLOW_CONN_SLACK_ALERTS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}:
        assert values[key] == "", f".env.example must leave {key} empty (compose then refuses to start)"
    for key, value in values.items():  # nothing that looks like a generated key or a webhook
        assert not re.fullmatch(r"[A-Za-z0-9_\-]{43}=|[0-9a-f]{32,}", value), key
        assert "hooks.slack.com" not in value, key
    # every ${VAR} the compose file reads is documented in .env.example (or has a default)
    text = COMPOSE.read_text().replace("$$", "")
    for var, op in re.findall(r"\$\{([A-Z0-9_]+)(:[?-])?", text):
        assert var in values or op == ":-", f"{var} is neither in .env.example nor defaulted"


def test_ports_bound_to_localhost(services):
    published = 0
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is not bound to 127.0.0.1"
            published += 1
    assert published >= 2  # the Airflow UI and MLflow
    assert services["airflow-apiserver"]["ports"] == ["127.0.0.1:${AIRFLOW_PORT:-8080}:8080"]
    assert services["mlflow"]["ports"] == ["127.0.0.1:${MLFLOW_PORT:-5000}:5000"]
    for internal in ("postgres", "redis", "mlflow-db", "airflow-worker"):
        assert not services[internal].get("ports"), internal  # workers must scale: no host port


def test_airflow_settings(services):
    for name in AIRFLOW_SERVICES | {"airflow-cli", "flower"}:
        env = _env(services[name])
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"].lower() == "false", name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://") and "@redis:6379/" in env[
            "AIRFLOW__CELERY__BROKER_URL"
        ]
        # psycopg2 named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3 (not installed)
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
        assert "@postgres:5432/airflow" in env["AIRFLOW__CELERY__RESULT_BACKEND"]
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        assert "@postgres:5432/airflow" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    worker = services["airflow-worker"]
    assert not worker.get("container_name"), "a fixed container name prevents --scale"
    deps = worker["depends_on"]
    assert deps["redis"]["condition"] == "service_healthy"
    assert deps["mlflow"]["condition"] == "service_healthy"
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert _env(services["airflow-init"])["_AIRFLOW_DB_MIGRATE"] == "true"


def _env_names_read_by_code() -> set[str]:
    names = set()
    for folder in ("dags", "include", "plugins"):
        for path in (ROOT / folder).rglob("*.py"):
            names |= set(re.findall(r"RECSYS_[A-Z0-9_]+", path.read_text()))
    return names


def test_recsys_env_matches_config_fields(services):
    fields = {f.upper() for f in PipelineConfig.model_fields}
    read_by_code = _env_names_read_by_code()
    used = set()
    for name, svc in services.items():
        for key in _env(svc):
            if key.startswith("RECSYS_"):
                used.add(key)
                assert key[len("RECSYS_"):] in fields or key in read_by_code, (
                    f"{name}: {key} is neither a PipelineConfig field nor read by the code"
                )
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        env = _env(services[name])
        assert env["RECSYS_DATA_DIR"] == "/opt/airflow/data", name
        assert env["RECSYS_MLFLOW_TRACKING_URI"] == "http://mlflow:5000", name
        assert env["MLFLOW_TRACKING_URI"] == env["RECSYS_MLFLOW_TRACKING_URI"], name
        assert env["PYTHONPATH"] == "/opt/airflow", name
        assert env["RECSYS_SLACK_CONN_ID"] == "slack_alerts", name
        assert env["AIRFLOW_CONN_SLACK_ALERTS"] == "${AIRFLOW_CONN_SLACK_ALERTS:-}", name
    assert {"RECSYS_DATA_DIR", "RECSYS_MLFLOW_TRACKING_URI", "RECSYS_SLACK_CONN_ID"} <= used
    # the server really is there, on that port, with a Postgres store and served artifacts
    cmd = " ".join(services["mlflow"]["command"])
    assert "mlflow server" in cmd and "--port 5000" in cmd and "--serve-artifacts" in cmd
    assert "postgresql+psycopg2://mlflow:" in cmd and "@mlflow-db:5432/mlflow" in cmd
    assert "mlflow" in cmd.split("--allowed-hosts", 1)[1]  # workers reach it as http://mlflow:5000


def test_volumes_mount_project_folders(compose, services):
    for name in AIRFLOW_SERVICES | {"airflow-cli", "flower"}:
        mounts = {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]}
        assert mounts["/opt/airflow/dags"] == "./dags", name
        assert mounts["/opt/airflow/plugins"] == "./plugins", name
        assert mounts["/opt/airflow/include"] == "./include", name
        assert mounts["/opt/airflow/data"] == "recsys-data", name  # the same volume everywhere
        assert mounts["/opt/airflow/logs"] == "airflow-logs", name
    assert services["mlflow"]["volumes"] == ["mlflow-artifacts:/opt/mlflow/artifacts"]
    assert {"recsys-data", "mlflow-artifacts", "postgres-db-volume", "mlflow-db-volume"} <= set(
        compose["volumes"]
    )


def _compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_config_validates(tmp_path):
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no compose CLI (docker compose plugin or docker-compose) installed")
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{k}=test-{k.lower()}\n" for k in sorted(SECRETS)))
    base = [*cli, "-f", str(COMPOSE), "--project-directory", str(ROOT), "--env-file"]
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}  # the shell must not help
    proc = subprocess.run(
        [*base, str(env_file), "config"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env=clean,
    )
    assert proc.returncode == 0, proc.stderr
    rendered = yaml.safe_load(proc.stdout)
    env = rendered["services"]["airflow-worker"]["environment"]
    assert env["AIRFLOW__CORE__FERNET_KEY"] == "test-airflow__core__fernet_key"
    # without the secrets compose refuses to start
    empty = tmp_path / "empty.env"
    empty.write_text("")
    proc = subprocess.run(
        [*base, str(empty), "config"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env=clean,
    )
    assert proc.returncode != 0
    assert "in .env" in proc.stderr, proc.stderr


# --- one source of truth: docker-compose.yaml and the local stack (deploy/local) -------------

AIRFLOW_WITH_ENV = AIRFLOW_SERVICES | {"airflow-cli", "flower"}
DOCKER_ONLY = {"DUMB_INIT_SETSID"}  # dumb-init in the image's entrypoint


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory) -> LocalStack:
    """The local stack's configuration (no process starts: settings only)."""
    return LocalStack(StackConfig(state_dir=tmp_path_factory.mktemp("stack"), extra_env={"RECSYS_SHARDS": "4"}))


def test_env_files_are_plain_key_values():
    for path in (AIRFLOW_ENV_FILE, MLFLOW_ENV_FILE):
        values = read_env_file(path)
        assert values, path
        for key, value in values.items():
            assert re.fullmatch(r"[A-Z][A-Z0-9_]*", key), f"{path.name}: {key}"
            # compose would interpolate ${...} and keep quotes; Python would not: neither allowed
            assert "$" not in value and not value.startswith(("'", '"')), f"{path.name}: {key}={value}"
            assert not SECRET_KEY.search(key), f"{path.name}: {key} is a secret; it belongs in .env"
    shared = read_env_file(AIRFLOW_ENV_FILE)
    assert shared["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert shared["AIRFLOW__CORE__HOSTNAME_CALLABLE"] == "include.recsys.core.hostname.get_hostname"
    assert read_env_file(MLFLOW_ENV_FILE)["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_compose_reads_the_shared_settings_from_the_env_files(services):
    shared = read_env_file(AIRFLOW_ENV_FILE)
    for name in AIRFLOW_WITH_ENV:
        svc = services[name]
        assert AIRFLOW_ENV_FILE in _env_files(svc), f"{name}: env_file must list deploy/airflow.env"
        repeated = set(shared) & set(svc.get("environment") or {})
        assert not repeated, f"{name} repeats deploy/airflow.env settings in environment: {repeated}"
    mlflow = services["mlflow"]
    assert _env_files(mlflow) == [MLFLOW_ENV_FILE]
    assert not set(read_env_file(MLFLOW_ENV_FILE)) & set(mlflow["environment"])


def test_compose_and_local_stack_name_the_same_host_settings(compose, services):
    common = {k for k in compose["x-airflow-common"]["environment"]}
    assert common == set(HOST_SETTINGS), (
        f"compose only: {common - set(HOST_SETTINGS)}; local only: {set(HOST_SETTINGS) - common}"
    )
    worker_only = set(services["airflow-worker"]["environment"]) - common - DOCKER_ONLY
    assert worker_only == set(WORKER_SETTINGS)


def test_local_stack_uses_the_compose_settings(services, local_stack):
    shared = read_env_file(AIRFLOW_ENV_FILE)
    compose_env = _env(services["airflow-scheduler"])
    for component, worker in (("api-server", None), ("scheduler", None), ("dag-processor", None),
                              ("triggerer", None), ("worker1", 1), ("worker2", 2)):
        local = local_stack.settings(component, worker)
        # every shared setting reaches every local process unchanged
        assert {k: local[k] for k in shared} == shared, component
        # every key is shared, a host setting, worker-only, local-only (with a reason) or the
        # deployment's explicit extra
        unexplained = set(local) - set(shared) - set(HOST_SETTINGS) - set(WORKER_SETTINGS) - set(LOCAL_ONLY) - {"RECSYS_SHARDS"}
        assert not unexplained, f"{component}: {unexplained}"
        assert set(HOST_SETTINGS) <= set(local), component
        # the same drivers and protocols as compose, pointed at local servers
        for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND",
                    "AIRFLOW__CELERY__BROKER_URL", "RECSYS_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"):
            assert local[key].split("://")[0] == compose_env[key].split("://")[0], key
        assert local["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].endswith("/execution/")
        assert local["MLFLOW_TRACKING_URI"] == local["RECSYS_MLFLOW_TRACKING_URI"]
        assert len(local["AIRFLOW__API_AUTH__JWT_SECRET"]) >= 64  # shorter: HMAC key warning
    w1, w2 = local_stack.settings("worker1", 1), local_stack.settings("worker2", 2)
    assert w1["RECSYS_WORKER_HOSTNAME"] != w2["RECSYS_WORKER_HOSTNAME"]
    assert w1["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] != w2["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"]
    assert w1["NUMBA_CACHE_DIR"] == w2["NUMBA_CACHE_DIR"]  # warmed once, shared
    with pytest.raises(ValueError, match="may not change"):
        LocalStack(StackConfig(state_dir=local_stack.state, extra_env={"AIRFLOW__CORE__EXECUTOR": "LocalExecutor"})).settings()
    assert set(LOCAL_ONLY).isdisjoint(shared) and set(LOCAL_ONLY).isdisjoint(HOST_SETTINGS)


def test_local_mlflow_server_matches_compose(services, local_stack):
    assert local_stack.settings("mlflow") == {**read_env_file(MLFLOW_ENV_FILE), "RECSYS_STACK_ID": local_stack.stack_id}
    local_cmd, _ = local_stack._command("mlflow")
    compose_cmd = " ".join(services["mlflow"]["command"]).split()
    for flag in ("--serve-artifacts",):
        assert flag in local_cmd and flag in compose_cmd
    for flag in ("--default-artifact-root",):
        assert local_cmd[local_cmd.index(flag) + 1] == compose_cmd[compose_cmd.index(flag) + 1]
    store = local_cmd[local_cmd.index("--backend-store-uri") + 1]
    assert store.split("://")[0] == compose_cmd[compose_cmd.index("--backend-store-uri") + 1].strip('"').split("://")[0]


def test_dockerfile_defaults_agree_with_the_shared_settings():
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env_line = re.search(r"^ENV\s+(.+)$", text, re.M).group(1)
    image = dict(re.findall(r"([A-Z_]+)=(\S+)", env_line))
    shared = {**read_env_file(AIRFLOW_ENV_FILE), **read_env_file(MLFLOW_ENV_FILE)}
    for key in set(image) & set(shared):
        assert image[key] == shared[key], f"Dockerfile ENV {key}={image[key]} but deploy/*.env says {shared[key]}"
    assert {"MLFLOW_DISABLE_TELEMETRY", "GX_ANALYTICS_ENABLED"} <= set(image) & set(shared)


def test_hostname_callable_names_each_worker(monkeypatch):
    import importlib
    import socket

    module, _, func = read_env_file(AIRFLOW_ENV_FILE)["AIRFLOW__CORE__HOSTNAME_CALLABLE"].rpartition(".")
    get_hostname = getattr(importlib.import_module(module), func)
    monkeypatch.setenv("RECSYS_WORKER_HOSTNAME", "worker7")
    assert get_hostname() == "worker7"
    monkeypatch.delenv("RECSYS_WORKER_HOSTNAME")
    assert get_hostname() == socket.getfqdn()  # containers: one worker per host, Airflow's default
