"""The run's seen pattern (issue 21): built once per run, reused by ``register`` and every
shard, rebuilt when the snapshot is rewritten, and each consumer's matrix equal to translating
every snapshot pair on its own (what ``register`` and the shards did before)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pandas as pd
import pytest

from include.recsys.config.settings import load_config
from include.recsys.core.ids import csr_from_codes, read_codes, read_id_maps, translate_codes
from include.recsys.core.run import RunContext
from include.recsys.data import synth
from include.recsys.stages._shared import run_seen
from include.recsys.stages.register import _serving_seen
from include.recsys.stages.shards import _shard_seen, plan_shards
from include.recsys.stages.snapshot import snapshot


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seen")
    cfg = load_config({"data_dir": tmp, "factors": 4, "iterations": 2, "top_n": 3, "shards": 3})
    synth.ensure_default_data(cfg.source, dataclasses.replace(synth.PRESETS["tiny"], end_date="2026-11-20"))
    rc = RunContext("d", "r1", pd.Timestamp("2026-11-20", tz="UTC"), pd.Timestamp("2026-11-21", tz="UTC"))
    snap = snapshot(cfg, rc)
    users, items = read_id_maps(snap["users"], snap["items"], snap["snapshot"])
    # a model that knows every other user and a shuffled subset of the items
    rng = np.random.default_rng(0)
    bundle = type("Bundle", (), {})()
    bundle.user_ids = pd.Index(users.ids[::2])
    bundle.item_ids = pd.Index(rng.permutation(np.asarray(items.ids))[: len(items.ids) - 5])
    return cfg, rc, snap, users, items, bundle


def _per_pair(snap, users, items, row_ids, bundle) -> object:
    u, i = read_codes(snap["snapshot"])
    rows = translate_codes(u, users.ids, row_ids)
    cols = translate_codes(i, items.ids, bundle.item_ids)
    return csr_from_codes(rows, cols, None, (len(row_ids), len(bundle.item_ids)))


def _same(got, want) -> None:
    assert got.shape == want.shape and got.has_sorted_indices
    np.testing.assert_array_equal(got.indptr, want.indptr)
    np.testing.assert_array_equal(got.indices, want.indices)
    assert (got.data == 1).all() and got.dtype == np.float32


def test_shards_and_register_get_the_per_pair_matrices(run) -> None:
    cfg, rc, snap, users, items, bundle = run
    shards = plan_shards(cfg, rc, snap)
    assert [s["lo"] for s in shards][0] == 0 and shards[-1]["hi"] == len(users.ids)
    for shard in shards:
        shard_users = pd.Index(users.ids[shard["lo"] : shard["hi"]])
        _same(_shard_seen(shard, shard_users, bundle), _per_pair(snap, users, items, shard_users, bundle))
    want = _per_pair(snap, users, items, bundle.user_ids, bundle)
    path = (snap["snapshot"], snap["users"], snap["items"])
    _same(_serving_seen(bundle, *path, seen=run_seen(cfg, rc, *path)), want)
    _same(_serving_seen(bundle, *path), want)  # without the run folder: built in memory


def test_built_once_and_rebuilt_for_a_rewritten_snapshot(run) -> None:
    cfg, rc, snap, users, items, bundle = run
    path = (snap["snapshot"], snap["users"], snap["items"])
    folder = run_seen(cfg, rc, *path)
    stamp = (folder / "indices.npy").stat().st_mtime_ns
    assert run_seen(cfg, rc, *path) == folder
    assert (folder / "indices.npy").stat().st_mtime_ns == stamp  # reused, not rebuilt
    # a rerun snapshot (another file at the same path): the pattern follows it
    df = pd.read_parquet(snap["snapshot"])
    df = df.loc[df["user_idx"] != 0].reset_index(drop=True)
    tmp = f"{snap['snapshot']}.new"
    df.to_parquet(tmp, index=False)
    os.replace(tmp, snap["snapshot"])
    indptr = np.load(run_seen(cfg, rc, *path) / "indptr.npy")
    assert indptr[1] == 0  # user 0's pairs are gone
    _same(_serving_seen(bundle, *path, seen=run_seen(cfg, rc, *path)),
          _per_pair(snap, users, items, bundle.user_ids, bundle))


def test_a_shard_with_the_wrong_users_is_refused(run) -> None:
    cfg, rc, snap, users, items, bundle = run
    shard = plan_shards(cfg, rc, snap)[0]
    with pytest.raises(ValueError, match="users for rows"):
        _shard_seen(shard, pd.Index(users.ids[:1]), bundle)
