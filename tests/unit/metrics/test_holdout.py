"""The evaluate stage's inputs from the split files' integer codes equal the string-id route.

A small synthetic split (cold holdout users, holdout-only items, repeated events, a recent
window, a champion with a different item set) is written twice: with ``user_idx`` /
``item_idx`` into sorted id maps (what ``pipeline.split`` writes) and without them. Both
:func:`holdout_inputs` routes, and the whole ``pipeline.evaluate`` stage (MLflow stubbed),
must give the same inputs, the same report and the same per-user Parquet.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from include.recsys.config.settings import load_config
from include.recsys.core.ids import IdMap
from include.recsys.core.run import RunContext
from include.recsys.metrics.holdout import holdout_inputs
from include.recsys.scoring.bundle import ModelBundle
from include.recsys.scoring.recommend import ranked_filtered
from include.recsys.stages.evaluate import evaluate

CUTOFF = pd.Timestamp("2026-11-14", tz="UTC")


def _events(rng: np.random.Generator, naive: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    users = np.array([f"u{i:03d}" for i in range(60)])
    items = np.array([f"i{i:03d}" for i in range(40)])
    n = 1500
    u = rng.integers(0, 50, n)  # users 50..59 never train: cold
    i = np.minimum(rng.zipf(1.6, n) - 1, 34)  # items 35..39 never train
    ts = CUTOFF - pd.to_timedelta(rng.integers(1, 40 * 86400, n), unit="s")
    # events right on and just outside the recent window's start
    ts = ts.to_series().to_numpy()
    ts[:4] = [CUTOFF - pd.Timedelta(days=7), CUTOFF - pd.Timedelta(days=7, microseconds=1)] * 2
    ts = pd.DatetimeIndex(ts).as_unit("us")
    train = pd.DataFrame({"user_id": users[u], "item_id": items[i], "event_ts": ts})
    if naive:  # an older split without a time zone: read as UTC
        train["event_ts"] = train["event_ts"].dt.tz_localize(None)
    m = 400
    hu = rng.integers(0, 60, m)
    hi = rng.integers(0, 40, m)
    hts = CUTOFF + pd.to_timedelta(rng.integers(0, 7 * 86400, m), unit="s")
    holdout = pd.DataFrame({"user_id": users[hu], "item_id": items[hi], "event_ts": hts})
    holdout = pd.concat([holdout, holdout.iloc[:20]], ignore_index=True)  # repeated events
    return train, holdout


def _bundle(ids_u: pd.Index, ids_i: pd.Index, rng: np.random.Generator, pop: np.ndarray) -> ModelBundle:
    return ModelBundle(
        user_ids=ids_u,
        item_ids=ids_i,
        user_factors=rng.standard_normal((len(ids_u), 4)).astype(np.float32),
        item_factors=rng.standard_normal((len(ids_i), 4)).astype(np.float32),
        item_popularity=pop.astype(np.int64),
    )


@pytest.fixture()
def world(tmp_path: Path, request) -> dict:
    rng = np.random.default_rng(5)
    train, holdout = _events(rng, naive=getattr(request, "param", "utc") == "naive")
    both = pd.concat([train, holdout])
    users = IdMap.from_values(both["user_id"])
    items = IdMap.from_values(both["item_id"])
    coded = tmp_path / "coded"
    plain = tmp_path / "plain"
    coded.mkdir()
    plain.mkdir()
    for name, df in (("train", train), ("holdout", holdout)):
        df.to_parquet(plain / f"{name}.parquet", index=False)
        df.assign(
            user_idx=users.index_of(df["user_id"]).astype(np.int32),
            item_idx=items.index_of(df["item_id"]).astype(np.int32),
        ).to_parquet(coded / f"{name}.parquet", index=False)
    users.to_frame("user").to_parquet(coded / "users.parquet", index=False)
    items.to_frame("item").to_parquet(coded / "items.parquet", index=False)
    cand_users = pd.Index(np.sort(train["user_id"].unique()))
    cand_items = pd.Index(np.sort(train["item_id"].unique()))
    pop = train.drop_duplicates(["user_id", "item_id"]).groupby("item_id").size().reindex(cand_items)
    candidate = _bundle(cand_users, cand_items, rng, pop.to_numpy())
    # the champion knows fewer users, some of the candidate's items and two unknown ones
    champ_items = pd.Index(sorted([*cand_items[::2], "zz1", "zz2"]))
    champion = _bundle(cand_users[:30], champ_items, rng, rng.integers(1, 9, len(champ_items)))
    return {
        "tmp": tmp_path,
        "coded": coded,
        "plain": plain,
        "candidate": candidate,
        "champion": champion,
    }


def _inputs(world: dict, coded: bool, maps: bool = True):
    folder = world["coded"] if coded else world["plain"]
    return holdout_inputs(
        folder / "train.parquet",
        folder / "holdout.parquet",
        world["candidate"],
        recent_days=7,
        cutoff=CUTOFF,
        users_map=world["coded"] / "users.parquet" if maps else None,
        items_map=world["coded"] / "items.parquet" if maps else None,
    )


def _same_csr(a, b) -> None:
    assert a.shape == b.shape
    a, b = a.tocsr(), b.tocsr()
    a.sort_indices()
    b.sort_indices()
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.data, b.data)


@pytest.mark.parametrize("world", ["utc", "naive"], indirect=True)
def test_codes_and_strings_give_the_same_inputs(world: dict) -> None:
    codes, strings = _inputs(world, coded=True), _inputs(world, coded=False)
    assert (codes.source, strings.source) == ("codes", "strings")
    assert codes.users.equals(strings.users)
    assert codes.eval_items.equals(strings.eval_items)
    assert len(codes.eval_items) > len(world["candidate"].item_ids)  # holdout-only items
    np.testing.assert_array_equal(codes.warm, strings.warm)
    assert not codes.warm.all()  # cold holdout users
    _same_csr(codes.relevant, strings.relevant)
    _same_csr(codes.seen, strings.seen)
    np.testing.assert_array_equal(codes.recent, strings.recent)
    assert codes.recent.sum() > 0
    np.testing.assert_array_equal(np.sort(codes.train_counts), np.sort(strings.train_counts))
    np.testing.assert_array_equal(codes.user_counts, strings.user_counts)
    pd.testing.assert_series_equal(codes.first_ts, strings.first_ts, check_names=False)
    assert codes.cutoff == strings.cutoff
    champ = world["champion"]
    _same_csr(codes.seen_for(champ), strings.seen_for(champ))
    # the seen filter drops the same items from the popularity list either way
    order = world["candidate"].popular_order
    np.testing.assert_array_equal(
        ranked_filtered(order, codes.seen, 10), ranked_filtered(order, strings.seen, 10)
    )
    items = np.array([[0, 1, -1], [len(champ.item_ids) - 1, 2, 3]])
    np.testing.assert_array_equal(
        codes.to_eval_space(items, champ.item_ids), strings.to_eval_space(items, champ.item_ids)
    )


def test_falls_back_to_strings_without_codes_or_maps(world: dict) -> None:
    assert _inputs(world, coded=True, maps=False).source == "strings"
    assert _inputs(world, coded=False, maps=True).source == "strings"  # no code columns
    # a missing code (-1) is left to the string route and its semantics
    path = world["coded"] / "holdout.parquet"
    df = pd.read_parquet(path)
    df.loc[0, "item_idx"] = -1
    df.to_parquet(path, index=False)
    assert _inputs(world, coded=True).source == "strings"


def test_evaluate_stage_report_is_the_same_from_codes(world: dict, monkeypatch, caplog) -> None:
    caplog.set_level("INFO", logger="include.recsys.metrics.ranking")
    cfg = load_config({"data_dir": world["tmp"] / "data"})
    champion = world["champion"]
    monkeypatch.setattr("include.recsys.tracking.registry.download_bundle", lambda cfg, alias, dst: ("7", champion))
    monkeypatch.setattr("include.recsys.tracking.runs.log_to_run", lambda *a, **k: None)
    from include.recsys.tracking import lineage

    monkeypatch.setattr(lineage, "log_holdout", lambda *a, **k: None)
    bundle_dir = world["candidate"].save(world["tmp"] / "bundle")
    model = {"bundle": str(bundle_dir), "mlflow_run_id": "none"}
    stats = {"cutoff": CUTOFF.isoformat()}
    outputs = {}
    for label, folder, maps in (
        ("codes", world["coded"], True),
        ("strings", world["plain"], False),
    ):
        parts = {"train": str(folder / "train.parquet"), "holdout": str(folder / "holdout.parquet"), "stats": stats}
        if maps:
            parts.update(users=str(folder / "users.parquet"), items=str(folder / "items.parquet"))
        rc = RunContext(
            "recsys_nightly_retrain", f"manual__{label}", datetime(2026, 11, 20, tzinfo=timezone.utc),
            datetime(2026, 11, 21, tzinfo=timezone.utc),
        )
        caplog.clear()
        out = evaluate(cfg, rc, parts, model)
        assert f"evaluation inputs from {label}" in caplog.text
        report = json.loads(Path(out["report"]).read_text())
        outputs[label] = (report, pq.read_table(report["per_user"]))
    (rep_c, table_c), (rep_s, table_s) = outputs["codes"], outputs["strings"]
    assert rep_c["champion_version"] == "7" and "candidate_vs_champion" in rep_c["paired"]
    for key in set(rep_c) | set(rep_s):
        if key not in ("seconds", "per_user"):
            assert rep_c[key] == rep_s[key], key
    assert table_c.equals(table_s)
    assert table_c.num_rows > 0


def test_ranked_filtered_matches_a_plain_loop() -> None:
    # the pruned ranked_filtered against the definition, on rows with few and many seen items
    import scipy.sparse as sp

    rng = np.random.default_rng(8)
    n_items = 50
    seen = sp.random(40, n_items, density=0.3, random_state=1, format="lil")
    seen[3] = 1.0  # a row that has seen everything
    seen = seen.tocsr()
    for order in (np.arange(n_items), rng.permutation(n_items)):
        for n in (0, 1, 7, 49, 60):
            got = ranked_filtered(order, seen, n)
            for r in range(seen.shape[0]):
                seen_r = set(seen.indices[seen.indptr[r] : seen.indptr[r + 1]].tolist())
                want = [int(i) for i in order if i not in seen_r][:n]
                assert got[r].tolist() == want + [-1] * (n - len(want))
