"""MLflow: one run per DAG run, the registered model, the challenger / champion aliases and
their history.

Run structure
    One MLflow run per DAG run (run name = Airflow run id), found again by the tag
    ``airflow_run_id``: a retried or cleared task resumes the run by its id instead of creating
    a duplicate. Tuning trials are child runs of it (:func:`start_child_run`, tag
    ``mlflow.parentRunId``). Tags: ``dag_id``, ``airflow_run_id``, data interval, data window
    and snapshot hash, ``code_version`` (git sha, or ``RECSYS_CODE_VERSION``, else "unknown"),
    the Airflow try number.

The model
    A pyfunc "model from code" (``pyfunc_model.py``): the :class:`ModelBundle` (factors, id maps,
    item popularity, the seen-items matrix; ``.npz`` + Parquet read with ``allow_pickle=False``)
    is its artifact and the ``include`` package its code, so
    ``mlflow.pyfunc.load_model("models:/<name>@champion")`` works in a fresh process with only
    the pinned requirements installed.

Aliases
    ``challenger`` is set when a version passed the gate and is being published; ``champion``
    moves only after its table is published (CURRENT first, alias second; a rerun of the publish
    task completes a move that failed in between), so the alias and CURRENT agree. MLflow keeps
    no history of alias moves, so :func:`set_alias` records every move (who, when, which version,
    previous version, why) as an append-only entry in the registry itself (registered-model
    tag ``alias_history.<seq>.<random>``: works the same against SQLite and a tracking server,
    shows on the model's page) and mirrors it to ``<data_dir>/mlflow/alias_history.jsonl``.
    :func:`rollback_alias` moves an alias back and records that too. ``champion`` never moves
    to a version whose data (tag ``data_window_end``, see :data:`DATA_TAGS`) ends before the
    current champion's (:class:`StaleModel`) unless the caller allows older data; a rollback is
    exempt.

Trust
    Loading an MLflow model executes code: the pyfunc's ``python_model`` file and everything in
    its ``code`` folder are imported by ``load_model``. Load models only from this project's
    registry (the tracking URI this config names); never load a model URI taken from user input
    or from an untrusted registry. Arrays inside the bundle are never unpickled.

Failures
    Any MLflow call that cannot reach the tracking server raises :class:`MlflowUnavailable`
    (naming the URI, credentials masked); the Airflow task retries it with backoff and then
    fails with that message. It is deliberately not one of the "do not retry" errors.
"""

from __future__ import annotations

import functools
import getpass
import json
import logging
import os
import re
import socket
import subprocess
import time
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from include.recsys.config import PROJECT_ROOT, PipelineConfig
from include.recsys.recommend import ModelBundle

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG_PREFIX = "alias_history."
HISTORY_FILE = "alias_history.jsonl"


class MlflowUnavailable(RuntimeError):
    """MLflow (tracking server or registry) could not be reached. Retrying may help."""


class RegistryError(RuntimeError):
    """A registry operation was refused (e.g. no previous version to roll back to)."""


class StaleModel(RegistryError):
    """``champion`` would move to a model trained on data older than the champion's own.

    Refused unless the caller allows older data explicitly (``allow_older_data``); rolling
    back (``action="rollback"``) is the normal way back and is never refused. The message has
    the same shape as :class:`include.recsys.publish.StaleData`'s.
    """

    def __init__(self, version: str, champion: str, champion_end: str, version_end: str) -> None:
        self.version, self.champion = version, champion
        self.served_end, self.run_end = champion_end, version_end
        super().__init__(
            f"stale: serving data up to {champion_end} (champion = version {champion}), "
            f"this run's data ends at {version_end} (version {version}); not served"
        )


# --- connection ------------------------------------------------------------------------------


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


