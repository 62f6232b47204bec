"""The validation of the id codes: snapshot statistics from integer codes, the output set checks
over :class:`SeenPairs` (against results worked out by hand below), the coded snapshot pairs
of the validate_output stage, and GX's batch fingerprint limit."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from include.recsys.core.ids import IdMap, encode
from include.recsys.errors import IdRouteError
from include.recsys.validation.history import (
    load_bounds,
    read_snapshot,
    snapshot_statistics,
)
from include.recsys.validation.output import SeenPairs, set_checks

# the snapshot's pairs (duplicates included); user e has no list, catalog = i0 i1 i2 i5 i6 i7 i8
SEEN = pd.DataFrame(
    [("a", "i1"), ("a", "i7"), ("a", "i8"), ("a", "i7"), ("b", "i0"), ("b", "i6"), ("c", "i0"),
     ("e", "i2"), ("e", "i5"), ("e", "i2")],
    columns=["user_id", "item_id"],
).astype("str")


def _table() -> pd.DataFrame:
    # a: i1 i2 i3, b: i2 i3 i4, c: i3 i4 i5 (ranks 1..3)
    rows = [(u, r, f"i{(k + r) % 9}", 1.0 - r / 10) for k, u in enumerate(["a", "b", "c"]) for r in (1, 2, 3)]
    rows.append(("d", 1, "i_unknown", 0.5))  # an item outside the catalog
    rows.append(("b", 3, "i1", 0.1))  # a repeated rank
    t = pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score"])
    return t.astype({"user_id": "str", "item_id": "str", "rank": "int32", "score": "float32"})


#: check -> (success, observed) of set_checks(_table(), top_n=3, seen=SEEN)
EXPECTED = {
    "items_in_catalog": (False, 6),  # a-i3, b-i3, b-i4, c-i3, c-i4, d-i_unknown
    "no_seen_items": (False, 1),  # a-i1
    "distinct_items": (True, 0),
    "items_per_user": (False, 2),  # b has 4 rows, d 1 row; min(3, 7 - seen) = 3 for all
    "ranks_contiguous": (False, 1),  # b: 1, 2, 3, 3
    "scores_non_increasing": (True, 0),
    "user_coverage": (False, 0.75),  # a, b, c of a, b, c, e
}


def _pairs(seen: pd.DataFrame, wider: bool = False) -> SeenPairs:
    coded, users, items = encode(seen)
    uid, iid, u = users.ids, items.ids, coded["user_idx"].to_numpy()
    if wider:  # maps holding ids no row uses: they are not seen ids nor catalog items
        uid = pd.Index(["0zz", *uid], dtype="str")
        iid = pd.Index([*iid, "zz"], dtype="str")
        u = u + 1
    return SeenPairs.from_codes(uid, iid, u, coded["item_idx"].to_numpy())


def _by_check(results: list[dict]) -> dict[str, tuple]:
    return {r["check"]: (r["success"], r["observed_value"]) for r in results}


@pytest.mark.parametrize("wider", [False, True])
@pytest.mark.parametrize("with_current", [False, True])
def test_set_checks_over_seen_pairs(wider: bool, with_current: bool) -> None:
    current = None
    if with_current:
        current = pd.DataFrame({"user_id": ["a", "a", "c", "q"], "item_id": ["i2", "i9", "i3", "i1"]}).astype("str")
    results, notes, figures = set_checks(_table(), top_n=3, seen=_pairs(SEEN, wider), current=current,
                                         bounds=load_bounds())
    got = _by_check(results)
    assert {k: got[k] for k in EXPECTED} == EXPECTED
    by = {r["check"]: r for r in results}
    assert "('a', 'i1')" in by["no_seen_items"]["message"]
    assert "b has 4 (expected 3)" in by["items_per_user"]["message"] and "d has 1 (expected 3)" in by["items_per_user"]["message"]
    assert figures["users"] == 4 and figures["rows"] == 11
    if not with_current:
        assert got["jaccard_vs_current"] == (True, None) and "no CURRENT table" in notes[0]
    else:  # common users a ({i1 i2 i3} vs {i2 i9}: 1/4) and c ({i3 i4 i5} vs {i3}: 1/3)
        mean = (1 / 4 + 1 / 3) / 2
        assert got["jaccard_vs_current_min"][1] == pytest.approx(mean)
        assert got["jaccard_vs_current_min"][0] and got["jaccard_vs_current_max"][0]
        assert figures["common_users_vs_current"] == 2


def test_set_checks_need_the_coded_pairs() -> None:
    with pytest.raises(TypeError, match="SeenPairs"):
        set_checks(_table(), top_n=3, seen=SEEN, current=None, bounds=load_bounds())


def test_seen_pairs_reject_codes_outside_the_maps() -> None:
    with pytest.raises(ValueError, match="user codes outside"):
        SeenPairs.from_codes(pd.Index(["a"]), pd.Index(["i"]), np.array([1]), np.array([0]))
    with pytest.raises(ValueError, match="item codes outside"):
        SeenPairs.from_codes(pd.Index(["a"]), pd.Index(["i"]), np.array([0]), np.array([-1]))


def _seen(rng: np.random.Generator, n: int = 300) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": pd.Series([f"{u}" for u in rng.choice(list("abcez"), n)], dtype="str"),
        "item_id": pd.Series([f"i{k}" for k in rng.integers(0, 120, n)], dtype="str"),
        "event_ts": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 10 * 86400, n), unit="s"),
    })


@pytest.mark.parametrize("previous_end", [None, "2026-01-05"])
def test_snapshot_statistics_from_codes(previous_end: str | None) -> None:
    seen = _seen(np.random.default_rng(5))
    prev = pd.Timestamp(previous_end, tz="UTC") if previous_end else None
    coded, _, _ = encode(seen)
    u, i = coded["user_idx"].to_numpy(), coded["item_idx"].to_numpy()
    per_user, per_item = seen["user_id"].value_counts(), seen["item_id"].value_counts()
    k = math.ceil(0.01 * len(per_item))
    want = {
        "rows": 300, "users": 5, "items": seen["item_id"].nunique(),
        "top_user_share": per_user.max() / 300,
        "top1pct_item_share": per_item.nlargest(k).sum() / 300,
        "new_user_share": None, "new_item_share": None,
    }
    if prev is not None:
        for name in ("user", "item"):
            first = seen.groupby(f"{name}_id")["event_ts"].min()
            want[f"new_{name}_share"] = float((first >= prev).mean())
        assert 0 < want["new_item_share"] < 1
    assert snapshot_statistics(seen, prev, (u, i)) == pytest.approx(want)
    wider = (u + 2, i)  # codes into a map with two unused ids
    assert snapshot_statistics(seen, prev, wider) == pytest.approx(want)


def test_read_snapshot_rebuilds_the_ids_from_codes_and_maps(tmp_path) -> None:
    """The ids come back as categoricals over the snapshot's maps (no string per row): the same
    values as the file's own columns, a -1 code as a null id; codes and maps are required."""
    seen = _seen(np.random.default_rng(7))
    coded, users, items = encode(seen)
    coded.loc[[4, 9], "user_idx"] = -1  # null user ids in the file
    coded.loc[[4, 9], "user_id"] = None
    path, users_path, items_path = (tmp_path / f"{n}.parquet" for n in ("snap", "users", "items"))
    coded.to_parquet(path)
    users.to_frame("user").to_parquet(users_path)
    items.to_frame("item").to_parquet(items_path)
    df, codes = read_snapshot(path, users_path, items_path)
    assert list(df.columns) == list(seen.columns)
    assert isinstance(df["user_id"].dtype, pd.CategoricalDtype)
    assert df["user_id"].isna().sum() == 2
    pd.testing.assert_series_equal(df["user_id"].astype("str"), coded["user_id"].astype("str"))
    pd.testing.assert_series_equal(df["item_id"].astype("str"), seen["item_id"])
    assert (codes[0] == coded["user_idx"].to_numpy()).all() and (codes[1] == coded["item_idx"].to_numpy()).all()
    with pytest.raises(IdRouteError, match="no user id map"):
        read_snapshot(path, tmp_path / "gone.parquet", items_path)
    seen.to_parquet(path)
    with pytest.raises(IdRouteError, match="snap.parquet has no user_idx/item_idx codes.*rerun the snapshot stage"):
        read_snapshot(path, users_path, items_path)


