"""Dataset lineage in MLflow: one library run (no Airflow) on tiny generated data publishes a
champion; its registered version's run names the snapshot that trained it (digest = the
snapshot's SHA-256) and the holdout that evaluated it."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest

from include.recsys.config.settings import load_config
from include.recsys.core.io import file_sha256
from include.recsys.core.run import RunContext
from include.recsys.data import synth
from include.recsys.stages import train as train_mod
from include.recsys.stages.evaluate import evaluate
from include.recsys.stages.register import register
from include.recsys.stages.snapshot import snapshot
from include.recsys.stages.split import split
from include.recsys.tracking import lineage
from include.recsys.tracking.registry import CHAMPION, set_alias

END = datetime(2026, 11, 21, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("lineage")
    cfg = load_config({"data_dir": base, "factors": 8, "iterations": 3, "top_n": 5})
    synth.ensure_default_data(cfg.source, dataclasses.replace(synth.PRESETS["tiny"], end_date="2026-11-20"))
    rc = RunContext("recsys_nightly_retrain", "manual__lineage", END - timedelta(days=1), END)
    snap = snapshot(cfg, rc)
    parts = split(cfg, rc, snap)
    model = train_mod.train(cfg, rc, parts, snap)
    evaluate(cfg, rc, parts, model)
    reg = register(cfg, rc, model)
    # what publish does to the registry (the table itself is not needed here)
    set_alias(cfg, CHAMPION, reg["model_version"], reason="lineage test", actor=rc.run_id)
    return {"cfg": cfg, "rc": rc, "snap": snap, "parts": parts, "model": model}


def test_champion_training_dataset_is_the_snapshot(run):
    cfg, snap = run["cfg"], run["snap"]
    client = mlflow.MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)
    mv = client.get_model_version_by_alias(cfg.model_name, CHAMPION)
    inputs = {d["context"]: d for d in lineage.datasets_of(cfg, mv.run_id)}
    assert set(inputs) == {"training", "evaluation"}
    train = inputs["training"]
    assert train["digest"] == snap["sha256"][: lineage.DIGEST_CHARS] == file_sha256(snap["snapshot"])[:36]
    assert train["source"] == Path(snap["snapshot"]).resolve().as_uri()
    assert train["name"] == "interactions_snapshot"
    assert train["profile"]["num_rows"] == snap["stats"]["rows"] == pq.ParquetFile(snap["snapshot"]).metadata.num_rows
    assert train["profile"]["sha256"] == snap["sha256"]  # the full hash, beyond the 36-char digest
    assert train["tags"]["window_start"] == snap["window_start"] and train["tags"]["window_end"] == snap["window_end"]
    holdout = inputs["evaluation"]
    assert holdout["digest"] == file_sha256(run["parts"]["holdout"])[:36]
    assert holdout["profile"]["num_rows"] == pq.ParquetFile(run["parts"]["holdout"]).metadata.num_rows > 0
    # only the schema went to MLflow: the column names of the snapshot file, no rows
    schema = client.get_run(mv.run_id).inputs.dataset_inputs[0].dataset.schema
    assert "user_id" in schema or "user_idx" in schema


def test_logging_again_is_idempotent(run):
    """A retried train task logs the same dataset again: still one training input."""
    cfg, model = run["cfg"], run["model"]
    lineage.log_training_snapshot(cfg, model["mlflow_run_id"], run["snap"])
    contexts = [d["context"] for d in lineage.datasets_of(cfg, model["mlflow_run_id"])]
    assert sorted(contexts) == ["evaluation", "training"]
