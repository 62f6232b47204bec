"""The evaluate stage's inputs from the split files' integer codes.

A small synthetic split (cold holdout users, holdout-only items, repeated events, a recent
window, a champion with a different item set) is written with ``user_idx`` / ``item_idx`` into
sorted id maps (what the split stage writes). :func:`holdout_inputs` must give the inputs
computed here by hand from the string ids, and the whole evaluate stage (MLflow stubbed) the
report and per-user Parquet recorded from the string-id route it replaced
(``expected/holdout_*``). Files without codes or maps are refused.
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
from include.recsys.errors import IdRouteError
from include.recsys.metrics.holdout import holdout_inputs
from include.recsys.scoring.bundle import ModelBundle
from include.recsys.scoring.recommend import ranked_filtered
from include.recsys.stages.evaluate import evaluate

CUTOFF = pd.Timestamp("2026-11-14", tz="UTC")

EXPECTED = Path(__file__).parent / "expected"


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
        "train": train,
        "holdout": holdout,
        "candidate": candidate,
        "champion": champion,
    }


def _inputs(world: dict, maps: bool = True):
    folder = world["coded"]
    return holdout_inputs(
        folder / "train.parquet",
        folder / "holdout.parquet",
        world["candidate"],
        recent_days=7,
        cutoff=CUTOFF,
        users_map=folder / "users.parquet" if maps else None,
        items_map=folder / "items.parquet" if maps else None,
    )


def _dense(pairs: pd.DataFrame, rows: pd.Index, cols: pd.Index, width: int | None = None) -> np.ndarray:
    """Count of each (user_id, item_id) pair in a (rows x cols) array; other ids dropped."""
    out = np.zeros((len(rows), width or len(cols)), np.float32)
    r, c = rows.get_indexer(pairs["user_id"]), cols.get_indexer(pairs["item_id"])
    ok = (r >= 0) & (c >= 0)
    np.add.at(out, (r[ok], c[ok]), 1.0)
    return out


@pytest.mark.parametrize("world", ["utc", "naive"], indirect=True)
def test_inputs_from_codes_are_the_figures_of_the_string_ids(world: dict) -> None:
    got = _inputs(world)
    train, holdout, cand, champ = world["train"], world["holdout"], world["candidate"], world["champion"]
    users = pd.Index(sorted(holdout["user_id"].unique()))
    assert got.users.equals(users)
    np.testing.assert_array_equal(got.warm, users.isin(cand.user_ids))
    assert not got.warm.all()  # cold holdout users
    eval_items = cand.item_ids.append(pd.Index(sorted(set(holdout["item_id"]) - set(cand.item_ids))))
    assert got.eval_items.equals(eval_items)
    assert len(got.eval_items) > len(cand.item_ids)  # holdout-only items
    # relevant: event counts (repeated events counted), one never-relevant dummy column
    np.testing.assert_array_equal(got.relevant.toarray(), _dense(holdout, users, eval_items, len(eval_items) + 1))
    # seen: each holdout user's distinct training pairs (a binary pattern: one entry of 1.0
    # per pair, whatever its event count), in the candidate's and the champion's item space
    for model, seen in ((cand, got.seen), (champ, got.seen_for(champ))):
        assert seen.has_canonical_format
        np.testing.assert_array_equal(seen.toarray(), (_dense(train, users, model.item_ids) > 0).astype(np.float32))
    # recent: distinct users per candidate item in [cutoff - 7 days, cutoff)
    distinct = train[["user_id", "item_id"]].drop_duplicates()
    ts = pd.to_datetime(train["event_ts"], utc=True)
    window = train.loc[((ts >= CUTOFF - pd.Timedelta(days=7)) & (ts < CUTOFF)).to_numpy()]
    recent = window[["user_id", "item_id"]].drop_duplicates()["item_id"].value_counts()
    np.testing.assert_array_equal(got.recent, recent.reindex(cand.item_ids, fill_value=0).to_numpy())
    assert got.recent.sum() > 0
    per_user = distinct.groupby("user_id").size()
    np.testing.assert_array_equal(np.sort(got.train_counts), np.sort(per_user.to_numpy()))
    np.testing.assert_array_equal(got.user_counts, per_user.reindex(users, fill_value=0).to_numpy())
    first = train.groupby("user_id")["event_ts"].min().reindex(users).reset_index(drop=True)
    pd.testing.assert_series_equal(got.first_ts, first, check_names=False)
    assert got.cutoff == CUTOFF
    items = np.array([[0, 1, -1], [len(champ.item_ids) - 1, 2, 3]])
    pos = eval_items.get_indexer(champ.item_ids[np.maximum(items, 0).ravel()]).reshape(items.shape)
    want = np.where(items < 0, -1, np.where(pos < 0, len(eval_items), pos))  # unknown: the dummy column
    np.testing.assert_array_equal(got.to_eval_space(items, champ.item_ids), want)
    assert (want == len(eval_items)).any()


def test_no_codes_or_maps_is_an_id_route_error(world: dict) -> None:
    with pytest.raises(IdRouteError, match="no user id map .*rerun the snapshot stage"):
        _inputs(world, maps=False)
    plain = world["plain"]
    with pytest.raises(IdRouteError, match="has no user_idx/item_idx codes"):
        holdout_inputs(plain / "train.parquet", plain / "holdout.parquet", world["candidate"], recent_days=7,
                       cutoff=CUTOFF, users_map=world["coded"] / "users.parquet",
                       items_map=world["coded"] / "items.parquet")
    path = world["coded"] / "holdout.parquet"
    df = pd.read_parquet(path)
    df.loc[0, "item_idx"] = -1  # a missing id
    df.to_parquet(path, index=False)
    with pytest.raises(IdRouteError, match=r"holdout.parquet: item_idx outside \[0, 40\)"):
        _inputs(world)
    df.loc[0, "item_idx"] = 40  # beyond the map
    df.to_parquet(path, index=False)
    with pytest.raises(IdRouteError, match="item_idx outside"):
        _inputs(world)


def _same(got, want, where: str) -> None:
    """Equal JSON values, floats to rel 1e-9 (the recorded figures came from another process)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), where
        for k in want:
            _same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for k, (g, w) in enumerate(zip(got, want)):
            _same(g, w, f"{where}[{k}]")
    elif isinstance(want, float) and not isinstance(got, bool):
        assert got == pytest.approx(want, rel=1e-9, nan_ok=True), where
    else:
        assert got == want, where


