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
    A pyfunc "model from code" (``tracking/pyfunc.py``): the :class:`ModelBundle` (factors, id maps,
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

import json
import logging
import os
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from include.recsys.config.settings import PROJECT_ROOT, PipelineConfig
from include.recsys.errors import RegistryError, StaleModel
from include.recsys.scoring.bundle import ModelBundle
from include.recsys.tracking.mlflow import (
    _client,
    _guarded,
    _is_unreachable,
    _mlflow,
    _not_found,
    _quote,
    default_actor,
)

log = logging.getLogger(__name__)


CHAMPION, CHALLENGER = "champion", "challenger"

HISTORY_TAG_PREFIX = "alias_history."

HISTORY_FILE = "alias_history.jsonl"


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
                python_model=str(Path(__file__).with_name("pyfunc.py")),
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
    """The data of a registered version: :data:`DATA_TAGS` as UTC Timestamps (None: unknown)."""
    from mlflow.exceptions import MlflowException

    try:
        tags = dict(_client(cfg).get_model_version(cfg.model_name, str(version)).tags or {})
    except MlflowException as exc:
        if _is_unreachable(exc) or not _not_found(exc):
            raise
        tags = {}  # not registered here: its data is unknown (never concluded from an outage)
    return {k: _ts(tags.get(k)) for k in DATA_TAGS}


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
    rule as :func:`include.recsys.tables.current.rollback` for CURRENT). Pass the ``model_version`` of
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
