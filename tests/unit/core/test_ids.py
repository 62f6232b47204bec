"""The one-pass id maps and CSR build of training equal the two-pass route they replace.

``IdMap.factorize`` must give exactly ``IdMap.from_values`` + ``index_of`` (same ids, same
dtype, same order, same row indices) whatever the id column's type, so the matrix ALS sees,
and with it the factors for a seed, does not change.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from include.recsys.core.ids import IdMap, csr_from_codes, interaction_matrix
from include.recsys.data.split import read_training_events
from include.recsys.errors import TrainingError


def _columns() -> dict[str, pd.Series]:
    rng = np.random.default_rng(3)
    ints = rng.integers(0, 50, 400) * 7
    strs = pd.Series([f"u{v:04d}" for v in ints], dtype="str")
    cat = pd.Series(pd.Categorical(strs, categories=[*sorted(set(strs)), "never-used"][::-1]))
    return {
        "int64": pd.Series(ints),
        "str": strs,
        "object": strs.astype(object),
        "categorical with an unused category": cat,
    }


@pytest.mark.parametrize("kind", list(_columns()))
def test_factorize_equals_from_values_and_index_of(kind: str) -> None:
    values = _columns()[kind]
    categorical = kind.startswith("categorical")
    plain = values.astype(str) if categorical else values
    ids, codes = IdMap.factorize(values)
    ref = IdMap.from_values(plain)
    assert ids.ids.equals(ref.ids)
    if not categorical:  # from_values would keep a categorical's CategoricalIndex
        assert ids.ids.dtype == ref.ids.dtype
    np.testing.assert_array_equal(codes, ref.index_of(plain))


def test_factorize_with_missing_ids_falls_back_to_the_two_pass_route() -> None:
    values = pd.Series(["b", None, "a", "b"], dtype=object)
    ids, codes = IdMap.factorize(values)
    ref = IdMap.from_values(values)
    assert ids.ids.equals(ref.ids)
    np.testing.assert_array_equal(codes, ref.index_of(values))


@pytest.mark.parametrize("value", ["weight", None])
def test_interaction_matrix_with_codes_equals_the_lookup(value: str | None) -> None:
    rng = np.random.default_rng(5)
    df = pd.DataFrame({
        "user_id": [f"u{v}" for v in rng.integers(0, 30, 500)],
        "item_id": [f"i{v}" for v in rng.integers(0, 12, 500)],  # many duplicate pairs
        "weight": rng.random(500).astype(np.float32),
    })
    users, u = IdMap.factorize(df["user_id"])
    items, i = IdMap.factorize(df["item_id"])
    a = interaction_matrix(df, users, items, value=value)
    b = interaction_matrix(df, users, items, value=value, codes=(u, i))
    for m in (a, b):
        assert m.has_canonical_format and m.dtype == np.float32
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.data, b.data)
    if value is None:
        assert set(np.unique(b.data)) == {1.0}


def test_csr_from_codes_drops_unknown_rows() -> None:
    u, i = np.array([0, -1, 1, 0]), np.array([1, 0, -1, 1])
    m = csr_from_codes(u, i, np.ones(4, np.float32), (2, 2))
    assert m.nnz == 1 and m[0, 1] == 2.0


def test_read_training_events_reads_only_what_training_uses(tmp_path) -> None:
    df = pd.DataFrame({
        "user_id": ["u1", "u2"], "item_id": ["i1", "i1"], "weight": [1.0, 2.0],
        "event_ts": pd.to_datetime(["2026-01-01", "2026-01-02"], utc=True),
        "event_type": ["view", "buy"],
    })
    df.to_parquet(tmp_path / "train.parquet", index=False)
    got = read_training_events(tmp_path / "train.parquet")
    assert list(got.columns) == ["user_id", "item_id", "weight", "event_ts"]
    df.drop(columns="weight").to_parquet(tmp_path / "bad.parquet", index=False)
    with pytest.raises(TrainingError, match="lacks column"):
        read_training_events(tmp_path / "bad.parquet")


def test_training_from_snapshot_codes_equals_training_from_string_ids(tmp_path) -> None:
    """The pipeline's route (int32 codes into the snapshot's id maps, no string read) gives the
    same id maps, seen matrix, popularity and factors as factorizing the string ids."""
    from include.recsys.backends.implicit import train
    from include.recsys.config.settings import load_config

    rng = np.random.default_rng(11)
    n = 3000
    snap_users = IdMap(pd.Index([f"u{k:03d}" for k in range(80)]))  # sorted, some unused in train
    snap_items = IdMap(pd.Index([f"i{k:03d}" for k in range(40)]))
    u = rng.integers(0, 70, n).astype(np.int32)
    i = rng.integers(0, 35, n).astype(np.int32)
    df = pd.DataFrame({
        "user_id": snap_users.ids[u], "item_id": snap_items.ids[i],
        "event_ts": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 10**6, n), unit="s"),
        "event_type": "view", "weight": rng.random(n).astype(np.float32) + 0.5,
        "user_idx": u, "item_idx": i,
    })
    df.to_parquet(tmp_path / "train.parquet", index=False)
    cfg = load_config({"data_dir": tmp_path, "factors": 8, "iterations": 3, "seed": 3, "num_threads": 1})
    coded = read_training_events(tmp_path / "train.parquet", codes=True)
    assert list(coded.columns) == ["user_idx", "item_idx", "weight", "event_ts"]
    a, _ = train(read_training_events(tmp_path / "train.parquet"), cfg)
    b, _ = train(coded, cfg, id_maps=(snap_users, snap_items))
    assert a.user_ids.equals(b.user_ids) and a.item_ids.equals(b.item_ids)
    assert a.id_maps_hash == b.id_maps_hash
    assert (a.seen != b.seen).nnz == 0
    np.testing.assert_array_equal(a.item_popularity, b.item_popularity)
    np.testing.assert_array_equal(a.user_factors, b.user_factors)
    np.testing.assert_array_equal(a.item_factors, b.item_factors)
    # maps the rows use completely (codes taken as they are) give the same model too
    full_users, full_items = IdMap(snap_users.ids[:70]), IdMap(snap_items.ids[:35])
    assert np.bincount(u).all() and np.bincount(i).all()
    c, _ = train(coded, cfg, id_maps=(full_users, full_items))
    assert c.id_maps_hash == a.id_maps_hash
    np.testing.assert_array_equal(a.user_factors, c.user_factors)
    with pytest.raises(TrainingError, match="different snapshots"):
        train(coded, cfg, id_maps=(IdMap(snap_users.ids[:10]), snap_items))


def test_read_training_events_checks_the_cutoff_and_drops_times_when_unused(tmp_path) -> None:
    df = pd.DataFrame({
        "user_id": ["u1", "u2"], "item_id": ["i1", "i1"], "weight": [1.0, 2.0],
        "event_ts": pd.to_datetime(["2026-01-01", "2026-01-02"], utc=True),
    })
    df.to_parquet(tmp_path / "train.parquet", index=False)
    path = tmp_path / "train.parquet"
    got = read_training_events(path, cutoff=pd.Timestamp("2026-01-03", tz="UTC"), need_times=False)
    assert list(got.columns) == ["user_id", "item_id", "weight"]
    kept = read_training_events(path, cutoff=pd.Timestamp("2026-01-03", tz="UTC"))
    assert "event_ts" in kept.columns
    with pytest.raises(TrainingError, match="1 training event"):
        read_training_events(path, cutoff=pd.Timestamp("2026-01-02", tz="UTC"), need_times=False)
