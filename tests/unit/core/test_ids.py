"""The id route of :mod:`include.recsys.core.ids`: codes into sorted id maps, their remaps, and
refusing files without codes.

``IdMap.factorize`` (behind :func:`encode`) must give exactly ``IdMap.from_values`` +
``index_of`` (same ids, same dtype, same order, same row indices) whatever the id column's
type, so the matrix ALS sees, and with it the factors for a seed, does not change.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from include.recsys.core.ids import (
    IdMap,
    compact_codes,
    csr_from_codes,
    encode,
    interaction_matrix,
    read_codes,
    read_id_maps,
    translate_codes,
)
from include.recsys.data.split import read_training_events
from include.recsys.errors import IdRouteError, TrainingError


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


def test_compact_codes_keeps_order_and_missing() -> None:
    codes = np.array([4, 1, -1, 4, 2, 1], np.int32)
    present, new = compact_codes(codes, 6)
    assert present.tolist() == [False, True, True, False, True, False]
    assert new.tolist() == [2, 0, -1, 2, 1, 0] and new.dtype == np.int32
    _, wide = compact_codes(codes, 6, np.int64)
    assert wide.dtype == np.int64 and wide.tolist() == new.tolist()
    every = np.array([2, 0, 1, 1], np.int32)
    present, same = compact_codes(every, 3)
    assert present.all() and same is every  # nothing to renumber: no copy


def test_translate_codes_looks_each_id_up_once() -> None:
    snapshot = pd.Index(["a", "b", "c", "d"])
    model = pd.Index(["b", "d", "z"])
    got = translate_codes(np.array([0, 1, 3, -1, 1, 2]), snapshot, model)
    assert got.tolist() == [-1, 0, 1, -1, 0, -1]
    assert translate_codes(np.array([1], np.int32), snapshot, model, np.int32).dtype == np.int32


def test_encode_gives_codes_into_sorted_maps() -> None:
    df = pd.DataFrame({"user_id": ["u2", "u1", "u2"], "item_id": ["b", "c", "a"], "weight": [1.0, 2.0, 3.0]})
    coded, users, items = encode(df)
    assert users.ids.tolist() == ["u1", "u2"] and items.ids.tolist() == ["a", "b", "c"]
    assert coded["user_idx"].tolist() == [1, 0, 1] and coded["item_idx"].tolist() == [1, 2, 0]
    assert coded["user_idx"].dtype == np.int32 and list(coded.columns[:3]) == list(df.columns)
    assert "user_idx" not in df.columns  # the caller's frame is left alone


def test_files_without_codes_or_maps_are_refused(tmp_path) -> None:
    df = pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["i1", "i1"], "user_idx": np.array([0, 1], np.int32),
                       "item_idx": np.array([0, -1], np.int32)})
    df.to_parquet(tmp_path / "coded.parquet", index=False)
    df.drop(columns="item_idx").to_parquet(tmp_path / "plain.parquet", index=False)
    with pytest.raises(IdRouteError, match=r"plain\.parquet has no item_idx codes.*rerun the snapshot stage"):
        read_codes(tmp_path / "plain.parquet")
    u, i = read_codes(tmp_path / "coded.parquet", (2, 1), allow_missing=True)
    assert u.tolist() == [0, 1] and i.tolist() == [0, -1]
    with pytest.raises(IdRouteError, match=r"item_idx outside \[0, 1\)"):  # a missing id
        read_codes(tmp_path / "coded.parquet", (2, 1))
    with pytest.raises(IdRouteError, match=r"user_idx outside \[-1, 1\)"):  # codes beyond the map
        read_codes(tmp_path / "coded.parquet", (1, 1), allow_missing=True)
    IdMap(pd.Index(["u1", "u2"])).to_frame("user").to_parquet(tmp_path / "users.parquet")
    with pytest.raises(IdRouteError, match=r"no item id map \(none given\).*rerun the snapshot stage"):
        read_id_maps(tmp_path / "users.parquet", None, tmp_path / "coded.parquet")
    with pytest.raises(IdRouteError, match="no user id map"):
        read_id_maps(tmp_path / "gone.parquet", tmp_path / "users.parquet", tmp_path / "coded.parquet")


def _training_file(path, df: pd.DataFrame):
    users, items = IdMap.from_values(df["user_id"]), IdMap.from_values(df["item_id"])
    df.assign(user_idx=users.index_of(df["user_id"]).astype(np.int32),
              item_idx=items.index_of(df["item_id"]).astype(np.int32)).to_parquet(path, index=False)
    return path


def test_read_training_events_reads_only_what_training_uses(tmp_path) -> None:
    df = pd.DataFrame({
        "user_id": ["u1", "u2"], "item_id": ["i1", "i1"], "weight": [1.0, 2.0],
        "event_ts": pd.to_datetime(["2026-01-01", "2026-01-02"], utc=True),
        "event_type": ["view", "buy"],
    })
    got = read_training_events(_training_file(tmp_path / "train.parquet", df))
    assert list(got.columns) == ["user_idx", "item_idx", "weight", "event_ts"]
    assert got["user_idx"].tolist() == [0, 1] and got["item_idx"].tolist() == [0, 0]
    _training_file(tmp_path / "bad.parquet", df.drop(columns="weight"))
    with pytest.raises(TrainingError, match="lacks column"):
        read_training_events(tmp_path / "bad.parquet")
    df.to_parquet(tmp_path / "plain.parquet", index=False)  # string ids only
    with pytest.raises(IdRouteError, match="plain.parquet has no user_idx/item_idx codes"):
        read_training_events(tmp_path / "plain.parquet")


def test_training_takes_the_ids_its_codes_use_from_a_wider_map() -> None:
    """Codes into the snapshot's maps (wider than the training rows: ids unused in the middle
    and at the end) train the same model as codes into maps of exactly the training ids; codes
    beyond the map are refused."""
    from include.recsys.backends.implicit import train
    from include.recsys.config.settings import load_config

    rng = np.random.default_rng(11)
    n = 3000
    snap_users = IdMap(pd.Index([f"u{k:03d}" for k in range(80)]))  # sorted, some unused in train
    snap_items = IdMap(pd.Index([f"i{k:03d}" for k in range(40)]))
    u = rng.choice(np.r_[0:30, 35:70], n).astype(np.int32)  # u030..u034 and u070.. never train
    i = rng.integers(0, 35, n).astype(np.int32)
    df = pd.DataFrame({
        "user_id": snap_users.ids[u], "item_id": snap_items.ids[i],
        "event_ts": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 10**6, n), unit="s"),
        "weight": rng.random(n).astype(np.float32) + 0.5,
        "user_idx": u, "item_idx": i,
    })
    cfg = load_config({"factors": 8, "iterations": 3, "seed": 3, "num_threads": 1})
    wide, _ = train(df, cfg, id_maps=(snap_users, snap_items))
    coded, users, items = encode(df.drop(columns=["user_idx", "item_idx"]))  # maps of the training ids
    exact, _ = train(coded, cfg, id_maps=(users, items))
    assert wide.user_ids.tolist() == [f"u{k:03d}" for k in [*range(30), *range(35, 70)]]
    assert wide.item_ids.equals(snap_items.ids[:35])
    assert wide.id_maps_hash == exact.id_maps_hash
    assert (wide.seen != exact.seen).nnz == 0
    np.testing.assert_array_equal(wide.item_popularity, exact.item_popularity)
    np.testing.assert_array_equal(wide.user_factors, exact.user_factors)
    np.testing.assert_array_equal(wide.item_factors, exact.item_factors)
    with pytest.raises(TrainingError, match="different snapshots"):
        train(df, cfg, id_maps=(IdMap(snap_users.ids[:10]), snap_items))
    with pytest.raises(IdRouteError, match="no user_idx"):
        train(df.drop(columns="user_idx"), cfg, id_maps=(snap_users, snap_items))


def test_read_training_events_checks_the_cutoff_and_drops_times_when_unused(tmp_path) -> None:
    df = pd.DataFrame({
        "user_id": ["u1", "u2"], "item_id": ["i1", "i1"], "weight": [1.0, 2.0],
        "event_ts": pd.to_datetime(["2026-01-01", "2026-01-02"], utc=True),
    })
    path = _training_file(tmp_path / "train.parquet", df)
    got = read_training_events(path, cutoff=pd.Timestamp("2026-01-03", tz="UTC"), need_times=False)
    assert list(got.columns) == ["user_idx", "item_idx", "weight"]
    kept = read_training_events(path, cutoff=pd.Timestamp("2026-01-03", tz="UTC"))
    assert "event_ts" in kept.columns
    with pytest.raises(TrainingError, match="1 training event"):
        read_training_events(path, cutoff=pd.Timestamp("2026-01-02", tz="UTC"), need_times=False)
