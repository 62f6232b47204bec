"""Unit tests for ``include.recsys.backends.implicit`` (implicit ALS on a tiny checkerboard).

The checkerboard follows implicit's own recommender tests: users with even ids like every
even item, odd users every odd item, and each user's "diagonal" item (item ``u % n_items``,
always of the user's own group) is withheld. Every other user of the group liked it, so ALS
must rank it first for that user, above every item of the other group.

Users outnumber items (40 x 20) so a user/item transposition cannot pass unnoticed.
``regularization=1.0``: with spare factors and almost no penalty ALS can fit the withheld
holes themselves (the -I part of "checkerboard minus diagonal"), which is overfitting, not
what this test is about.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from include.recsys.backends.implicit import train
from include.recsys.config.settings import load_config
from include.recsys.core.ids import encode
from include.recsys.scoring.recommend import recommend

N_USERS, N_ITEMS = 40, 20


def _uid(u: int) -> str:
    return f"u{u:02d}"


def _iid(i: int) -> str:
    return f"i{i:02d}"


def _withheld(u: int) -> int:
    return u % N_ITEMS  # same parity as u, so always an item of the user's own group


def _checkerboard() -> pd.DataFrame:
    rows = [
        (_uid(u), _iid(i), 1.0)
        for u in range(N_USERS)
        for i in range(u % 2, N_ITEMS, 2)
        if i != _withheld(u)
    ]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "weight"])


def _fit(df: pd.DataFrame, cfg, *args, **kw):
    """Train on a frame of string ids: codes into its own sorted maps first (:func:`encode`)."""
    coded, users, items = encode(df)
    return train(coded, cfg, *args, id_maps=(users, items), **kw)


def _cfg(tmp_path, **extra):
    return load_config(
        {"factors": 4, "iterations": 20, "regularization": 1.0, "data_dir": tmp_path, **extra}
    )


@pytest.mark.parametrize("seed", [0, 1, 23])
def test_checkerboard_withheld_item_ranked_first(tmp_path, seed: int) -> None:
    df = _checkerboard()
    bundle, stats = _fit(df, _cfg(tmp_path, seed=seed))
    assert (stats.users, stats.items, stats.nnz) == (N_USERS, N_ITEMS, len(df))
    assert bundle.user_factors.shape == (N_USERS, 4)
    assert bundle.item_factors.shape == (N_ITEMS, 4)
    assert bundle.user_ids.tolist() == [_uid(u) for u in range(N_USERS)]
    assert bundle.item_ids.tolist() == [_iid(i) for i in range(N_ITEMS)]

    # recommend by external ids, in an order different from the bundle's
    users = pd.Index([_uid(u) for u in reversed(range(N_USERS))])
    recs = recommend(bundle, users, df, 5)
    assert recs.from_model.all()
    ids = recs.item_ids(bundle)
    for row, uid in enumerate(users):
        u = int(uid[1:])
        assert ids[row, 0] == _iid(_withheld(u)), (uid, ids[row].tolist())
        # the rest of the top are unseen items, hence all of the other group, clearly lower
        others = {_iid(i) for i in range(1 - u % 2, N_ITEMS, 2)}
        assert set(ids[row, 1:]) <= others
        assert recs.scores[row, 0] - recs.scores[row, 1] > 0.2


def test_training_is_deterministic_for_a_seed(tmp_path) -> None:
    df = _checkerboard()
    a, _ = _fit(df, _cfg(tmp_path, seed=7))
    b, _ = _fit(df, _cfg(tmp_path, seed=7))
    assert np.array_equal(a.user_factors, b.user_factors)
    assert np.array_equal(a.item_factors, b.item_factors)
    c, _ = _fit(df, _cfg(tmp_path, seed=8))
    assert not np.array_equal(a.user_factors, c.user_factors)


def test_training_is_deterministic_single_thread(tmp_path) -> None:
    df = _checkerboard()
    a, _ = _fit(df, _cfg(tmp_path, seed=3, num_threads=1))
    b, _ = _fit(df, _cfg(tmp_path, seed=3, num_threads=1))
    assert np.array_equal(a.user_factors, b.user_factors)
    assert np.array_equal(a.item_factors, b.item_factors)


def test_popularity_counts_distinct_users_and_seen_sums_weights(tmp_path) -> None:
    df = pd.DataFrame(
        {
            "user_id": ["b", "a", "a", "a", "c", "c"],
            "item_id": ["x", "x", "x", "y", "x", "z"],
            "weight": [1.0, 2.0, 3.0, 1.0, 5.0, 1.0],
        }
    )
    bundle, stats = _fit(df, _cfg(tmp_path, factors=2, iterations=2))
    assert bundle.user_ids.tolist() == ["a", "b", "c"]
    assert bundle.item_ids.tolist() == ["x", "y", "z"]
    assert bundle.item_popularity.tolist() == [3, 1, 1]  # x: a (twice), b, c -> 3 users
    assert stats.nnz == 5
    assert bundle.seen.toarray().tolist() == [[5.0, 1.0, 0.0], [1.0, 0.0, 0.0], [5.0, 0.0, 1.0]]
    assert bundle.user_factors.dtype == bundle.item_factors.dtype == np.float32
    assert bundle.user_factors.flags.c_contiguous and bundle.item_factors.flags.c_contiguous


# --- correctness checks (issue 10) -----------------------------------------------------------


def _random_events(n_users: int = 300, n_items: int = 120, n: int = 6000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "user_id": [f"u{u:04d}" for u in rng.integers(0, n_users, n)],
            "item_id": [f"i{i:04d}" for i in (rng.zipf(1.3, n) % n_items)],
            "event_ts": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 30 * 86400, n), unit="s"),
            "weight": rng.choice(np.array([1.0, 2.0, 5.0], np.float32), n),
        }
    )


@pytest.mark.parametrize("extra", [{}, {"weighting": "bm25", "recency_half_life_days": 7.0}, {"use_cg": False}])
def test_same_seed_same_factors_and_top_n_with_threads(tmp_path, extra) -> None:
    """implicit's CPU ALS solves rows independently: 2 threads are as deterministic as 1."""
    df = _random_events()
    cfg = _cfg(tmp_path, seed=11, num_threads=2, factors=8, iterations=5, **extra)
    a, _ = _fit(df, cfg)
    b, _ = _fit(df, cfg)
    one, _ = _fit(df, cfg.with_overrides({"num_threads": 1}))
    for other in (b, one):
        assert np.array_equal(a.user_factors, other.user_factors)
        assert np.array_equal(a.item_factors, other.item_factors)
    users = pd.Index(sorted(df["user_id"].unique()))
    ra, rb = recommend(a, users, df, 10), recommend(b, users, df, 10)
    assert np.array_equal(ra.items, rb.items) and np.array_equal(ra.scores, rb.scores)


