"""The validation fast paths give exactly the results of the string paths: snapshot statistics
from integer codes, the output set checks from :class:`SeenPairs`, and GX's batch fingerprint
limit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from include.recsys.core.ids import IdMap
from include.recsys.validation.history import (
    load_bounds,
    read_snapshot,
    snapshot_statistics,
)
from include.recsys.validation.output import SeenPairs, set_checks


def _seen(rng: np.random.Generator, n: int = 300) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": pd.Series([f"{u}" for u in rng.choice(list("abcez"), n)], dtype="str"),
        "item_id": pd.Series([f"i{k}" for k in rng.integers(0, 12, n)], dtype="str"),
        "event_ts": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 10 * 86400, n), unit="s"),
    })


def _table() -> pd.DataFrame:
    rows = [(u, r, f"i{(k + r) % 9}", 1.0 - r / 10) for k, u in enumerate(["a", "b", "c"]) for r in (1, 2, 3)]
    rows.append(("d", 1, "i_unknown", 0.5))  # an item outside the catalog
    rows.append(("b", 3, "i1", 0.1))  # a repeated rank
    t = pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score"])
    return t.astype({"user_id": "str", "item_id": "str", "rank": "int32", "score": "float32"})


def _coded(seen: pd.DataFrame, wider: bool = False) -> SeenPairs:
    users, u = IdMap.factorize(seen["user_id"])
    items, i = IdMap.factorize(seen["item_id"])
    uid, iid = users.ids, items.ids
    if wider:  # maps holding ids no row uses: they are not seen ids nor catalog items
        uid = pd.Index(["0zz", *uid], dtype="str")
        iid = pd.Index([*iid, "zz"], dtype="str")
        u = u + 1
    return SeenPairs.from_codes(uid, iid, u.astype(np.int32), i.astype(np.int32))


@pytest.mark.parametrize("wider", [False, True])
@pytest.mark.parametrize("with_current", [False, True])
def test_seen_pairs_give_the_same_checks(wider: bool, with_current: bool) -> None:
    seen = _seen(np.random.default_rng(3))
    current = None
    if with_current:
        current = pd.DataFrame({"user_id": ["a", "a", "c", "q"], "item_id": ["i2", "i9", "i3", "i1"]}).astype("str")
    plain = set_checks(_table(), top_n=3, seen=seen[["user_id", "item_id"]], current=current, bounds=load_bounds())
    coded = set_checks(_table(), top_n=3, seen=_coded(seen, wider), current=current, bounds=load_bounds())
    assert coded == plain
    assert any(not r["success"] for r in plain[0])


def test_seen_pairs_reject_codes_outside_the_maps() -> None:
    with pytest.raises(ValueError, match="user codes outside"):
        SeenPairs.from_codes(pd.Index(["a"]), pd.Index(["i"]), np.array([1]), np.array([0]))


@pytest.mark.parametrize("previous_end", [None, "2026-01-05"])
def test_snapshot_statistics_from_codes(previous_end: str | None) -> None:
    seen = _seen(np.random.default_rng(5))
    prev = pd.Timestamp(previous_end, tz="UTC") if previous_end else None
    _, u = IdMap.factorize(seen["user_id"])
    _, i = IdMap.factorize(seen["item_id"])
    assert snapshot_statistics(seen, prev, (u.astype(np.int32), i.astype(np.int32))) == snapshot_statistics(seen, prev)
    wider = (u + 2, i)  # codes into a map with two unused ids
    assert snapshot_statistics(seen, prev, wider) == snapshot_statistics(seen, prev)


def test_read_snapshot_splits_off_the_codes(tmp_path) -> None:
    seen = _seen(np.random.default_rng(7))
    path = tmp_path / "snap.parquet"
    seen.assign(user_idx=np.arange(len(seen), dtype=np.int32), item_idx=np.zeros(len(seen), np.int32)).to_parquet(path)
    df, codes = read_snapshot(path)
    assert list(df.columns) == list(seen.columns) and codes is not None
    assert (codes[0] == np.arange(len(seen))).all() and (codes[1] == 0).all()
    seen.to_parquet(path)
    df, codes = read_snapshot(path)
    assert codes is None and list(df.columns) == list(seen.columns)


def test_gx_fingerprint_limit_is_temporary() -> None:
    from include.recsys.validation.gx import _gx_context, _gx_fingerprint_limit

    _gx_context()  # imports GX quietly
    from great_expectations.execution_engine import pandas_execution_engine as engine

    before = engine.HASH_THRESHOLD
    with _gx_fingerprint_limit(10):
        assert engine.HASH_THRESHOLD == 10
    assert engine.HASH_THRESHOLD == before


@pytest.mark.parametrize("pseudonymize", [False, True])
def test_privacy_seen_from_codes_matches_the_string_pairs(tmp_path, monkeypatch, pseudonymize: bool) -> None:
    """pipeline._privacy_seen on a coded snapshot (codes + id maps) checks like the string pairs."""
    from include.recsys.core.privacy import pseudonymize_table
    from include.recsys.stages.validate_output import _privacy_seen

    if pseudonymize:
        monkeypatch.setenv("RECSYS_PSEUDONYMIZE_USER_IDS", "true")
        monkeypatch.setenv("RECSYS_PSEUDONYMIZE_KEY", "k" * 32)
    else:
        monkeypatch.delenv("RECSYS_PSEUDONYMIZE_USER_IDS", raising=False)
    seen = _seen(np.random.default_rng(11))
    users, u = IdMap.factorize(seen["user_id"])
    items, i = IdMap.factorize(seen["item_id"])
    snap = {"snapshot": str(tmp_path / "s.parquet"), "users": str(tmp_path / "u.parquet"), "items": str(tmp_path / "i.parquet")}
    seen.assign(user_idx=u.astype(np.int32), item_idx=i.astype(np.int32)).to_parquet(snap["snapshot"])
    users.to_frame("user").to_parquet(snap["users"])
    items.to_frame("item").to_parquet(snap["items"])
    pairs = _privacy_seen(snap)
    assert isinstance(pairs, SeenPairs)
    table = pseudonymize_table(_table())
    expected_seen = pseudonymize_table(seen[["user_id", "item_id"]])
    plain = set_checks(table, top_n=3, seen=expected_seen, current=None, bounds=load_bounds())
    assert set_checks(table, top_n=3, seen=pairs, current=None, bounds=load_bounds()) == plain
