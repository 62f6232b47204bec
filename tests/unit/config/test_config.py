"""Unit tests for ``include.recsys.config.settings`` (one typed configuration)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from include.recsys.config.settings import (
    PARAM_FIELDS,
    PROJECT_ROOT,
    PipelineConfig,
    load_config,
    param_specs,
)


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("RECSYS_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_defaults(clean_env) -> None:
    cfg = PipelineConfig()
    assert PROJECT_ROOT == Path(__file__).resolve().parents[3]
    assert cfg.data_dir == PROJECT_ROOT / "data"
    assert cfg.source == cfg.data_dir / "lake" / "interactions"
    assert cfg.recommendations_root == cfg.data_dir / "recommendations"
    assert cfg.runs_root == cfg.data_dir / "runs"
    assert cfg.artifact_root == cfg.data_dir / "mlflow" / "artifacts"
    assert cfg.tracking_uri == f"sqlite:///{(cfg.data_dir / 'mlflow' / 'mlflow.db').resolve()}"
    assert cfg.source_format == "parquet"
    assert (cfg.window_days, cfg.holdout_days, cfg.active_days, cfg.active_min_events) == (56, 7, 28, 3)
    assert (cfg.factors, cfg.regularization, cfg.alpha, cfg.iterations, cfg.seed) == (32, 1.0, 2.0, 15, 42)
    assert cfg.ks == [10, 20] and cfg.max_k == 20 and cfg.gate_metric == "ndcg@10"
    assert cfg.event_weights == {"view": 1.0, "click": 2.0, "cart": 3.0, "purchase": 5.0}
    assert cfg.top_n == 20 and cfg.keep_versions == 5 and cfg.dry_run is False


def test_explicit_locations(clean_env, tmp_path) -> None:
    cfg = load_config(
        {
            "data_dir": tmp_path,
            "source_path": str(tmp_path / "src.csv"),
            "recommendations_dir": str(tmp_path / "out"),
            "mlflow_tracking_uri": "http://mlflow:5000",
        }
    )
    assert cfg.source == tmp_path / "src.csv"
    assert cfg.recommendations_root == tmp_path / "out"
    assert cfg.tracking_uri == "http://mlflow:5000"
    params = cfg.params_for_mlflow()
    assert "data_dir" not in params and "mlflow_tracking_uri" not in params
    assert "recommendations_dir" not in params
    assert params["factors"] == "32" and all(isinstance(v, str) for v in params.values())


def test_env_override(clean_env, tmp_path) -> None:
    clean_env.setenv("RECSYS_FACTORS", "8")
    clean_env.setenv("RECSYS_DATA_DIR", str(tmp_path))
    clean_env.setenv("RECSYS_KS", "[5, 10]")
    cfg = load_config()
    assert cfg.factors == 8 and cfg.data_dir == tmp_path and cfg.ks == [5, 10]
    assert load_config({"factors": 16}).factors == 16  # run-time overrides beat the environment
    assert param_specs()["factors"]["default"] == 8  # the trigger form shows the effective value


def test_env_override_is_validated(clean_env) -> None:
    clean_env.setenv("RECSYS_FACTORS", "0")
    with pytest.raises(ValidationError, match="factors"):
        load_config()


def test_with_overrides_validates(clean_env, tmp_path) -> None:
    base = load_config({"data_dir": tmp_path})
    with pytest.raises(ValidationError) as exc:
        base.with_overrides({"factors": 0})
    assert [e["loc"] for e in exc.value.errors()] == [("factors",)]
    with pytest.raises(ValidationError, match="factors"):
        base.with_overrides({"factors": 1025})
    with pytest.raises(ValidationError, match="alpha"):
        base.with_overrides({"alpha": 0.0})
    with pytest.raises(ValueError, match="factorz"):
        base.with_overrides({"factorz": 8})
    new = base.with_overrides({"factors": 8, "iterations": None})
    assert new.factors == 8 and new.iterations == base.iterations  # None = not overridden
    assert base.factors == 32  # the original is untouched
    assert base.with_overrides({}) is base and base.with_overrides(None) is base


def test_holdout_must_be_shorter_than_window(clean_env, tmp_path) -> None:
    for holdout, window in ((7, 7), (10, 7)):
        with pytest.raises(ValidationError, match="holdout_days"):
            load_config({"data_dir": tmp_path, "holdout_days": holdout, "window_days": window})
    assert load_config({"data_dir": tmp_path, "holdout_days": 6, "window_days": 7}).holdout_days == 6


def test_ks_and_gate_metric(clean_env, tmp_path) -> None:
    cfg = load_config({"data_dir": tmp_path, "ks": [20, 5, 10, 5]})
    assert cfg.ks == [5, 10, 20]
    with pytest.raises(ValidationError, match="at least one"):
        load_config({"ks": []})
    with pytest.raises(ValidationError, match="gate_metric"):
        load_config({"gate_metric": "ndcg@5"})  # 5 not in ks [10, 20]
    with pytest.raises(ValidationError, match="gate_metric"):
        load_config({"gate_metric": "ndcg"})
    assert load_config({"ks": [5], "gate_metric": "recall@5"}).gate_metric == "recall@5"


def test_unknown_field_rejected_at_construction(clean_env) -> None:
    with pytest.raises(ValidationError):
        PipelineConfig(nonsense=1)


def test_param_specs(clean_env) -> None:
    specs = param_specs()
    assert list(specs) == list(PARAM_FIELDS)
    cfg = PipelineConfig()
    for name, spec in specs.items():
        assert spec["type"] == ["string", "null"] or spec["type"] in {"integer", "number", "boolean", "string"}, name
        assert spec["description"], name
        assert spec["title"], name
        assert spec["default"] == getattr(cfg, name), name
    bounds = {
        name: {k: v for k, v in spec.items() if k in {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}}
        for name, spec in specs.items()
    }
    assert bounds == {
        "factors": {"exclusiveMinimum": 0, "maximum": 1024},
        "regularization": {"minimum": 0.0, "maximum": 100.0},
        "alpha": {"exclusiveMinimum": 0.0, "maximum": 1000.0},
        "iterations": {"exclusiveMinimum": 0, "maximum": 500},
        "seed": {"minimum": 0},
        "top_n": {"exclusiveMinimum": 0, "maximum": 1000},
        "window_days": {"exclusiveMinimum": 0, "maximum": 3650},
        "holdout_days": {"exclusiveMinimum": 0},
        "dry_run": {},
        "source_path": {},
        "force_publish": {},
        "allow_older_data": {},
        "tune": {},
        "require_approval": {},  # issue 18
        "backend": {},  # issue 20: a choice, not a range
    }
    assert specs["backend"]["enum"] == ["implicit", "spark"] and specs["backend"]["default"] == "implicit"
    assert specs["dry_run"]["type"] == "boolean"
    assert specs["allow_older_data"]["type"] == "boolean" and specs["allow_older_data"]["default"] is False
    # empty source_path = the default lake: optional in the trigger form (nullable), or the
    # form refuses to submit until a path is typed (tests/ui drives the real form)
    assert specs["source_path"]["type"] == ["string", "null"] and specs["source_path"]["default"] == ""


@pytest.mark.parametrize("name", [n for n in PARAM_FIELDS if n not in {"dry_run", "source_path"}])
def test_param_spec_bounds_match_validation(clean_env, name: str) -> None:
    """What the trigger form allows is what the config accepts, and nothing more."""
    spec = param_specs()[name]
    step = 1 if spec["type"] == "integer" else 1e-6
    if "maximum" in spec:
        assert getattr(load_config({name: spec["maximum"]}), name) == spec["maximum"]
        with pytest.raises(ValidationError, match=name):
            load_config({name: spec["maximum"] + step})
    if "minimum" in spec:
        with pytest.raises(ValidationError, match=name):
            load_config({name: spec["minimum"] - step})
    if "exclusiveMinimum" in spec:
        with pytest.raises(ValidationError, match=name):
            load_config({name: spec["exclusiveMinimum"]})
