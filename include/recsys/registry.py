"""MLflow: one run per DAG run, the registered model, and the challenger / champion aliases.

- The tracking run of a DAG run is found by the tag ``airflow_run_id``; a retried task resumes
  it instead of creating a duplicate.
- The model is logged as a pyfunc "model from code" (``pyfunc_model.py``) with the
  :class:`~include.recsys.recommend.ModelBundle` as its artifact and the ``include`` package as
  code, so ``mlflow.pyfunc.load_model("models:/<name>@champion")`` works in a fresh process.
- ``challenger`` is set when a version passes the gate; ``champion`` moves only after its
  table is published, so the alias and CURRENT agree.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from include.recsys.config import PROJECT_ROOT, PipelineConfig
from include.recsys.recommend import ModelBundle

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"


def _mlflow(cfg: PipelineConfig):
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    import mlflow

    if cfg.tracking_uri.startswith("sqlite:///"):
        Path(cfg.tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(cfg.tracking_uri)
    mlflow.set_registry_uri(cfg.tracking_uri)
    return mlflow


def experiment_id(cfg: PipelineConfig) -> str:
    mlflow = _mlflow(cfg)
    exp = mlflow.get_experiment_by_name(cfg.mlflow_experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    if not cfg.mlflow_tracking_uri:  # local mode: artifacts beside the tracking DB
        cfg.artifact_root.mkdir(parents=True, exist_ok=True)
        location = cfg.artifact_root.resolve().as_uri()
    try:
        return mlflow.create_experiment(cfg.mlflow_experiment, artifact_location=location)
    except Exception:  # created concurrently
        return mlflow.get_experiment_by_name(cfg.mlflow_experiment).experiment_id


def get_or_create_run(cfg: PipelineConfig, airflow_run_id: str, tags: dict[str, str]) -> str:
    """The MLflow run id of this DAG run (created once, found again on retries)."""
    mlflow = _mlflow(cfg)
    exp_id = experiment_id(cfg)
    client = mlflow.MlflowClient()
    safe = airflow_run_id.replace("'", "")
    found = client.search_runs(
        [exp_id], filter_string=f"tags.airflow_run_id = '{safe}'", max_results=1
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(exp_id, run_name=airflow_run_id, tags={"airflow_run_id": airflow_run_id, **tags})
    log.info("MLflow run %s created for Airflow run %s", run.info.run_id, airflow_run_id)
    return run.info.run_id


def log_to_run(
    cfg: PipelineConfig,
    run_id: str,
    *,
    params: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
    artifacts: dict[str, Path] | None = None,
) -> None:
    """Log to an existing run without ending it (tasks resume the run by id)."""
    mlflow = _mlflow(cfg)
    client = mlflow.MlflowClient()
    if params:
        existing = client.get_run(run_id).data.params
        new = {k: str(v) for k, v in params.items() if k not in existing}
        if new:
            from mlflow.entities import Param

            client.log_batch(run_id, params=[Param(k, v) for k, v in new.items()])
    if metrics:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        client.log_batch(
            run_id, metrics=[Metric(k.replace("@", "_at_"), float(v), now, 0) for k, v in metrics.items()]
        )
    for k, v in (tags or {}).items():
        client.set_tag(run_id, k, str(v))
    for sub, path in (artifacts or {}).items():
        path = Path(path)
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=sub)
        elif path.exists():
            client.log_artifact(run_id, str(path), artifact_path=sub)


def end_run(cfg: PipelineConfig, run_id: str, status: str = "FINISHED") -> None:
    _mlflow(cfg).MlflowClient().set_terminated(run_id, status=status)


def register_model(cfg: PipelineConfig, run_id: str, bundle_dir: Path) -> str:
    """Log the bundle as a pyfunc model in ``run_id`` and register it; returns the version.

    Idempotent: a version already registered from this run is returned as is.
    """
    mlflow = _mlflow(cfg)
    client = mlflow.MlflowClient()
    try:
        existing = client.search_model_versions(f"name='{cfg.model_name}' and run_id='{run_id}'")
    except Exception:
        existing = []
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
        signature = infer_signature(example, sample_out, params={"n": 10})
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={"bundle": str(bundle_dir)},
            code_paths=[str(PROJECT_ROOT / "include")],
            signature=signature,
            input_example=(example, {"n": 10}),
            pip_requirements=_pip_requirements(),
            registered_model_name=cfg.model_name,
        )
    version = str(info.registered_model_version)
    log.info("registered %s version %s (model %s)", cfg.model_name, version, info.model_uri)
    return version


def _pip_requirements() -> list[str]:
    import importlib.metadata as md

    pkgs = ["mlflow", "implicit", "numpy", "pandas", "pyarrow", "scipy", "pydantic", "pydantic-settings"]
    return [f"{p}=={md.version(p)}" for p in pkgs]


def set_alias(cfg: PipelineConfig, alias: str, version: str) -> None:
    client = _mlflow(cfg).MlflowClient()
    client.set_registered_model_alias(cfg.model_name, alias, version)
    log.info("alias %s@%s -> version %s", cfg.model_name, alias, version)


def alias_version(cfg: PipelineConfig, alias: str) -> str | None:
    """The version behind an alias, or None when the model or alias does not exist."""
    client = _mlflow(cfg).MlflowClient()
    try:
        return str(client.get_model_version_by_alias(cfg.model_name, alias).version)
    except Exception:
        return None


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
    folder = Path(local) / "artifacts" / "bundle"
    return version, ModelBundle.load(folder)