# --- lineage ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The code that runs: ``RECSYS_CODE_VERSION`` (set by an image build), else the git sha of
    PROJECT_ROOT (suffixed ``-dirty`` with uncommitted changes to tracked files), else "unknown"."""
    if os.environ.get("RECSYS_CODE_VERSION"):
        return os.environ["RECSYS_CODE_VERSION"]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0 or not sha.stdout.strip():
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10,
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def lineage_tags() -> dict[str, str]:
    version = code_version()
    tags = {"code_version": version}
    if version != "unknown":
        tags["mlflow.source.git.commit"] = version.removesuffix("-dirty")
    return tags


def default_actor() -> str:
    """Who acts when no Airflow run does: ``cli:<user>@<host>``."""
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


# --- runs ------------------------------------------------------------------------------------


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


@_guarded
def get_or_create_run(
    cfg: PipelineConfig, airflow_run_id: str, tags: dict[str, str], *, reopen: bool = False
) -> str:
    """The MLflow run id of this DAG run (created once, found again on retries).

    ``reopen``: a task that works in the run (train) marks a run that was already closed (the
    DAG run failed, then a task was cleared) RUNNING again; the DAG-level callback closes it.
    """
    client = _client(cfg)
    exp_id = experiment_id(cfg)
    found = client.search_runs(
        [exp_id],
        filter_string=f"tags.airflow_run_id = '{_quote(airflow_run_id)}'",
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )
    # child runs (tuning trials) carry the same airflow_run_id tag: the DAG run's run is the
    # one without a parent
    found = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    if found:
        run = found[0]
        if reopen and run.info.status != "RUNNING":
            client.update_run(run.info.run_id, status="RUNNING")
            log.info("MLflow run %s resumed (was %s)", run.info.run_id, run.info.status)
        return run.info.run_id
    run = client.create_run(
        exp_id,
        run_name=airflow_run_id,
        tags={**lineage_tags(), **{k: str(v) for k, v in tags.items()}, "airflow_run_id": airflow_run_id},
    )
    log.info("MLflow run %s created for Airflow run %s", run.info.run_id, airflow_run_id)
    return run.info.run_id


@_guarded
def start_child_run(
    cfg: PipelineConfig,
    parent_run_id: str,
    name: str,
    params: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """A child run of ``parent_run_id`` (e.g. one tuning trial), found again by name on retries.

    Log to it with :func:`log_to_run` and close it with :func:`end_run`.
    """
    client = _client(cfg)
    parent = client.get_run(parent_run_id)
    found = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{_quote(parent_run_id)}' "
        f"and tags.`mlflow.runName` = '{_quote(name)}'",
        max_results=1,
    )
    if found:
        run_id = found[0].info.run_id
    else:
        inherited = {k: v for k, v in parent.data.tags.items() if k in ("airflow_run_id", "dag_id", "code_version")}
        run_id = client.create_run(
            parent.info.experiment_id,
            run_name=name,
            tags={**inherited, **(tags or {}), "mlflow.parentRunId": parent_run_id},
        ).info.run_id
    if params:
        log_to_run(cfg, run_id, params=params)
    return run_id


@_guarded
def log_to_run(
    cfg: PipelineConfig,
    run_id: str,
    *,
    params: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
    artifacts: dict[str, Path] | None = None,
) -> None:
    """Log to an existing run without ending it (tasks resume the run by id).

    Params are write-once in MLflow: ones already logged are skipped (a retry), with a warning
    if the value differs. Metric names: ``@`` becomes ``_at_`` (``ndcg@10`` -> ``ndcg_at_10``).
    Params, metrics and tags go in as few ``log_batch`` calls as MLflow's batch limits allow
    (one for the usual few dozen values) instead of one call per tag.
    """
    from mlflow.entities import Metric, Param, RunTag

    client = _client(cfg)
    ps: list[Param] = []
    if params:
        existing = client.get_run(run_id).data.params
        for k, v in params.items():
            if k not in existing:
                ps.append(Param(k, str(v)))
            elif existing[k] != str(v):
                log.warning("param %s already logged as %r; keeping it (new value %r)", k, existing[k], v)
    ms: list[Metric] = []
    if metrics:
        now = int(time.time() * 1000)
        ms = [Metric(k.replace("@", "_at_"), float(v), now, 0) for k, v in metrics.items()]
    ts = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
    for batch in _log_batches(ps, ms, ts):
        client.log_batch(run_id, **batch)
    for sub, path in (artifacts or {}).items():
        path = Path(path)
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=sub)
        elif path.exists():
            client.log_artifact(run_id, str(path), artifact_path=sub)


# MLflow's log_batch limits (mlflow.utils.validation): 100 params, 100 tags, 1000 metrics and
# 1000 entities per call, 1 MB per request (a tracking server refuses more); the byte budget
# keeps well under the latter (a tag value may be 8000 characters)
_BATCH_PARAMS_TAGS, _BATCH_ENTITIES, _BATCH_BYTES = 100, 1000, 500_000


def _log_batches(params: list, metrics: list, tags: list) -> list[dict[str, list]]:
    """Split params / metrics / tags into ``log_batch`` keyword sets within MLflow's limits,
    keeping each kind in its order (params first, then metrics, then tags, as before)."""
    batches: list[dict[str, list]] = []
    cur: dict[str, list] = {"params": [], "metrics": [], "tags": []}
    size = 0
    for kind, entities in (("params", params), ("metrics", metrics), ("tags", tags)):
        for e in entities:
            cost = len(e.key) + len(str(e.value)) + 64
            n = sum(len(v) for v in cur.values())
            full = (
                n >= _BATCH_ENTITIES
                or (kind != "metrics" and len(cur[kind]) >= _BATCH_PARAMS_TAGS)
                or (n and size + cost > _BATCH_BYTES)
            )
            if full:
                batches.append(cur)
                cur, size = {"params": [], "metrics": [], "tags": []}, 0
            cur[kind].append(e)
            size += cost
    if any(cur.values()):
        batches.append(cur)
    return batches


@_guarded
def end_run(cfg: PipelineConfig, run_id: str, status: str = "FINISHED") -> None:
    _client(cfg).set_terminated(run_id, status=status)


# --- the model -------------------------------------------------------------------------------


@_guarded
def register_model(cfg: PipelineConfig, run_id: str, bundle_dir: Path) -> str:
    """Log the bundle as a pyfunc model in ``run_id`` and register it; returns the version.

    Idempotent: a version already registered from this run is returned as is. The run keeps
    the status it had (logging a model must not close the DAG run's MLflow run).
    """
    mlflow = _mlflow(cfg)
    client = mlflow.MlflowClient()
    existing = client.search_model_versions(f"name='{_quote(cfg.model_name)}' and run_id='{_quote(run_id)}'")
    if existing:
        version = str(max(int(v.version) for v in existing))
        log.info("model %s version %s already registered from run %s", cfg.model_name, version, run_id)
        return version
    import pandas as pd
    from mlflow.models import infer_signature

    bundle = ModelBundle.load(bundle_dir)
    example = pd.DataFrame({"user_id": list(bundle.user_ids[:2])})
    sample_out = pd.DataFrame(
        {"user_id": example["user_id"], "rank": [1, 1], "item_id": list(bundle.item_ids[:2]),
         "score": [0.5, 0.4], "source": ["model", "model"]}
    )
    with warnings.catch_warnings():  # rank is a non-null int by contract; MLflow's hint is noise
        warnings.filterwarnings("ignore", message=".*Integer columns in Python.*")
        signature = infer_signature(example, sample_out, params={"n": int(cfg.top_n)})
    status = client.get_run(run_id).info.status
    try:
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                artifacts={"bundle": str(bundle_dir)},
                code_paths=[str(PROJECT_ROOT / "include")],
                signature=signature,
                input_example=(example, {"n": int(cfg.top_n)}),
                pip_requirements=_pip_requirements(),
                registered_model_name=cfg.model_name,
            )
    finally:
        if status == "RUNNING":  # start_run's exit closed it
            client.update_run(run_id, status="RUNNING")
    version = str(info.registered_model_version)
    log.info("registered %s version %s (model %s)", cfg.model_name, version, info.model_uri)
    return version


def _pip_requirements() -> list[str]:
    import importlib.metadata as md

    pkgs = ["mlflow", "implicit", "numpy", "pandas", "pyarrow", "scipy", "pydantic", "pydantic-settings"]
    return [f"{p}=={md.version(p)}" for p in pkgs]


@_guarded
def tag_model_version(
    cfg: PipelineConfig, version: str, tags: dict[str, Any], description: str | None = None
) -> None:
    """Set tags (and the description) of a registered model version."""
    client = _client(cfg)
    for k, v in tags.items():
        client.set_model_version_tag(cfg.model_name, str(version), k, str(v))
    if description is not None:
        client.update_model_version(cfg.model_name, str(version), description=description)


@_guarded
def alias_version(cfg: PipelineConfig, alias: str) -> str | None:
    """The version behind an alias, or None when the model or the alias does not exist.

    Other errors (MLflow unreachable) raise: "no champion" must never be concluded from an outage.
    """
    from mlflow.exceptions import MlflowException

    try:
        return str(_client(cfg).get_model_version_by_alias(cfg.model_name, alias).version)
    except MlflowException as exc:
        if _is_unreachable(exc) or not _not_found(exc):
            raise
        return None


@_guarded
def download_bundle(cfg: PipelineConfig, alias: str, dst: Path) -> tuple[str, ModelBundle] | None:
    """The bundle of the version behind ``alias`` (None when there is none)."""
    version = alias_version(cfg, alias)
    if version is None:
        return None
    mlflow = _mlflow(cfg)
    dst.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{cfg.model_name}/{version}", dst_path=str(dst)
    )
    return version, ModelBundle.load(_bundle_folder(Path(local)))


def _bundle_folder(model_dir: Path) -> Path:
    """The bundle inside a downloaded pyfunc model folder (as its MLmodel file maps it)."""
    import yaml

    meta = yaml.safe_load((model_dir / "MLmodel").read_text())
    path = meta["flavors"]["python_function"]["artifacts"]["bundle"]["path"]
    return model_dir / path


# --- aliases and their history ---------------------------------------------------------------


def history_path(cfg: PipelineConfig) -> Path:
    """The local JSON-lines mirror of the alias history."""
    return cfg.data_dir / "mlflow" / HISTORY_FILE


@_guarded
def alias_history(cfg: PipelineConfig, alias: str | None = None) -> list[dict[str, Any]]:
    """Every recorded alias move of the registered model, oldest first (optionally one alias)."""
    from mlflow.exceptions import MlflowException

    try:
        tags = _client(cfg).get_registered_model(cfg.model_name).tags
    except MlflowException as exc:
        if _is_unreachable(exc) or not _not_found(exc):
            raise
        return []
    entries = [json.loads(v) for k, v in tags.items() if k.startswith(HISTORY_TAG_PREFIX)]
    entries.sort(key=lambda e: (e["seq"], e["at"]))
    return [e for e in entries if alias is None or e["alias"] == alias]


def _record(cfg: PipelineConfig, entry: dict[str, Any]) -> dict[str, Any]:
    client = _client(cfg)
    tags = client.get_registered_model(cfg.model_name).tags
    seq = 1 + max(
        (int(k[len(HISTORY_TAG_PREFIX):].split(".")[0]) for k in tags if k.startswith(HISTORY_TAG_PREFIX)),
        default=0,
    )
    entry = {"seq": seq, "at": datetime.now(timezone.utc).isoformat(), "model": cfg.model_name, **entry}
    # the random suffix keeps two concurrent writers (same seq) from overwriting each other
    key = f"{HISTORY_TAG_PREFIX}{seq:06d}.{uuid.uuid4().hex[:8]}"
    client.set_registered_model_tag(cfg.model_name, key, json.dumps(entry))
    path = history_path(cfg)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError:  # the registry tag is the record; the file is a convenience copy
        log.warning("could not append the alias history mirror %s", path, exc_info=True)
    return entry


# --- the data a model version was trained on --------------------------------------------------

#: Model-version tags naming the data of a version (ISO timestamps, UTC): the Airflow data
#: interval, the snapshot window and the end of the training split (events before it trained
#: the factors; the holdout starts there).
DATA_TAGS = (
    "data_interval_start", "data_interval_end", "data_window_start", "data_window_end", "train_data_end",
)


def _ts(value: Any) -> Any:
    """An ISO string as a UTC pandas Timestamp (None when empty or unparsable)."""
    import pandas as pd

    if value in (None, "", "None", "none"):
        return None
    try:
        ts = pd.Timestamp(str(value))
    except (TypeError, ValueError):
        return None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


@_guarded
def model_data(cfg: PipelineConfig, version: str) -> dict[str, Any]:
    """The data of a registered version: :data:`DATA_TAGS` as UTC Timestamps (None: unknown).

    A version registered before these tags existed has only ``data_window`` (``[start, end)``):
    its window is read from that; its training end stays unknown.
    """
    from mlflow.exceptions import MlflowException

    try:
        tags = dict(_client(cfg).get_model_version(cfg.model_name, str(version)).tags or {})
    except MlflowException as exc:
        if _is_unreachable(exc) or not _not_found(exc):
            raise
        tags = {}  # not registered here: its data is unknown (never concluded from an outage)
    out = {k: _ts(tags.get(k)) for k in DATA_TAGS}
    legacy = re.match(r"^\[(.+), (.+)\)$", tags.get("data_window", "").strip())
    if legacy and out["data_window_end"] is None:
        out["data_window_start"], out["data_window_end"] = _ts(legacy.group(1)), _ts(legacy.group(2))
    return out


def champion_data_check(cfg: PipelineConfig, version: str, *, allow_older_data: bool = False) -> dict[str, Any]:
    """Compare ``version``'s data end with the current champion's; raise :class:`StaleModel`
    when it is older, unless ``allow_older_data``.

    Returns ``{"champion", "champion_end", "version_end", "older"}`` (ends as ISO strings or
    None). Unknown ends (no champion, tags missing) never refuse: nothing to compare.
    """
    version = str(version)
    champion = alias_version(cfg, CHAMPION)
    info: dict[str, Any] = {"champion": champion, "champion_end": None, "version_end": None, "older": False}
    if champion is None or champion == version:
        return info
    mine, theirs = model_data(cfg, version)["data_window_end"], model_data(cfg, champion)["data_window_end"]
    info.update(
        champion_end=theirs.isoformat() if theirs is not None else None,
        version_end=mine.isoformat() if mine is not None else None,
        older=bool(mine is not None and theirs is not None and mine < theirs),
    )
    if info["older"] and not allow_older_data:
        raise StaleModel(version, champion, info["champion_end"], info["version_end"])
    return info


@_guarded
def set_alias(
    cfg: PipelineConfig,
    alias: str,
    version: str,
    *,
    reason: str = "",
    actor: str | None = None,
    action: str = "set",
    allow_older_data: bool = False,
) -> bool:
    """Point ``<model>@alias`` at ``version`` and record the move; False if it already pointed there.

    A move whose record is missing (the process died between the two) is recorded on the next
    call, so the history always ends with the alias's real target. ``champion`` never moves to
    a version whose data ends before the champion's (:class:`StaleModel`) unless
    ``allow_older_data`` (the record then says so) or ``action="rollback"``.
    """
    version = str(version)
    client = _client(cfg)
    older = False
    if alias == CHAMPION and action != "rollback":
        check = champion_data_check(cfg, version, allow_older_data=allow_older_data)
        if check["older"]:
            older = True
            reason = (
                f"OLDER DATA allowed by allow_older_data: data up to {check['version_end']} replaces "
                f"data up to {check['champion_end']}. {reason}"
            ).strip()
            log.warning("alias %s@%s -> %s: %s", cfg.model_name, alias, version, reason)
    previous = alias_version(cfg, alias)
    actor = actor or default_actor()
    if previous == version:
        last = alias_history(cfg, alias)[-1:] or [{}]
        if last[0].get("version") != version:
            _record(cfg, {"alias": alias, "version": version, "previous": None, "action": "repair",
                          "reason": f"alias already pointed here; move not recorded before. {reason}".strip(),
                          "actor": actor})
        log.info("alias %s@%s already -> version %s", cfg.model_name, alias, version)
        return False
    client.set_registered_model_alias(cfg.model_name, alias, version)
    _record(cfg, {"alias": alias, "version": version, "previous": previous, "action": action,
                  "reason": reason, "actor": actor, **({"older_data": True} if older else {})})
    log.info("alias %s@%s: %s -> %s (%s, by %s)", cfg.model_name, alias, previous, version, reason, actor)
    return True


@_guarded
def rollback_alias(
    cfg: PipelineConfig,
    alias: str = CHAMPION,
    to_version: str | None = None,
    *,
    reason: str = "",
    actor: str | None = None,
) -> str:
    """Move ``alias`` back and record it; returns the version it now names.

    ``to_version`` None: the version the alias named before it moved to the current one (same
    rule as :func:`include.recsys.publish.rollback` for CURRENT). Pass the ``model_version`` of
    the table's manifest to keep alias and CURRENT together.
    """
    current = alias_version(cfg, alias)
    if to_version is None:
        previous = [
            e["previous"] for e in alias_history(cfg, alias)
            if e["version"] == current and e.get("previous")
        ]
        if not previous:
            raise RegistryError(f"no previous version of {cfg.model_name}@{alias} in the alias history")
        to_version = previous[-1]
    to_version = str(to_version)
    require_version(cfg, to_version)
    why = f"rollback: {reason}" if reason else "rollback"
    set_alias(cfg, alias, to_version, reason=why, actor=actor, action="rollback")
    return to_version


@_guarded
def require_version(cfg: PipelineConfig, version: str) -> None:
    """Raise :class:`RegistryError` unless ``version`` of the model is registered."""
    from mlflow.exceptions import MlflowException

    try:
        _client(cfg).get_model_version(cfg.model_name, str(version))
    except MlflowException as exc:
        if _is_unreachable(exc) or not _not_found(exc):
            raise
        raise RegistryError(f"{cfg.model_name} version {version} is not registered") from exc


@_guarded
def run_tags(cfg: PipelineConfig, run_id: str) -> dict[str, str]:
    return dict(_client(cfg).get_run(run_id).data.tags)
