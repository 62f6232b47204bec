"""The stages' one id route: the snapshot's ``user_idx`` / ``item_idx`` into its sorted id maps
carry through split, train and the scoring shards, and give the model and the top-N table of
the string ids they stand for; a stage handed files or stage outputs without codes or id maps
refuses them (:class:`IdRouteError`) instead of reading string ids.

Real stages on a tiny synthetic lake with MLflow on SQLite."""

from __future__ import annotations

import dataclasses
import os
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from include.recsys.backends.implicit import train as fit
from include.recsys.config.settings import load_config
from include.recsys.core.ids import encode
from include.recsys.core.run import RunContext
from include.recsys.data import synth
from include.recsys.data.source import read_segments
from include.recsys.errors import IdRouteError
from include.recsys.scoring.bundle import ModelBundle
from include.recsys.scoring.recommend import recommend
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


def _without_maps(d: dict) -> dict:
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


def test_the_train_stage_fits_the_split_it_was_given(staged) -> None:
    """The stage's model (from codes, no string read) is the model of the training split's
    string ids: same ids, same seen pairs, same factors for the seed."""
    cfg, rc, snap, parts = staged["cfg"], staged["rc"], staged["snap"], staged["parts"]
    got = ModelBundle.load(train(cfg, rc, parts, snap)["bundle"])
    events = pd.read_parquet(parts["train"], columns=["user_id", "item_id", "weight", "event_ts"])
    coded, users, items = encode(events)
    want, _ = fit(coded, cfg, read_segments(cfg), cutoff=pd.Timestamp(parts["stats"]["cutoff"]), id_maps=(users, items))
    assert got.user_ids.equals(pd.Index(sorted(events["user_id"].unique())))
    assert got.item_ids.equals(pd.Index(sorted(events["item_id"].unique())))
    assert got.id_maps_hash == want.id_maps_hash
    # the saved bundle keeps the seen pattern (pairs), not the summed weights
    np.testing.assert_array_equal(got.seen.indptr, want.seen.indptr)
    np.testing.assert_array_equal(got.seen.indices, want.seen.indices)
    assert got.seen.nnz == len(events[["user_id", "item_id"]].drop_duplicates())
    np.testing.assert_array_equal(got.item_popularity, want.item_popularity)
    np.testing.assert_array_equal(got.user_factors, want.user_factors)
    np.testing.assert_array_equal(got.item_factors, want.item_factors)


def test_stages_refuse_outputs_without_the_id_maps(staged) -> None:
    cfg, rc, snap, parts = staged["cfg"], staged["rc"], staged["snap"], staged["parts"]
    with pytest.raises(IdRouteError, match="no user id map .*rerun the snapshot stage"):
        train(cfg, rc, _without_maps(parts), snap)
    with pytest.raises(IdRouteError, match="no user id map"):
        plan_shards(cfg, rc, _without_maps(snap))


def test_shards_score_each_range_with_the_snapshot_pairs_of_its_users(staged) -> None:
    """Each shard's part is what recommend gives its users with their snapshot (user, item)
    pairs as the seen filter (string ids), and the parts cover the snapshot's users in order."""
    cfg, rc, snap, parts = staged["cfg"], staged["rc"], staged["snap"], staged["parts"]
    model = train(cfg, rc, parts, snap)
    reg = {"model_name": "m", "model_version": "1"}
    bundle = ModelBundle.load(model["bundle"])
    pairs = pd.read_parquet(snap["snapshot"], columns=["user_id", "item_id"])
    all_users = pd.Index(sorted(pairs["user_id"].unique()))
    shards = plan_shards(cfg, rc, snap)
    assert len(shards) == 3 and [s["lo"] for s in shards] == [0, shards[0]["hi"], shards[1]["hi"]]
    assert shards[-1]["hi"] == len(all_users)
    staging = _staging_path(cfg.recommendations_root, rc.version)
    tables = []
    for sh in shards:
        out = score_shard(cfg, rc, snap, model, reg, sh)
        got = pd.read_parquet(staging / out["path"])
        users = all_users[sh["lo"] : sh["hi"]]
        seen = pairs.loc[pairs["user_id"].isin(users)]
        recs = recommend(bundle, users, seen, cfg.top_n, block_size=cfg.score_block_size,
                         user_segments=read_segments(cfg))
        want = recs.to_frame(bundle).assign(model_name="m", model_version="1")
        pd.testing.assert_frame_equal(got, want[list(got.columns)], check_dtype=False)
        tables.append(got)
    table = pd.concat(tables, ignore_index=True)
    assert len(table) > 0 and table["user_id"].is_monotonic_increasing
    assert pd.Index(table["user_id"].unique()).equals(all_users)
