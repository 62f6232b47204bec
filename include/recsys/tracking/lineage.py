"""Dataset lineage in MLflow: which data trained and which data evaluated a model.

``train`` logs the run's snapshot as the ``training`` dataset input of its MLflow run and
``evaluate`` logs the holdout as the ``evaluation`` input, so the MLflow UI (run page ->
Datasets) answers "what data trained the champion": a registered model version's ``run_id``
leads to its run, whose inputs name the file (source URI), its content digest (the file's own
SHA-256, not MLflow's sample hash), its rows and its time window.

Only the schema travels to MLflow (a 0-row frame read from the Parquet footer): the data stays
in the lake. The true row count and window are the dataset's profile and input tags.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


#: MLflow's digest column is short on SQL stores; a 36-character prefix of a SHA-256 still
#: identifies the file (144 bits).
DIGEST_CHARS = 36

TRAINING, EVALUATION = "training", "evaluation"


def source_uri(path: Path | str) -> str:
    """``file:///abs/path`` for a local file, the URL itself for an object store."""
    s = str(path)
    return s if "://" in s else Path(s).resolve().as_uri()


def _schema_frame(path: Path | str):
    """A 0-row DataFrame with the file's columns and types (read from the Parquet footer)."""
    import pyarrow.parquet as pq

    return pq.read_schema(path).empty_table().to_pandas()


def dataset(path: Path | str, *, name: str, sha256: str, profile: dict[str, Any]):
    """An MLflow dataset for the Parquet file at ``path``: its schema, ``source`` = the file's
    URI, ``digest`` = its own SHA-256 (truncated) and ``profile`` = the given figures."""
    import mlflow.data
    from mlflow.data.pandas_dataset import PandasDataset

    class _FileDataset(PandasDataset):
        @property
        def profile(self) -> dict[str, Any]:  # the whole file's figures, not the 0-row sample's
            return dict(profile)

    with warnings.catch_warnings():  # "source can be interpreted in multiple ways", int columns
        warnings.simplefilter("ignore", UserWarning)
        base = mlflow.data.from_pandas(
            _schema_frame(path), source=source_uri(path), name=name, digest=sha256[:DIGEST_CHARS]
        )
        ds = _FileDataset(df=base.df, source=base.source, name=base.name, digest=base.digest)
        ds.schema  # inferred here, inside the filter (a cached property)
    return ds


def log_dataset(
    client: Any, run_id: str, ds: Any, context: str, tags: dict[str, Any] | None = None
) -> None:
    """Attach ``ds`` to the MLflow run ``run_id`` as an input used for ``context``.

    Goes through the client (the run stays open across tasks; the fluent ``mlflow.log_input``
    would need it active in this process). Logging the same dataset again (a retry) is a no-op.
    """
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    input_tags = [InputTag(key=MLFLOW_DATASET_CONTEXT, value=context)]
    input_tags += [InputTag(key=str(k), value=str(v)) for k, v in (tags or {}).items()]
    client.log_inputs(run_id, datasets=[DatasetInput(dataset=ds._to_mlflow_entity(), tags=input_tags)])
    log.info("MLflow run %s: %s input %s (digest %s)", run_id, context, ds.name, ds.digest)


def client_for(cfg: Any) -> Any:
    """An MLflow client on the config's tracking URI (SQLite by default, a server in production)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)


def log_training_snapshot(cfg: Any, run_id: str, snap: dict[str, Any]) -> None:
    """The run's snapshot (``snapshot`` stage result) as the ``training`` input."""
    rows = (snap.get("stats") or {}).get("rows")
    window = {"window_start": snap.get("window_start"), "window_end": snap.get("window_end")}
    ds = dataset(
        snap["snapshot"], name="interactions_snapshot", sha256=snap["sha256"],
        profile={"num_rows": rows, **window, "sha256": snap["sha256"]},
    )
    log_dataset(client_for(cfg), run_id, ds, TRAINING, {"rows": rows, **window})


def log_holdout(cfg: Any, run_id: str, parts: dict[str, Any]) -> None:
    """The run's holdout (``split`` stage result) as the ``evaluation`` input."""
    import pyarrow.parquet as pq

    from include.recsys.core.io import file_sha256

    path = parts["holdout"]
    sha = file_sha256(path)
    stats = parts.get("stats") or {}
    rows = pq.ParquetFile(path).metadata.num_rows
    extra = {"cutoff": stats.get("cutoff")} if stats.get("cutoff") else {}
    ds = dataset(path, name="holdout", sha256=sha, profile={"num_rows": rows, "sha256": sha, **extra})
    log_dataset(client_for(cfg), run_id, ds, EVALUATION, {"rows": rows, **extra})


def datasets_of(cfg: Any, run_id: str) -> list[dict[str, Any]]:
    """The dataset inputs of a run as plain dicts (name, digest, source, context, profile)."""
    import json

    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    out = []
    for di in client_for(cfg).get_run(run_id).inputs.dataset_inputs:
        tags = {t.key: t.value for t in di.tags}
        out.append({
            "name": di.dataset.name,
            "digest": di.dataset.digest,
            "source": json.loads(di.dataset.source).get("uri", di.dataset.source),
            "context": tags.get(MLFLOW_DATASET_CONTEXT),
            "profile": json.loads(di.dataset.profile) if di.dataset.profile else {},
            "tags": tags,
        })
    return out
