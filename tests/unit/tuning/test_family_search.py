"""The search over model families (``include.recsys.tuning.search``): each family's trials,
EASE's item budget, and a choice that only the validation split decides."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest

from include.recsys.backends.implicit import MODEL_FIELDS, model_config
from include.recsys.config.settings import load_config
from include.recsys.data import synth
from include.recsys.data.split import time_split
from include.recsys.tuning.search import (
    best_by_family,
    eligible_families,
    prepare,
    run_trial,
    sample_trials,
    search,
    validation_split,
)

END = pd.Timestamp("2026-02-01", tz="UTC")


@pytest.fixture(scope="module")
def split():
    spec = dataclasses.replace(synth.PRESETS["tiny"], end_date="2026-01-31", seed=3)
    df = synth.generate(spec)
    df["weight"] = df["event_type"].map({"view": 1.0, "click": 2.0, "cart": 3.0, "purchase": 5.0}).astype("float32")
    df = df.sort_values("event_ts", ignore_index=True)
    cutoff = END - pd.Timedelta(days=7)
    train, holdout, _ = time_split(df, cutoff)
    return train, holdout, cutoff


def _data(train, cutoff):
    fit_df, valid, val_cutoff = validation_split(train, cutoff, 7)
    return prepare(fit_df, valid, val_cutoff, max_eval_users=300, seed=1)


def _cfg(tmp_path, **extra):
    return load_config({"data_dir": tmp_path, "num_threads": 1, **extra})


def test_families_share_the_trials_and_each_sample_is_valid(tmp_path) -> None:
    inc = model_config(_cfg(tmp_path))
    trials = sample_trials(10, 5, inc, 20, families=("als", "item_knn", "ease"))
    assert trials[0] == {**inc, "iterations": 20}
    assert [t["model_family"] for t in trials[1:]] == ["als", "item_knn", "ease"] * 3
    # each other family starts at its config defaults: tuned is never below defaults on validation
    defaults = load_config({"data_dir": tmp_path})
    assert trials[2] == {**inc, "iterations": 20, "model_family": "item_knn"}
    assert trials[3] == {**inc, "iterations": 20, "model_family": "ease"}
    assert trials[3]["ease_lambda"] == defaults.ease_lambda and trials[3]["weighting"] == "none"
    assert trials[5] != trials[2] and trials[6] != trials[3]  # then they draw
    for t in trials:
        assert set(t) == set(MODEL_FIELDS)
        load_config({"data_dir": tmp_path, **t})
    # the ALS trials are the ones an ALS-only search draws: other families do not shift them
    als_only = sample_trials(4, 5, inc, 20)
    assert [t for t in trials[1:] if t["model_family"] == "als"] == als_only[1:]
    assert trials == sample_trials(10, 5, inc, 20, families=("als", "item_knn", "ease"))
    with pytest.raises(ValueError, match="unknown model families"):
        sample_trials(3, 5, inc, 20, families=("als", "svd"))


def test_ease_is_left_out_above_its_item_budget() -> None:
    assert eligible_families(["als", "item_knn", "ease"], 500, 1000) == (("als", "item_knn", "ease"), {})
    fams, skipped = eligible_families(["als", "item_knn", "ease"], 5000, 1000)
    assert fams == ("als", "item_knn") and "ease_max_items=1000" in skipped["ease"]
    assert eligible_families(["ease"], 5000, 1000)[0] == ("als",)
    fams, skipped = eligible_families(["als", "item_knn", "ease"], 500, 1000, backend="spark")
    assert fams == ("als",) and skipped == {"item_knn": "backend=spark trains ALS only",
                                            "ease": "backend=spark trains ALS only"}


@pytest.mark.parametrize("params", [
    {"model_family": "item_knn", "knn_kind": "bm25", "knn_k": 50},
    {"model_family": "item_knn", "knn_kind": "cosine", "knn_k": 20},
    {"model_family": "ease", "ease_lambda": 200.0},
])
def test_item_item_trials_score_on_validation(tmp_path, split, params) -> None:
    data = _data(split[0], split[2])
    cfg = _cfg(tmp_path)
    res = run_trial(data, cfg, {**model_config(cfg), **params}, trial=3)
    assert res.ok and 0 < res.best_metric <= 1
    assert res.config()["model_family"] == params["model_family"]
    load_config({"data_dir": tmp_path, **res.config()})  # what train will be given is valid


def test_an_ease_trial_over_budget_fails_alone(tmp_path, split) -> None:
    data = _data(split[0], split[2])
    cfg = _cfg(tmp_path, ease_max_items=5)
    res = run_trial(data, cfg, {**model_config(cfg), "model_family": "ease"}, trial=1)
    assert not res.ok and "FamilyTooLarge" in res.error


def test_the_choice_is_made_on_validation_and_blind_to_the_holdout(tmp_path, split) -> None:
    """Search every family; then poison the gate's holdout (every holdout row rewritten to the
    items the losing trials favour, plus events far in the future) and search again: the
    trials, their validation metrics and the winner are the same, because the search is
    given the training period only."""
    train, holdout, cutoff = split
    cfg = _cfg(tmp_path, tune_trials=7, tune_max_iterations=4)
    best, results = search(_data(train, cutoff), cfg)
    assert best is not None
    assert {r.params["model_family"] for r in results} == {"als", "item_knn", "ease"}
    assert best["best_metric"] == max(r.best_metric for r in results if r.ok)
    by_family = best_by_family(results)
    assert by_family[f"tune_best_valid_ndcg_at_10_{best['params']['model_family']}"] == best["best_metric"]

    poisoned = holdout.copy()
    items = train["item_id"].value_counts().index
    poisoned["item_id"] = items[-len(items) // 3:].to_numpy()[pd.RangeIndex(len(poisoned)) % (len(items) // 3)]
    poisoned["event_ts"] = poisoned["event_ts"] + pd.Timedelta(days=365)
    everything = pd.concat([train, poisoned], ignore_index=True)
    # the tuning split is carved from the events before the gate's cutoff, whatever follows it
    again_train = everything.loc[everything["event_ts"] < cutoff]
    best2, results2 = search(_data(again_train, cutoff), cfg)
    assert best2["config"] == best["config"] and best2["trial"] == best["trial"]
    assert [r.best_metric for r in results2] == [r.best_metric for r in results]
    assert all(math.isfinite(r.best_metric) for r in results2 if r.ok)
