"""Unit tests for ``include.recsys.tuning.search``: search space, validation split, early stopping,
selection, the tune-or-reuse decision and explicit form values (no MLflow here)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from include.recsys.backends.implicit import MODEL_FIELDS, model_config
from include.recsys.config.settings import load_config
from include.recsys.data import synth
from include.recsys.data.split import time_split
from include.recsys.tuning.search import (
    SearchSpace,
    TuningData,
    apply_config,
    decide,
    prepare,
    run_trial,
    sample_trials,
    search,
    select_best,
    validation_split,
)

END = pd.Timestamp("2026-02-01", tz="UTC")


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    spec = dataclasses.replace(synth.PRESETS["tiny"], end_date="2026-01-31", seed=3)
    df = synth.generate(spec)
    df["weight"] = df["event_type"].map({"view": 1.0, "click": 2.0, "cart": 3.0, "purchase": 5.0}).astype("float32")
    return df.sort_values("event_ts", ignore_index=True)


@pytest.fixture(scope="module")
def tuning_data(events) -> tuple[TuningData, pd.Timestamp]:
    cutoff = END - pd.Timedelta(days=7)
    train, _, _ = time_split(events, cutoff)
    fit_df, valid, val_cutoff = validation_split(train, cutoff, 7)
    return prepare(fit_df, valid, val_cutoff, max_eval_users=300, seed=1), cutoff


def _cfg(tmp_path, **extra):
    return load_config({"data_dir": tmp_path, "num_threads": 1, **extra})


def test_sample_trials_is_seeded_and_starts_with_the_incumbent(tmp_path) -> None:
    cfg = _cfg(tmp_path)
    inc = model_config(cfg)
    a = sample_trials(10, 5, inc, 20)
    assert a == sample_trials(10, 5, inc, 20)
    assert a != sample_trials(10, 6, inc, 20)
    assert a[0] == {**inc, "iterations": 20}
    space = SearchSpace()
    for t in a:
        assert set(t) == set(MODEL_FIELDS)
        assert t["factors"] in space.factors or t is a[0]
        assert t["weighting"] in ("none", "bm25", "tfidf")
        assert t["iterations"] == 20
        load_config({"data_dir": tmp_path, **t})  # every sample is a valid config
    with pytest.raises(ValueError, match="budget"):
        sample_trials(0, 1, inc, 20)


def test_validation_split_is_carved_from_the_training_period(events) -> None:
    cutoff = END - pd.Timedelta(days=7)
    train, holdout, _ = time_split(events, cutoff)
    fit_df, valid, val_cutoff = validation_split(train, cutoff, 7)
    assert val_cutoff == cutoff - pd.Timedelta(days=7)
    assert fit_df["event_ts"].max() < val_cutoff
    assert len(valid) and (valid["event_ts"] >= val_cutoff).all() and (valid["event_ts"] < cutoff).all()
    # nothing of the gate's holdout is used while tuning
    assert not pd.MultiIndex.from_frame(valid[["user_id", "item_id", "event_ts"]]).isin(
        pd.MultiIndex.from_frame(holdout[["user_id", "item_id", "event_ts"]])
    ).any()
    again = validation_split(train, cutoff, 7)
    pd.testing.assert_frame_equal(fit_df, again[0])
    pd.testing.assert_frame_equal(valid, again[1])
    with pytest.raises(ValueError, match="after the cutoff"):
        validation_split(events, cutoff, 7)


def test_trial_early_stops_and_reports_the_best_sweep(tmp_path, tuning_data) -> None:
    data, _ = tuning_data
    assert data.n_eval_users > 20
    cfg = _cfg(tmp_path)
    params = {**model_config(cfg), "factors": 16, "regularization": 0.01, "alpha": 20.0}
    res = run_trial(data, cfg, params, max_iterations=40, patience=2)
    assert res.ok and 0 < res.best_metric <= 1
    assert res.stopped_early
    assert len(res.history) == res.best_iteration + 2  # stopped 2 sweeps after the best
    assert res.best_metric == pytest.approx(max(h for h in res.history if h is not None), abs=1e-6)
    assert res.config()["iterations"] == res.best_iteration
    # the same trial again: the same curve (seeded, deterministic ALS)
    again = run_trial(data, cfg, params, max_iterations=40, patience=2)
    assert again.history == res.history


def test_a_diverging_trial_never_wins(tmp_path, tuning_data, monkeypatch) -> None:
    data, _ = tuning_data
    cfg = _cfg(tmp_path)
    monkeypatch.setattr("include.recsys.tuning.search.validation_ndcg", lambda *a, **k: float("nan"))
    res = run_trial(data, cfg, model_config(cfg), max_iterations=5)
    assert not res.ok and "not finite" in res.error
    good = {"trial": 1, "ok": True, "best_metric": 0.1, "best_iteration": 3, "config": {}}
    assert select_best([res, good])["trial"] == 1
    assert select_best([res]) is None


def test_select_best_prefers_metric_then_lower_trial() -> None:
    rows = [
        {"trial": 0, "ok": True, "best_metric": 0.2},
        {"trial": 1, "ok": True, "best_metric": 0.3},
        {"trial": 2, "ok": True, "best_metric": 0.3},
        {"trial": 3, "ok": False, "best_metric": 0.9},
    ]
    assert select_best(rows)["trial"] == 1


def test_search_beats_or_matches_the_incumbent_on_validation(tmp_path, tuning_data) -> None:
    data, _ = tuning_data
    cfg = _cfg(tmp_path, tune_trials=4, tune_max_iterations=10)
    best, results = search(data, cfg)
    assert len(results) == 4 and best is not None
    assert best["best_metric"] >= results[0].best_metric
    assert all(math.isfinite(r.best_metric) for r in results if r.ok)


def test_decide(tmp_path) -> None:
    cfg = _cfg(tmp_path, tune_every_days=7)
    recent = {"run_id": "r1", "config": {}, "tuned_interval_end": (END - pd.Timedelta(days=3)).isoformat()}
    old = {**recent, "tuned_interval_end": (END - pd.Timedelta(days=7)).isoformat()}
    assert decide(cfg, END, None, None)[0] is True  # cadence, nothing stored
    assert decide(cfg, END, recent, None) == (False, "reuse: last tuned configuration (MLflow run r1) is recent")
    assert decide(cfg, END, old, None)[0] is True
    assert "decay" in decide(cfg, END, recent, ("FAIL", "r0"))[1]
    assert decide(cfg, END, recent, ("PASS", "r0"))[0] is False
    assert decide(_cfg(tmp_path, tune=True), END, recent, None) == (True, "requested (tune=true)")
    off = _cfg(tmp_path, tune_every_days=0, tune_on_decay=False)
    assert decide(off, END, None, ("FAIL", "r0")) == (False, "no tuning due and none stored: config defaults")


def test_apply_config_keeps_explicit_form_values(tmp_path) -> None:
    best = {"factors": 64, "regularization": 0.5, "alpha": 7.0, "iterations": 9, "weighting": "bm25",
            "bm25_k1": 20.0, "bm25_b": 0.5, "recency_half_life_days": 0.0}
    cfg, kept = apply_config(_cfg(tmp_path), best)
    # a best config stored before model families existed holds no family fields: ALS, defaults
    assert kept == [] and model_config(cfg) == {**model_config(_cfg(tmp_path)), **best}
    assert cfg.model_family == "als"
    knn = {**best, "model_family": "item_knn", "knn_kind": "cosine", "knn_k": 40}
    cfg, kept = apply_config(_cfg(tmp_path), knn)
    assert kept == [] and model_config(cfg) == {**model_config(_cfg(tmp_path)), **knn}
    cfg, kept = apply_config(_cfg(tmp_path, factors=8), best)
    assert kept == ["factors"] and cfg.factors == 8 and cfg.alpha == 7.0


def test_prepare_targets_only_new_pairs_of_known_users_and_items() -> None:
    ts = pd.to_datetime(["2026-01-01"] * 4, utc=True)
    fit_df = pd.DataFrame({"user_id": ["a", "a", "b", "c"], "item_id": ["x", "y", "x", "z"], "event_ts": ts,
                           "weight": np.ones(4, np.float32)})
    valid = pd.DataFrame({"user_id": ["a", "a", "b", "d", "c"], "item_id": ["x", "z", "w", "x", "y"]})
    data = prepare(fit_df, valid, None)
    # a-x seen, b-w unknown item, d unknown user -> targets a-z and c-y
    assert data.eval_rows.tolist() == [0, 2]
    assert data.relevant.toarray().tolist() == [[0, 0, 1], [0, 1, 0]]
    assert prepare(fit_df, valid, None, max_eval_users=1, seed=0).n_eval_users == 1
