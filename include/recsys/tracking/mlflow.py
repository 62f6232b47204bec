"""The MLflow client as the pipeline uses it: configured from ``PipelineConfig`` (without
touching ``MLFLOW_TRACKING_URI``), its experiment, and :func:`_guarded`, which turns "cannot
reach MLflow" into :class:`~include.recsys.errors.MlflowUnavailable` (a transient error).
URIs and messages never show credentials (:func:`safe_uri`)."""

from __future__ import annotations

import functools
import getpass
import logging
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from include.recsys.config.settings import PipelineConfig
from include.recsys.errors import MlflowUnavailable

log = logging.getLogger(__name__)


def safe_uri(uri: str) -> str:
    """The URI without user:password (for messages and logs)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable uri>"
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))
    return uri

_CREDENTIALS = re.compile(r"(\w+://)[^/@\s]+@")

_UNREACHABLE_MARKERS = (
    "failed with exception",  # mlflow.utils.rest_utils: connection refused, DNS, max retries
    "failed with timeout exception",
    "Max retries exceeded",
    "Connection refused",
    "Name or service not known",
    "Temporary failure in name resolution",
)


def _is_unreachable(exc: BaseException) -> bool:
    import requests

    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return True
    return type(exc).__name__ == "MlflowException" and any(m in str(exc) for m in _UNREACHABLE_MARKERS)


def _guarded(fn):
    """Turn "cannot reach MLflow" errors of ``fn(cfg, ...)`` into :class:`MlflowUnavailable`."""

    @functools.wraps(fn)
    def wrapper(cfg: PipelineConfig, *args, **kwargs):
        try:
            return fn(cfg, *args, **kwargs)
        except MlflowUnavailable:
            raise
        except Exception as exc:
            if _is_unreachable(exc):
                msg = _CREDENTIALS.sub(r"\1***@", str(exc).splitlines()[0][:500])
                err = MlflowUnavailable(
                    f"MLflow at {safe_uri(cfg.tracking_uri)} is unreachable ({fn.__name__}): {msg}"
                )
                if safe_uri(cfg.tracking_uri) != cfg.tracking_uri:
                    raise err from None  # the cause's text names the password
                raise err from exc
            raise

    return wrapper


def _mlflow(cfg: PipelineConfig):
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    # MLflow's own default (7 retries, factor 2) waits minutes per call before failing; the
    # Airflow task retries with backoff anyway. Explicit environment settings win.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    import mlflow

    if cfg.tracking_uri.startswith("sqlite:///"):
        Path(cfg.tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    # set_tracking_uri also exports MLFLOW_TRACKING_URI, which PipelineConfig.tracking_uri reads
    # as the operator's setting: keep the environment as the operator left it
    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        mlflow.set_tracking_uri(cfg.tracking_uri)
        mlflow.set_registry_uri(cfg.tracking_uri)
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
    return mlflow


def _client(cfg: PipelineConfig):
    return _mlflow(cfg).MlflowClient()


def _not_found(exc: BaseException) -> bool:
    code = getattr(exc, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


def default_actor() -> str:
    """Who acts when no Airflow run does: ``cli:<user>@<host>``."""
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def _artifact_location(cfg: PipelineConfig) -> str | None:
    """Local SQLite mode: artifacts beside the DB. A server: its own artifact store (None)."""
    uri = cfg.tracking_uri
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent / "artifacts"
        folder.mkdir(parents=True, exist_ok=True)
        return folder.resolve().as_uri()
    return None


@_guarded
def experiment_id(cfg: PipelineConfig) -> str:
    mlflow = _mlflow(cfg)
    exp = mlflow.get_experiment_by_name(cfg.mlflow_experiment)
    if exp is not None:
        return exp.experiment_id
    try:
        return mlflow.create_experiment(cfg.mlflow_experiment, artifact_location=_artifact_location(cfg))
    except Exception as exc:  # created concurrently
        if _is_unreachable(exc):
            raise
        return mlflow.get_experiment_by_name(cfg.mlflow_experiment).experiment_id


def _quote(value: str) -> str:
    return value.replace("\\", "").replace("'", "")
