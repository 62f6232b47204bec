"""The tuning stages of the pipeline (no Airflow) against a local SQLite MLflow:

run 1 tunes (cadence: nothing stored yet): trials become child runs of the DAG run's MLflow
run, ``select_best`` tags it ``best_config=true`` and ``train`` refits with the best config;
run 2, two days later, plans no trial and reuses run 1's configuration; run 3 with
``tune=true`` tunes again; with the cadence off and nothing stored, the defaults are used.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone

import pytest

from include.recsys.config.settings import load_config
from include.recsys.core.run import RunContext
from include.recsys.data import synth
from include.recsys.stages.snapshot import snapshot
from include.recsys.stages.split import split
from include.recsys.stages.train import train
from include.recsys.stages.tune import plan_trials, run_trial, select_best
from include.recsys.tracking.mlflow import _client
from include.recsys.tracking.runs import run_tags
from include.recsys.tracking.tuning import BEST_JSON_TAG, BEST_TAG

pytestmark = pytest.mark.slow  # a SQLite MLflow store + 3 trials: ~25 s on the shared 2 cores

END = datetime(2026, 11, 21, tzinfo=timezone.utc)


def _rc(run_id: str, end: datetime = END) -> RunContext:
    return RunContext("recsys_nightly_retrain", run_id, end - timedelta(days=1), end)


def _upstream(cfg, rc):
    snap = snapshot(cfg, rc)
    return snap, split(cfg, rc, snap)


def _tune_and_train(cfg, rc):
    snap, parts = _upstream(cfg, rc)
    trials = plan_trials(cfg, rc, parts, snap)
    results = [run_trial(cfg, rc, t) for t in trials]
    best = select_best(cfg, rc, trials)
    model = train(cfg, rc, parts, snap, best)
    return trials, results, best, model


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("tune-stages")
    # ALS only: this world checks the early-stopped refit (item-item families: family_world)
    cfg = load_config(
        {"data_dir": base, "tune_trials": 3, "tune_max_iterations": 6, "num_threads": 1, "tune_every_days": 7,
         "tune_families": ["als"]}
    )
    synth.ensure_default_data(cfg.source, dataclasses.replace(synth.PRESETS["tiny"], end_date="2026-11-22"))
    rc1 = _rc("scheduled__2026-11-21")
    return {"cfg": cfg, "rc1": rc1, "first": _tune_and_train(cfg, rc1)}


def test_first_run_tunes_with_child_runs_and_refits_the_best(world) -> None:
    cfg, rc1 = world["cfg"], world["rc1"]
    trials, results, best, model = world["first"]
    assert [t["trial"] for t in trials] == [0, 1, 2]
    assert all(r["ok"] for r in results)
    assert best["source"] == "tuned"
    assert model["config_source"] == "tuned"
    assert model["config"] == best["config"]
    assert model["stats"]["iterations"] == best["config"]["iterations"] <= 6

    client = _client(cfg)
    parent = client.get_run(model["mlflow_run_id"])
    assert parent.data.tags[BEST_TAG] == "true"
    assert json.loads(parent.data.tags[BEST_JSON_TAG]) == best["config"]
    assert parent.data.tags["config_source"] == "tuned"
    assert parent.data.tags["tuning_decision"].startswith("tune: cadence")
    assert parent.data.params["factors"] == str(best["config"]["factors"])
    assert parent.data.tags["form_overrides_kept"] == "none"
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted(c.data.tags["mlflow.runName"] for c in children) == ["trial-000", "trial-001", "trial-002"]
    child = children[0]
    assert child.info.status == "FINISHED"
    assert "trial.factors" in child.data.params
    history = client.get_metric_history(child.info.run_id, "valid_ndcg_at_10")
    assert len(history) >= 1 and [m.step for m in history] == sorted(m.step for m in history)
    # the plan and the best config are in the run's work folder
    plan = json.loads((rc1.work_dir(cfg) / "tuning" / "plan.json").read_text())
    assert plan["tune"] is True and plan["incumbent_source"] == "defaults"


def test_next_night_reuses_the_best_config_without_trials(world) -> None:
    cfg = world["cfg"]
    first_best, first_model = world["first"][2], world["first"][3]
    rc2 = _rc("scheduled__2026-11-23", END + timedelta(days=2))
    snap, parts = _upstream(cfg, rc2)
    assert plan_trials(cfg, rc2, parts, snap) == []
    best = select_best(cfg, rc2, [])
    assert best["source"] == "reused"
    assert first_model["mlflow_run_id"] in best["detail"]
    assert best["config"] == first_best["config"]
    model = train(cfg, rc2, parts, snap, best)
    tags = run_tags(cfg, model["mlflow_run_id"])
    assert tags["config_source"] == "reused"
    assert tags["config_source_run_id"] == first_model["mlflow_run_id"]
    assert BEST_TAG not in tags  # only a tuning run is a source for later runs


def test_tune_param_forces_a_search(world) -> None:
    cfg = world["cfg"].with_overrides({"tune": True})
    rc3 = _rc("manual__2026-11-22", END + timedelta(days=1))
    snap, parts = _upstream(cfg, rc3)
    trials = plan_trials(cfg, rc3, parts, snap)
    assert len(trials) == 3
    # trial 0 is the incumbent: the configuration reused from run 1
    assert trials[0]["params"] == {**world["first"][2]["config"], "iterations": 6}


def test_defaults_when_nothing_is_due_or_stored(tmp_path) -> None:
    cfg = load_config({"data_dir": tmp_path, "tune_every_days": 0, "tune_on_decay": False, "num_threads": 1,
                       "factors": 8, "iterations": 3})
    synth.ensure_default_data(cfg.source, dataclasses.replace(synth.PRESETS["tiny"], end_date="2026-11-20"))
    rc = _rc("manual__defaults")
    snap, parts = _upstream(cfg, rc)
    assert plan_trials(cfg, rc, parts, snap) == []
    best = select_best(cfg, rc, [])
    assert best["source"] == "defaults"
    model = train(cfg, rc, parts, snap, best)
    assert model["config"]["factors"] == 8 and model["stats"]["iterations"] == 3


@pytest.fixture(scope="module")
def family_world(tmp_path_factory):
    base = tmp_path_factory.mktemp("tune-families")
    cfg = load_config({"data_dir": base, "tune_trials": 4, "tune_max_iterations": 6, "num_threads": 1,
                       "tune_every_days": 7})
    synth.ensure_default_data(cfg.source, dataclasses.replace(synth.PRESETS["tiny"], end_date="2026-11-22"))
    rc1 = _rc("scheduled__2026-11-21")
    return {"cfg": cfg, "rc1": rc1, "first": _tune_and_train(cfg, rc1)}


def test_every_family_is_tried_and_the_winner_refit_and_recorded(family_world) -> None:
    from include.recsys.scoring.bundle import ModelBundle

    cfg, rc1 = family_world["cfg"], family_world["rc1"]
    trials, results, best, model = family_world["first"]
    assert [t["params"]["model_family"] for t in trials] == ["als", "als", "item_knn", "ease"]
    assert all(r["ok"] for r in results)
    family = best["config"]["model_family"]
    # seeded data: an item-item family wins here, so its refit path is what this test checks
    assert family in ("item_knn", "ease"), best
    assert model["config"] == best["config"] and model["stats"]["iterations"] == 0  # no sweeps
    assert ModelBundle.load(model["bundle"]).kind == family
    tags = run_tags(cfg, model["mlflow_run_id"])
    assert tags["model_family"] == family
    assert _client(cfg).get_run(model["mlflow_run_id"]).data.params["model_family"] == family
    plan = json.loads((rc1.work_dir(cfg) / "tuning" / "plan.json").read_text())
    assert plan["families"] == ["als", "item_knn", "ease"] and plan["families_skipped"] == {}


def test_a_poisoned_holdout_changes_no_trial_and_not_the_choice(family_world) -> None:
    """The gate's holdout is rewritten (every row moved to the catalog's rarest items, which
    favours other configurations than popular-item ones) and the first run's tuning is done
    again: the same trials, the same validation metrics, the same chosen family and config."""
    import pandas as pd

    cfg, rc1 = family_world["cfg"], family_world["rc1"]
    trials, results, best, _ = family_world["first"]
    snap, parts = _upstream(cfg, rc1)
    hold = pd.read_parquet(parts["holdout"])
    rare = pd.read_parquet(parts["train"])["item_id"].value_counts().index[-5:]
    pick = pd.RangeIndex(len(hold)) % len(rare)
    hold["item_id"] = rare.to_numpy()[pick]
    if "item_idx" in hold.columns:
        codes = pd.read_parquet(parts["train"], columns=["item_id", "item_idx"]).drop_duplicates("item_id")
        hold["item_idx"] = hold["item_id"].map(codes.set_index("item_id")["item_idx"]).astype(hold["item_idx"].dtype)
    hold.to_parquet(parts["holdout"], index=False)

    again = plan_trials(cfg, rc1, parts, snap)
    assert [t["params"] for t in again] == [t["params"] for t in trials]
    results2 = [run_trial(cfg, rc1, t) for t in again]
    assert [r["best_metric"] for r in results2] == [r["best_metric"] for r in results]
    best2 = select_best(cfg, rc1, again)
    assert best2["config"] == best["config"]
    tags = run_tags(cfg, family_world["first"][3]["mlflow_run_id"])
    assert tags["model_family"] == best["config"]["model_family"]