def test_evaluate_stage_report_is_the_recorded_one(world: dict, monkeypatch, caplog) -> None:
    """The stage on the coded split gives the report and per-user table the string-id route
    gave on the same data (recorded before it was deleted)."""
    caplog.set_level("INFO", logger="include.recsys.metrics.holdout")
    cfg = load_config({"data_dir": world["tmp"] / "data"})
    champion = world["champion"]
    monkeypatch.setattr("include.recsys.tracking.registry.download_bundle", lambda cfg, alias, dst: ("7", champion))
    monkeypatch.setattr("include.recsys.tracking.runs.log_to_run", lambda *a, **k: None)
    from include.recsys.tracking import lineage

    monkeypatch.setattr(lineage, "log_holdout", lambda *a, **k: None)
    bundle_dir = world["candidate"].save(world["tmp"] / "bundle")
    model = {"bundle": str(bundle_dir), "mlflow_run_id": "none"}
    folder = world["coded"]
    parts = {"train": str(folder / "train.parquet"), "holdout": str(folder / "holdout.parquet"),
             "stats": {"cutoff": CUTOFF.isoformat()},
             "users": str(folder / "users.parquet"), "items": str(folder / "items.parquet")}
    rc = RunContext(
        "recsys_nightly_retrain", "manual__codes", datetime(2026, 11, 20, tzinfo=timezone.utc),
        datetime(2026, 11, 21, tzinfo=timezone.utc),
    )
    out = evaluate(cfg, rc, parts, model)
    assert "evaluation inputs from the split's codes" in caplog.text
    report = json.loads(Path(out["report"]).read_text())
    expected = json.loads((EXPECTED / "holdout_report.json").read_text())
    assert report["champion_version"] == "7" and "candidate_vs_champion" in report["paired"]
    # the definitions are prose about where things live, not figures
    assert set(report) - {"seconds", "per_user"} == set(expected)
    for key in set(expected) - {"definitions"}:
        _same(report[key], expected[key], key)
    table = pq.read_table(report["per_user"])
    want = pq.read_table(EXPECTED / "holdout_per_user.parquet")
    assert table.num_rows == want.num_rows > 0
    pd.testing.assert_frame_equal(table.to_pandas(), want.to_pandas(), rtol=1e-9)


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
