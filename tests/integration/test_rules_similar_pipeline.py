"""Business rules and the similar-items table through the pipeline's stages (real MLflow on
SQLite, real Parquet, tiny synthetic data): rules excluding 10% of the items reach every list,
the fallback, the output checks, the manifest and the similar-items table; a malformed rules
file fails the run before anything is written (both CURRENTs unchanged) or, with
keep_previous, the last good copy is used and the manifest says so."""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include.recsys.config.settings import load_config
from include.recsys.core.io import file_sha256
from include.recsys.core.run import RunContext
from include.recsys.data import synth
from include.recsys.errors import RulesError
from include.recsys.stages.evaluate import evaluate
from include.recsys.stages.gate import gate
from include.recsys.stages.publish import publish
from include.recsys.stages.register import register
from include.recsys.stages.rollback import rollback
from include.recsys.stages.similar import similar_items
from include.recsys.stages.snapshot import snapshot
from include.recsys.stages.split import split
from include.recsys.stages.train import train
from include.recsys.stages.validate_output import validate_output
from include.recsys.tables.current import history, read_current
from include.recsys.tables.layout import FALLBACK, version_dir
from include.recsys.tables.manifest import read_manifest
from include.recsys.tables.reader import SimilarItemsStore
from include.recsys.tables.versions import read_version_table
from tests._stages import precompute

pytestmark = pytest.mark.e2e  # three tiny nightly runs with MLflow: ~30 s

END = datetime(2026, 11, 20, tzinfo=timezone.utc)


def _rc(run_id: str) -> RunContext:
    return RunContext("recsys_nightly_retrain", run_id, datetime(2026, 11, 19, tzinfo=timezone.utc), END)


def _run(cfg, rc) -> dict:
    out: dict = {"snap": snapshot(cfg, rc)}
    out["parts"] = split(cfg, rc, out["snap"])
    out["model"] = train(cfg, rc, out["parts"], out["snap"])
    out["ev"] = evaluate(cfg, rc, out["parts"], out["model"])
    out["verdict"] = gate(cfg, rc, out["ev"], out["model"])
    out["reg"] = register(cfg, rc, out["model"], out["snap"])
    out["sim"] = similar_items(cfg, rc, out["snap"], out["model"], out["reg"])
    out["pre"] = precompute(cfg, rc, out["snap"], out["model"], out["reg"], out["ev"], out["verdict"])
    out["checked"] = validate_output(cfg, rc, out["snap"], out["pre"])
    out["pub"] = publish(cfg, rc, out["pre"], out["reg"], out["model"])
    return out


