"""The stages' integer-code route (the snapshot's ``user_idx`` / ``item_idx`` into its sorted id
maps) against the string-id route they replaced: same model, same shards, same top-N table.

Real stages on a tiny synthetic lake with MLflow on SQLite; the string route is what a work
folder written before the codes existed takes (no id-map paths in the stage outputs)."""

from __future__ import annotations

import dataclasses
import os
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from include.recsys.config.settings import load_config
from include.recsys.core.run import RunContext
from include.recsys.data import synth
from include.recsys.scoring.bundle import ModelBundle
from include.recsys.stages.shards import plan_shards, score_shard
from include.recsys.stages.snapshot import snapshot
from include.recsys.stages.split import split
from include.recsys.stages.train import train
from include.recsys.tables.versions import _staging_path

END = datetime(2026, 11, 20, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("coded_stages")
    mp = pytest.MonkeyPatch()
    mp.setenv("RECSYS_DATA_DIR", str(base / "data"))
    saved_uri = os.environ.pop("MLFLOW_TRACKING_URI", None)
    cfg = load_config({"window_days": 35, "iterations": 4, "factors": 8, "shards": 3})
    data = synth.generate(dataclasses.replace(synth.PRESETS["tiny"], end_date="2026-11-19"))
    synth.land_partitioned(data, cfg.source)
    rc = RunContext("recsys_nightly_retrain", "manual__coded", datetime(2026, 11, 19, tzinfo=timezone.utc), END)
    snap = snapshot(cfg, rc)
    parts = split(cfg, rc, snap)
    yield {"cfg": cfg, "rc": rc, "snap": snap, "parts": parts}
    mp.undo()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if saved_uri is not None:
        os.environ["MLFLOW_TRACKING_URI"] = saved_uri


def _legacy(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in ("users", "items")}


def test_snapshot_and_split_files_carry_codes_into_the_id_maps(staged) -> None:
    snap, parts = staged["snap"], staged["parts"]
    users = pd.read_parquet(snap["users"])["user_id"]
    items = pd.read_parquet(snap["items"])["item_id"]
    assert users.is_monotonic_increasing and items.is_monotonic_increasing
    for path in (snap["snapshot"], parts["train"], parts["holdout"]):
        df = pd.read_parquet(path)
        assert df["user_id"].dtype == users.dtype  # plain strings, not categoricals
        assert (users.to_numpy()[df["user_idx"]] == df["user_id"].to_numpy()).all()
        assert (items.to_numpy()[df["item_idx"]] == df["item_id"].to_numpy()).all()
    assert parts["users"] == snap["users"] and parts["items"] == snap["items"]


def test_training_on_codes_equals_training_on_string_ids(staged) -> None:
    cfg, rc, snap, parts = staged["cfg"], staged["rc"], staged["snap"], staged["parts"]
    coded = ModelBundle.load(train(cfg, rc, parts, snap)["bundle"])
    plain = ModelBundle.load(train(cfg, rc, _legacy(parts), snap)["bundle"])
    assert coded.id_maps_hash == plain.id_maps_hash
    assert coded.user_ids.equals(plain.user_ids) and coded.item_ids.equals(plain.item_ids)
    np.testing.assert_array_equal(coded.user_factors, plain.user_factors)
    np.testing.assert_array_equal(coded.item_factors, plain.item_factors)
    assert (coded.seen != plain.seen).nnz == 0


def test_shards_from_codes_score_the_same_table_as_shards_from_strings(staged) -> None:
    cfg, rc, snap, parts = staged["cfg"], staged["rc"], staged["snap"], staged["parts"]
    model = train(cfg, rc, parts, snap)
    reg = {"model_name": "m", "model_version": "1"}

    def table(s: dict) -> pd.DataFrame:
        shards = plan_shards(cfg, rc, s)
        assert len(shards) == 3
        outs = [score_shard(cfg, rc, s, model, reg, sh) for sh in shards]
        staging = _staging_path(cfg.recommendations_root, rc.version)
        return pd.concat([pd.read_parquet(staging / o["path"]) for o in outs], ignore_index=True)

    coded, plain = table(snap), table(_legacy(snap))
    assert len(coded) > 0 and coded["user_id"].is_monotonic_increasing
    pd.testing.assert_frame_equal(coded, plain)
