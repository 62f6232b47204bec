"""Business rules (``include.recsys.scoring.rules``) applied inside scoring, the fallback and the
output validation; malformed rules files fail clearly or fall back to the last good copy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from include.recsys.core.ids import encode
from include.recsys.errors import RulesError
from include.recsys.scoring.bundle import ModelBundle
from include.recsys.scoring.recommend import recommend, topn_dense
from include.recsys.scoring.rules import load_for_run, read_resolved, save_resolved
from include.recsys.tables.current import history, point_current, read_current
from include.recsys.tables.versions import write_version
from include.recsys.validation.history import load_bounds
from include.recsys.validation.output import SeenPairs, set_checks

AS_OF = "2026-12-01T00:00:00+00:00"


def _load(path, as_of, surface: str = ""):
    """The run's loader with the default policy (fail on a bad file); its last good copy goes
    beside the rules file."""
    return load_for_run(path, as_of, keep_dir=Path(path).parent / "keep", surface=surface)


def _bundle(n_users: int = 300, n_items: int = 200, f: int = 8, seed: int = 0) -> ModelBundle:
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items)) < 0.05
    seen = sp.csr_matrix(dense.astype(np.float32))
    return ModelBundle(
        user_ids=pd.Index([f"u{i}" for i in range(n_users)]),
        item_ids=pd.Index([f"i{i}" for i in range(n_items)]),
        user_factors=rng.standard_normal((n_users, f)).astype(np.float32),
        item_factors=rng.standard_normal((n_items, f)).astype(np.float32),
        item_popularity=dense.sum(axis=0).astype(np.int64),
        seen=seen,
    )


def _rules_frame(items: pd.Index, share: float = 0.1, seed: int = 1) -> tuple[pd.DataFrame, set[str]]:
    """Rules excluding ``share`` of the items, by three different rules."""
    rng = np.random.default_rng(seed)
    out = rng.choice(len(items), int(len(items) * share), replace=False)
    thirds = np.array_split(out, 3)
    df = pd.DataFrame({"item_id": np.asarray(items), "available": True,
                       "available_from": pd.NaT, "available_until": pd.NaT, "category": "c"})
    df["available_from"] = pd.to_datetime(df["available_from"], utc=True)
    df["available_until"] = pd.to_datetime(df["available_until"], utc=True)
    df.loc[thirds[0], "available"] = False
    df.loc[thirds[1], "available_from"] = pd.Timestamp("2026-12-05", tz="UTC")  # not yet
    df.loc[thirds[2], "available_until"] = pd.Timestamp("2026-12-01", tz="UTC")  # ended at as_of
    df.loc[0, "available_until"] = pd.Timestamp("2026-12-02", tz="UTC")  # still available
    excluded = {items[i] for i in out} - ({items[0]} if 0 not in out else set())
    return df, excluded


def _seen_frame(b: ModelBundle, users: pd.Index) -> pd.DataFrame:
    coo = b.seen.tocoo()
    return pd.DataFrame({"user_id": b.user_ids[coo.row], "item_id": b.item_ids[coo.col]}).loc[
        lambda d: d["user_id"].isin(users)]


def test_rules_excluding_ten_percent_fill_every_list(tmp_path) -> None:
    b = _bundle()
    df, excluded = _rules_frame(b.item_ids)
    df.to_parquet(tmp_path / "rules.parquet")
    rules = _load(tmp_path / "rules.parquet", AS_OF)
    assert set(rules.excluded) == excluded and len(excluded) >= 0.09 * len(b.item_ids)
    allowed = rules.allowed_mask(b.item_ids)
    users = pd.Index(list(b.user_ids[:250]) + [f"new{i}" for i in range(20)])  # 20 fallback users
    seen = _seen_frame(b, users)
    n = 30
    recs = recommend(b, users, seen, n, allowed=allowed)
    table = recs.to_frame(b)
    assert not table["item_id"].isin(excluded).any()
    assert (table.groupby("user_id").size() == n).all() and table["user_id"].nunique() == len(users)
    assert set(table.loc[table["source"] == "fallback", "user_id"]) == {f"new{i}" for i in range(20)}
    # the model lists are the unruled ranking with the excluded items skipped
    full = recommend(b, users[:250], seen, len(b.item_ids)).to_frame(b)
    ref = full.loc[~full["item_id"].isin(excluded)].groupby("user_id").head(n)
    got = table.loc[table["source"] == "model"]
    assert got["item_id"].tolist() == ref["item_id"].tolist()
    # the fallback list file obeys too
    fb = b.fallback_list(n, allowed=allowed)
    assert len(fb) == n and not fb["item_id"].isin(excluded).any()
    # output validation: passes, and counts lists against the allowed catalog
    cat = pd.DataFrame({"user_id": "zz", "item_id": b.item_ids})  # every item in the catalog
    coded, users, items = encode(pd.concat([seen, cat], ignore_index=True))
    snap = SeenPairs.from_codes(users.ids, items.ids, coded["user_idx"].to_numpy(), coded["item_idx"].to_numpy())
    res, _, _ = set_checks(table, top_n=n, seen=snap, current=None, bounds=load_bounds(),
                           excluded=rules.excluded, fallback=fb)
    by = {r["check"]: r for r in res}
    assert by["no_excluded_items"]["success"] and by["items_per_user"]["success"]
    # ... and fails on one excluded item in a list or in the fallback
    bad = table.copy()
    bad.loc[0, "item_id"] = sorted(excluded)[0]
    res, _, _ = set_checks(bad, top_n=n, seen=snap, current=None, bounds=load_bounds(),
                           excluded=rules.excluded, fallback=fb)
    assert not {r["check"]: r for r in res}["no_excluded_items"]["success"]
    fb_bad = fb.copy()
    fb_bad.loc[3, "item_id"] = sorted(excluded)[1]
    res, _, _ = set_checks(table, top_n=n, seen=snap, current=None, bounds=load_bounds(),
                           excluded=rules.excluded, fallback=fb_bad)
    msg = {r["check"]: r for r in res}["no_excluded_items"]
    assert not msg["success"] and "1 fallback row" in msg["message"]


def test_lists_shorter_only_where_the_allowed_catalog_is_short() -> None:
    rng = np.random.default_rng(3)
    uf = rng.standard_normal((40, 4)).astype(np.float32)
    vf = rng.standard_normal((12, 4)).astype(np.float32)
    seen = sp.csr_matrix((rng.random((40, 12)) < 0.2).astype(np.float32))
    allowed = np.ones(12, bool)
    allowed[[1, 5, 7, 8]] = False
    items, scores = topn_dense(uf, vf, seen, 10, allowed=allowed, tile_items=3)
    dense = seen.toarray() != 0
    for u in range(40):
        cand = np.flatnonzero(allowed & ~dense[u])
        s = uf[u].astype(np.float64) @ vf[cand].astype(np.float64).T
        ref = cand[np.lexsort((cand, -s))][:10]
        assert items[u, : len(ref)].tolist() == ref.tolist()
        assert (items[u, len(ref):] == -1).all()
    nothing = topn_dense(uf, vf, seen, 5, allowed=np.zeros(12, bool))[0]
    assert (nothing == -1).all()


def test_surfaces_and_csv_booleans(tmp_path) -> None:
    path = tmp_path / "rules.csv"
    path.write_text("item_id,available,allow_surfaces,deny_surfaces,category\n"
                    "a,yes,,email,x\nb,1,home|email,,x\nc,TRUE,home,,y\nd,no,,,y\n")
    assert set(_load(path, AS_OF).excluded) == {"d"}
    assert set(_load(path, AS_OF, surface="email").excluded) == {"a", "c", "d"}
    home = _load(path, AS_OF, surface="home")
    assert set(home.excluded) == {"d"} and home.by_category == {"y": 1}
    assert home.summary(pd.Index(list("abcdz")))["excluded_in_catalog"] == 1


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "does not exist"),
        ("item_id,available\n", "is empty"),
        ("item_id,in_stock\na,1\n", "lacks column(s) ['available']"),
        ("item_id,available\na,1\nb,maybe\n", "column available, row 1: 'maybe' is not a boolean"),
        ("item_id,available\na,1\na,0\n", "column item_id, row 1: item 'a' is listed twice"),
        ("item_id,available,available_from\na,1,2026-01-01\nb,1,soon\n", "column available_from, row 1"),
        ("item_id,available\n,1\n", "column item_id, row 0: empty item id"),
    ],
)
def test_malformed_rules_name_file_column_row(tmp_path, content, expected) -> None:
    path = tmp_path / "rules.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(RulesError) as err:
        _load(path, AS_OF)
    assert expected in str(err.value) and str(path) in str(err.value)


def test_corrupt_parquet_is_a_rules_error(tmp_path) -> None:
    path = tmp_path / "rules.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(RulesError, match="cannot be read as Parquet"):
        _load(path, AS_OF)


def test_keep_previous_uses_the_last_good_copy(tmp_path) -> None:
    path, keep = tmp_path / "rules.csv", tmp_path / "data" / "rules"
    with pytest.raises(RulesError, match="no last good copy"):
        load_for_run(path, AS_OF, on_error="keep_previous", keep_dir=keep)
    path.write_text("item_id,available\na,0\nb,1\n")
    good = load_for_run(path, AS_OF, on_error="keep_previous", keep_dir=keep)
    assert good.source == "file" and set(good.excluded) == {"a"}
    path.write_text("item_id,available\na,0\nb,what\n")  # broken tonight
    with pytest.raises(RulesError, match="row 1"):
        load_for_run(path, AS_OF, on_error="fail", keep_dir=keep)
    prev = load_for_run(path, AS_OF, on_error="keep_previous", keep_dir=keep)
    assert prev.source == "previous copy" and set(prev.excluded) == {"a"}
    assert prev.sha256 == good.sha256 and "row 1" in prev.summary()["error"]


def test_resolved_rules_first_writer_wins(tmp_path) -> None:
    path = tmp_path / "rules.csv"
    path.write_text("item_id,available\na,0\nb,1\n")
    first = save_resolved(_load(path, AS_OF), tmp_path / "work")
    path.write_text("item_id,available\na,1\nb,0\n")  # the file changes during the run
    second = save_resolved(_load(path, AS_OF), tmp_path / "work")
    assert set(first.excluded) == set(second.excluded) == {"a"}
    assert read_resolved(tmp_path / "work").sha256 == first.sha256
    assert read_resolved(tmp_path / "nothing") is None


def test_malformed_rules_leave_current_unchanged(tmp_path) -> None:
    """The failing load happens before anything is written: the served version stays."""
    root = tmp_path / "recs"
    table = pd.DataFrame({"user_id": ["u1"], "rank": [1], "item_id": ["a"], "score": [1.0],
                          "source": ["model"], "model_name": ["m"], "model_version": ["1"]})
    fb = pd.DataFrame({"rank": [1], "item_id": ["a"], "score": [1.0]})
    write_version(root, "v1", table, fb, {"data_window": {"end": AS_OF}})
    point_current(root, "v1")
    (tmp_path / "rules.csv").write_text("item_id,available\na,perhaps\n")
    with pytest.raises(RulesError):
        load_for_run(tmp_path / "rules.csv", AS_OF, on_error="fail", keep_dir=tmp_path / "keep")
    assert read_current(root) == "v1" and len(history(root)) == 1
    assert json.loads((root / "version=v1" / "_manifest.json").read_text())["rows"] == 1