@pytest.fixture()
def lake(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_DATA_DIR", str(tmp_path / "data"))
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    data = synth.generate(dataclasses.replace(synth.PRESETS["tiny"], end_date="2026-11-19"))
    items = pd.Index(sorted(data["item_id"].unique()))
    rng = np.random.default_rng(0)
    out = rng.choice(len(items), len(items) // 10, replace=False)
    rules = pd.DataFrame({"item_id": items, "available": True})
    rules.loc[out[::2], "available"] = False
    rules["available_until"] = pd.NaT
    rules["available_until"] = pd.to_datetime(rules["available_until"], utc=True)
    rules.loc[out[1::2], "available_until"] = pd.Timestamp("2026-11-20", tz="UTC")  # ends at the interval end
    rules_path = tmp_path / "rules.parquet"
    rules.to_parquet(rules_path)
    cfg = load_config({"window_days": 35, "iterations": 5, "factors": 8, "item_rules_path": str(rules_path),
                       "similar_items_k": 5})
    synth.land_partitioned(data, cfg.source)
    yield {"cfg": cfg, "excluded": set(items[out]), "rules_path": rules_path}
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if saved is not None:
        os.environ["MLFLOW_TRACKING_URI"] = saved


def test_rules_and_similar_items_through_the_pipeline(lake) -> None:
    cfg, excluded = lake["cfg"], lake["excluded"]
    first = _run(cfg, _rc("scheduled__2026-11-19T00:00:00+00:00"))
    version = first["pub"]["version"]
    root, sroot = cfg.recommendations_root, cfg.similar_items_root
    assert read_current(root) == version == read_current(sroot)
    table = read_version_table(version_dir(root, version))
    fallback = pd.read_parquet(version_dir(root, version) / FALLBACK)
    assert not table["item_id"].isin(excluded).any() and not fallback["item_id"].isin(excluded).any()
    assert (table.groupby("user_id").size() == cfg.top_n).all()
    rules = read_manifest(root, version)["rules"]
    assert rules["sha256"] == file_sha256(lake["rules_path"]) and rules["source"] == "file"
    assert rules["excluded_items"] == len(excluded) and rules["as_of"].startswith("2026-11-20")
    report = json.loads(Path(first["checked"]["report"]).read_text())
    assert [r["success"] for r in report["results"] if r["check"] == "no_excluded_items"] == [True]
    sim = read_version_table(version_dir(sroot, version))
    assert not sim["similar_item_id"].isin(excluded).any() and (sim.groupby("item_id").size() == 5).all()
    some = sim["item_id"].iloc[0]
    assert SimilarItemsStore(sroot).similar(some, n=3).items == sim.loc[sim["item_id"] == some, "similar_item_id"].tolist()[:3]

    # a malformed rules file: the run fails before any part is written; nothing moves
    lake["rules_path"].write_bytes(b"not parquet at all")
    rc = _rc("manual__2026-11-20T06:00:00+00:00")
    with pytest.raises(RulesError, match="cannot be read as Parquet"):
        _run(cfg, rc)
    assert read_current(root) == version and read_current(sroot) == version
    assert len(history(root)) == 1 and len(history(sroot)) == 1

    # keep_previous: yesterday's good copy stands in, and the manifest says so
    keep = cfg.with_overrides({"item_rules_on_error": "keep_previous"})
    second = _run(keep, _rc("manual__2026-11-20T07:00:00+00:00"))
    v2 = second["pub"]["version"]
    assert read_current(root) == v2 == read_current(sroot)
    m = read_manifest(root, v2)["rules"]
    assert m["source"] == "previous copy" and "cannot be read" in m["error"] and m["sha256"] == rules["sha256"]
    assert not read_version_table(version_dir(root, v2))["item_id"].isin(excluded).any()

    # A/B: the champion (alias) vs this run's candidate, 10% holdout on the popularity baseline
    from include.recsys.config.variants import assign

    arms = [{"name": "champion", "model": "alias:champion", "share": 0.45},
            {"name": "challenger", "model": "candidate", "share": 0.45}]
    exp = keep.with_overrides({"ab_variants": arms, "ab_holdout_share": 0.1, "ab_salt": "exp-19"})
    third = _run(exp, _rc("manual__2026-11-20T08:00:00+00:00"))
    v3 = third["pub"]["version"]
    assert read_current(root) == v3
    t3 = read_version_table(version_dir(root, v3))
    assert "variant" not in table.columns and list(t3.columns)[-1] == "variant"
    plan = exp.variant_plan
    per_user = t3.groupby("user_id")["variant"].first()
    assert (per_user.to_numpy() == assign(per_user.index, plan)).all()
    m3 = read_manifest(root, v3)["variants"]
    assert m3["salt"] == "exp-19" and m3["users"] == per_user.value_counts().to_dict()
    assert m3["model_versions"] == {"champion": second["reg"]["model_version"], "challenger": third["reg"]["model_version"]}
    assert set(t3.loc[t3["variant"] == "champion", "model_version"]) == {second["reg"]["model_version"]}
    assert (t3.loc[t3["variant"] == "holdout", "source"] == "fallback").all()
    assert not t3["item_id"].isin(excluded).any()
    report = json.loads(Path(third["checked"]["report"]).read_text())
    assert {r["check"]: r["success"] for r in report["results"]}["variant_shares"] is True

    # a rollback of the recommendations takes the similar-items table back to its twin version
    back = rollback(exp, _rc("manual__rollback"), to_version=v2, reason="undo the experiment")
    assert back["to"] == v2 == read_current(root) and back["similar_items"] == v2 == read_current(sroot)
    assert history(sroot)[-1]["reason"].startswith("rollback")
