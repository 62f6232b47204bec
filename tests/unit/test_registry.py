"""Unit tests for the MLflow helpers that need no MLflow store: URIs, lineage, error mapping,
the pyfunc's input handling."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from include.recsys import registry
from include.recsys.config import load_config
from include.recsys.pyfunc_model import _as_ids


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
    assert registry.safe_uri("http://bob:pw@host:5000/x") == "http://***@host:5000/x"
    assert registry.safe_uri("https://token@host") == "https://***@host"
    assert registry.safe_uri("http://host:5000") == "http://host:5000"
    assert registry.safe_uri("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


def test_code_version_is_a_sha_or_unknown(monkeypatch):
    registry.code_version.cache_clear()
    try:
        v = registry.code_version()
        assert v == "unknown" or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", v)
        registry.code_version.cache_clear()
        monkeypatch.setenv("RECSYS_CODE_VERSION", "image-1.2.3")
        assert registry.code_version() == "image-1.2.3"
        assert registry.lineage_tags()["mlflow.source.git.commit"] == "image-1.2.3"
    finally:
        registry.code_version.cache_clear()


def test_unreachable_errors_are_classified():
    import requests
    from mlflow.exceptions import MlflowException

    assert registry._is_unreachable(requests.exceptions.ConnectionError("refused"))
    assert registry._is_unreachable(
        MlflowException("API request to http://x/api failed with exception HTTPConnectionPool(...)")
    )
    assert not registry._is_unreachable(MlflowException("Registered model alias champion not found."))
    assert not registry._is_unreachable(ValueError("failed with exception"))


def test_guard_wraps_only_connection_errors(tmp_path):
    import requests

    cfg = load_config({"data_dir": tmp_path, "mlflow_tracking_uri": "http://u:secret@mlflow:5000"})

    @registry._guarded
    def down(cfg_):
        raise requests.exceptions.ConnectionError("http://u:secret@mlflow:5000/api refused")

    @registry._guarded
    def bug(cfg_):
        raise KeyError("x")

    with pytest.raises(registry.MlflowUnavailable) as info:
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
    registry._mlflow(a)
    import mlflow

    assert mlflow.get_tracking_uri() == a.tracking_uri
    assert "MLFLOW_TRACKING_URI" not in __import__("os").environ
    assert load_config({"data_dir": tmp_path / "b"}).tracking_uri.endswith("/b/mlflow/mlflow.db")