def test_gx_fingerprint_limit_is_temporary() -> None:
    from include.recsys.validation.gx import _gx_context, _gx_fingerprint_limit

    _gx_context()  # imports GX quietly
    from great_expectations.execution_engine import pandas_execution_engine as engine

    before = engine.HASH_THRESHOLD
    with _gx_fingerprint_limit(10):
        assert engine.HASH_THRESHOLD == 10
    assert engine.HASH_THRESHOLD == before


def _coded_snapshot(tmp_path, seen: pd.DataFrame) -> dict[str, str]:
    coded, users, items = encode(seen)
    snap = {"snapshot": str(tmp_path / "s.parquet"), "users": str(tmp_path / "u.parquet"),
            "items": str(tmp_path / "i.parquet")}
    coded.to_parquet(snap["snapshot"])
    users.to_frame("user").to_parquet(snap["users"])
    items.to_frame("item").to_parquet(snap["items"])
    return snap


def _run(tmp_path):
    from include.recsys.config.settings import load_config
    from include.recsys.core.run import RunContext

    cfg = load_config({"data_dir": str(tmp_path / "data")})
    return cfg, RunContext("d", "r1", pd.Timestamp("2026-11-20", tz="UTC"), pd.Timestamp("2026-11-21", tz="UTC"))