def test_duplicate_pairs_reach_training_once_whatever_the_weighting(tmp_path) -> None:
    df = _random_events(n=3000)
    pairs = df[["user_id", "item_id"]].drop_duplicates()
    assert len(pairs) < len(df)  # the fixture has repeated pairs
    for extra in ({}, {"weighting": "tfidf"}, {"recency_half_life_days": 3.0}):
        _, stats = _fit(df, _cfg(tmp_path, factors=4, iterations=2, **extra))
        assert stats.nnz == len(pairs), extra


def test_no_event_at_or_after_the_cutoff_reaches_training(tmp_path) -> None:
    from include.recsys.errors import TrainingError

    df = _random_events()
    cutoff = df["event_ts"].max()  # the newest event is AT the cutoff: refused
    with pytest.raises(TrainingError, match="at or after the cutoff"):
        _fit(df, _cfg(tmp_path, factors=4, iterations=2), cutoff=cutoff)
    _fit(df.loc[df["event_ts"] < cutoff], _cfg(tmp_path, factors=4, iterations=2), cutoff=cutoff)


def test_non_finite_factors_fail_clearly(tmp_path, monkeypatch) -> None:
    from include.recsys import errors
    from include.recsys.backends.implicit import fit_als

    real = fit_als

    def poisoned(ui, cfg, **kw):
        model = real(ui, cfg, **kw)
        model.item_factors[0, 0] = np.nan
        return model

    monkeypatch.setattr("include.recsys.backends.implicit.fit_als", poisoned)
    with pytest.raises(errors.TrainingError, match="non-finite item factor"):
        _fit(_checkerboard(), _cfg(tmp_path))


def test_bundle_cannot_be_scored_with_another_runs_id_maps(tmp_path) -> None:
    import dataclasses
    import shutil

    from include.recsys.errors import IdMapMismatch
    from include.recsys.scoring.bundle import ModelBundle

    df = _checkerboard()
    a, _ = _fit(df, _cfg(tmp_path))
    # another run: same shapes, other ids (e.g. users renumbered)
    other = df.assign(user_id=df["user_id"].str.replace("u", "v"))
    b, _ = _fit(other, _cfg(tmp_path))
    assert a.id_maps_hash != b.id_maps_hash
    # in memory: factors of run a with the id maps of run b
    mixed = dataclasses.replace(a, user_ids=b.user_ids)
    with pytest.raises(IdMapMismatch, match="id maps"):
        recommend(mixed, b.user_ids[:3], other, 5)
    # on disk: run b's users.parquet copied next to run a's factors
    da, db = a.save(tmp_path / "a"), b.save(tmp_path / "b")
    assert ModelBundle.load(da).id_maps_hash == a.id_maps_hash
    shutil.copy(db / "users.parquet", da / "users.parquet")
    with pytest.raises(IdMapMismatch, match="another run"):
        ModelBundle.load(da)


def test_split_is_time_based_and_reproducible() -> None:
    from include.recsys.data.split import time_split

    df = _random_events()
    cutoff = pd.Timestamp("2026-01-24", tz="UTC")
    tr, ho, stats = time_split(df, cutoff)
    assert (tr["event_ts"] < cutoff).all()
    later = df.loc[df["event_ts"] >= cutoff]
    assert len(tr) + stats.holdout_rows == len(df) and stats.holdout_rows == len(later)
    assert (ho["event_ts"] >= cutoff).all()
    seen = pd.MultiIndex.from_frame(tr[["user_id", "item_id"]])
    assert not pd.MultiIndex.from_frame(ho[["user_id", "item_id"]]).isin(seen).any()
    # shuffled input, same split
    tr2, ho2, _ = time_split(df.sample(frac=1.0, random_state=3), cutoff)
    key = ["user_id", "item_id", "event_ts"]
    pd.testing.assert_frame_equal(
        tr.sort_values(key, ignore_index=True), tr2.sort_values(key, ignore_index=True)
    )
    pd.testing.assert_frame_equal(
        ho.sort_values(key, ignore_index=True)[["user_id", "item_id"]],
        ho2.sort_values(key, ignore_index=True)[["user_id", "item_id"]],
    )
