"""Unit tests for the MLflow helpers that need no MLflow store: URIs, lineage, error mapping,
the pyfunc's input handling."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from include.recsys.config.settings import load_config
from include.recsys.errors import MlflowUnavailable
from include.recsys.tracking.mlflow import (
    _client,
    _guarded,
    _is_unreachable,
    _mlflow,
    safe_uri,
)
from include.recsys.tracking.pyfunc import _as_ids
from include.recsys.tracking.runs import (
    code_version,
    get_or_create_run,
    lineage_tags,
    log_to_run,
)


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RECSYS_MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config({"data_dir": tmp_path})
    assert cfg.tracking_uri == f"sqlite:///{(tmp_path / 'mlflow' / 'mlflow.db').resolve()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert load_config({"data_dir": tmp_path}).tracking_uri == "http://mlflow:5000"
    monkeypatch.setenv("RECSYS_MLFLOW_TRACKING_URI", "http://other:5000")
    assert load_config({"data_dir": tmp_path}).tracking_uri == "http://other:5000"
    # the URI never becomes a param (it may hold credentials)
    assert "mlflow_tracking_uri" not in load_config({"data_dir": tmp_path}).params_for_mlflow()


def test_safe_uri_masks_credentials():
    assert safe_uri("http://bob:pw@host:5000/x") == "http://***@host:5000/x"
    assert safe_uri("https://token@host") == "https://***@host"
    assert safe_uri("http://host:5000") == "http://host:5000"
    assert safe_uri("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


def test_code_version_is_a_sha_or_unknown(monkeypatch):
    code_version.cache_clear()
    try:
        v = code_version()
        assert v == "unknown" or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", v)
        code_version.cache_clear()
        monkeypatch.setenv("RECSYS_CODE_VERSION", "image-1.2.3")
        assert code_version() == "image-1.2.3"
        assert lineage_tags()["mlflow.source.git.commit"] == "image-1.2.3"
    finally:
        code_version.cache_clear()


def test_unreachable_errors_are_classified():
    import requests
    from mlflow.exceptions import MlflowException

    assert _is_unreachable(requests.exceptions.ConnectionError("refused"))
    assert _is_unreachable(
        MlflowException("API request to http://x/api failed with exception HTTPConnectionPool(...)")
    )
    assert not _is_unreachable(MlflowException("Registered model alias champion not found."))
    assert not _is_unreachable(ValueError("failed with exception"))


def test_guard_wraps_only_connection_errors(tmp_path):
    import requests

    cfg = load_config({"data_dir": tmp_path, "mlflow_tracking_uri": "http://u:secret@mlflow:5000"})

    @_guarded
    def down(cfg_):
        raise requests.exceptions.ConnectionError("http://u:secret@mlflow:5000/api refused")

    @_guarded
    def bug(cfg_):
        raise KeyError("x")

    with pytest.raises(MlflowUnavailable) as info:
        down(cfg)
    assert str(info.value).startswith("MLflow at http://***@mlflow:5000 is unreachable (down)")
    assert "secret" not in str(info.value) and info.value.__cause__ is None
    with pytest.raises(KeyError):
        bug(cfg)


def test_pyfunc_input_ids_are_deduplicated_and_cast():
    assert list(_as_ids(pd.DataFrame({"user_id": ["b", "a", "b"]}), pd.Index(["a", "b"]))) == ["b", "a"]
    assert list(_as_ids(pd.DataFrame({"user_id": [3, 1]}), pd.Index(["1", "3"]))) == ["3", "1"]
    ints = _as_ids(pd.DataFrame({"user_id": ["3", "1"]}), pd.Index([1, 3], dtype="int64"))
    assert list(ints) == [3, 1] and pd.api.types.is_integer_dtype(ints.dtype)
    assert list(_as_ids(["x", "y"], pd.Index(["x"]))) == ["x", "y"]


def test_talking_to_mlflow_leaves_mlflow_tracking_uri_alone(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    a = load_config({"data_dir": tmp_path / "a"})
    _mlflow(a)
    import mlflow

    assert mlflow.get_tracking_uri() == a.tracking_uri
    assert "MLFLOW_TRACKING_URI" not in __import__("os").environ
    assert load_config({"data_dir": tmp_path / "b"}).tracking_uri.endswith("/b/mlflow/mlflow.db")


def test_log_to_run_logs_more_than_one_mlflow_batch_holds(tmp_path):
    """MLflow's client splits one ``log_batch`` by its per-request counts (100 params/tags,
    1000 metrics): ``log_to_run`` passes everything in one call and all of it arrives."""
    cfg = load_config({"data_dir": tmp_path})
    run_id = get_or_create_run(cfg, "manual__many", {"dag_id": "d"})
    params = {f"p{i}": i for i in range(250)}
    metrics = {f"m{i}": float(i) for i in range(1500)}
    tags = {f"t{i}": "x" * 500 for i in range(150)}
    log_to_run(cfg, run_id, params=params, metrics=metrics, tags=tags)
    data = _client(cfg).get_run(run_id).data
    assert data.params == {k: str(v) for k, v in params.items()}
    assert data.metrics == metrics
    assert all(data.tags[k] == v for k, v in tags.items())


def test_log_to_run_batches_into_one_call_and_logs_the_same(tmp_path, monkeypatch):
    import mlflow

    cfg = load_config({"data_dir": tmp_path})
    run_id = get_or_create_run(cfg, "manual__batch", {"dag_id": "d"})
    client = _client(cfg)
    calls = []
    real = mlflow.MlflowClient.log_batch

    def spy(self, run_id, metrics=(), params=(), tags=(), **kw):
        calls.append((len(params), len(metrics), len(tags)))
        return real(self, run_id, metrics=metrics, params=params, tags=tags, **kw)

    monkeypatch.setattr(mlflow.MlflowClient, "log_batch", spy)
    log_to_run(cfg, run_id, params={"a": 1, "b": "x"}, metrics={"ndcg@10": 0.5, "n": 3},
                        tags={"t1": "v1", "t2": 2})
    log_to_run(cfg, run_id, params={"a": 2}, tags={"t1": "v1b"})  # a param is write-once
    monkeypatch.undo()
    assert calls == [(2, 2, 2), (0, 0, 1)]
    data = client.get_run(run_id).data
    assert data.params == {"a": "1", "b": "x"}
    assert data.metrics == {"ndcg_at_10": 0.5, "n": 3.0}
    assert data.tags["t1"] == "v1b" and data.tags["t2"] == "2"