@pytest.mark.parametrize("pseudonymize", [False, True])
def test_privacy_seen_gives_the_distinct_pairs_with_the_tables_user_ids(tmp_path, monkeypatch, pseudonymize: bool) -> None:
    """The validate_output stage's snapshot pairs, from the run's seen pattern: each distinct
    (user, item) once, user ids tokenised as the table's are (per distinct id), and the same
    check results as the plain pairs above."""
    from include.recsys.core.privacy import load_key, pseudonymize_ids, pseudonymize_table
    from include.recsys.stages.validate_output import _privacy_seen

    if pseudonymize:
        monkeypatch.setenv("RECSYS_PSEUDONYMIZE_USER_IDS", "true")
        monkeypatch.setenv("RECSYS_PSEUDONYMIZE_KEY", "k" * 32)
    else:
        monkeypatch.delenv("RECSYS_PSEUDONYMIZE_USER_IDS", raising=False)
    pairs = _privacy_seen(*_run(tmp_path), _coded_snapshot(tmp_path, SEEN))
    assert isinstance(pairs, SeenPairs)
    users = pd.Index(pseudonymize_ids(SEEN["user_id"], load_key())) if pseudonymize else SEEN["user_id"]
    got_pairs = pd.DataFrame({"u": pairs.users[pairs.user_codes], "i": pairs.items[pairs.item_codes]})
    want = pd.DataFrame({"u": np.asarray(users), "i": SEEN["item_id"].to_numpy()}).drop_duplicates()
    assert len(got_pairs) == len(want) < len(SEEN)  # SEEN repeats pairs; the pattern holds each once
    assert set(map(tuple, got_pairs.to_numpy())) == set(map(tuple, want.to_numpy()))
    results, _, _ = set_checks(pseudonymize_table(_table()), top_n=3, seen=pairs, current=None, bounds=load_bounds())
    got = _by_check(results)
    assert {k: got[k] for k in EXPECTED} == EXPECTED


def test_pairs_from_the_pattern_give_the_checks_of_the_rows(tmp_path, monkeypatch) -> None:
    """Pairs from the run's pattern (distinct, sorted: no sort in the seen check) give the same
    results as the per-row codes (repeats, snapshot order: sorted there) on a table with a seen
    item, an unknown item, a repeated rank and a user without a list."""
    from include.recsys.stages.validate_output import _privacy_seen

    monkeypatch.delenv("RECSYS_PSEUDONYMIZE_USER_IDS", raising=False)
    from_pattern = _privacy_seen(*_run(tmp_path), _coded_snapshot(tmp_path, SEEN.sample(frac=1, random_state=3)))
    for seen in (from_pattern, _pairs(SEEN)):
        results, _, _ = set_checks(_table(), top_n=3, seen=seen, current=None, bounds=load_bounds())
        assert {k: v for k, v in _by_check(results).items() if k in EXPECTED} == EXPECTED


def test_privacy_seen_refuses_a_snapshot_without_maps_or_with_missing_ids(tmp_path) -> None:
    from include.recsys.stages.validate_output import _privacy_seen

    cfg, rc = _run(tmp_path)
    snap = _coded_snapshot(tmp_path, SEEN)
    with pytest.raises(IdRouteError, match="no item id map"):
        _privacy_seen(cfg, rc, {**snap, "items": None})
    df = pd.read_parquet(snap["snapshot"])
    df.loc[3, "item_idx"] = -1  # a missing item id: the input suite fails such a run first
    df.to_parquet(snap["snapshot"])
    with pytest.raises(IdRouteError, match="s.parquet: 1 row.* with a missing user or item id"):
        _privacy_seen(cfg, rc, snap)
    df.loc[3, "item_idx"] = 70  # outside the item map
    df.to_parquet(snap["snapshot"])
    with pytest.raises(IdRouteError, match=r"item_idx outside \[-1, 7\)"):
        _privacy_seen(cfg, rc, snap)
    df.loc[3, "item_idx"] = 0
    df.to_parquet(snap["snapshot"])
    _privacy_seen(cfg, rc, snap)  # the pattern of this snapshot
    IdMap(pd.Index(["a"])).to_frame("user").to_parquet(snap["users"])  # another snapshot's map
    with pytest.raises(IdRouteError, match=r"the id maps beside it \(1 users, 7 items\) do not fit the run's seen pattern"):
        _privacy_seen(cfg, rc, snap)
