"""Unit tests for ``include.recsys.train`` (implicit ALS on a tiny checkerboard).

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

from include.recsys.config import load_config
from include.recsys.recommend import recommend
from include.recsys.train import train

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


def _cfg(tmp_path, **extra):
    return load_config(
        {"factors": 4, "iterations": 20, "regularization": 1.0, "data_dir": tmp_path, **extra}
    )


@pytest.mark.parametrize("seed", [0, 1, 23])
def test_checkerboard_withheld_item_ranked_first(tmp_path, seed: int) -> None:
    df = _checkerboard()
    bundle, stats = train(df, _cfg(tmp_path, seed=seed))
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
    a, _ = train(df, _cfg(tmp_path, seed=7))
    b, _ = train(df, _cfg(tmp_path, seed=7))
    assert np.array_equal(a.user_factors, b.user_factors)
    assert np.array_equal(a.item_factors, b.item_factors)
    c, _ = train(df, _cfg(tmp_path, seed=8))
    assert not np.array_equal(a.user_factors, c.user_factors)


def test_training_is_deterministic_single_thread(tmp_path) -> None:
    df = _checkerboard()
    a, _ = train(df, _cfg(tmp_path, seed=3, num_threads=1))
    b, _ = train(df, _cfg(tmp_path, seed=3, num_threads=1))
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
    bundle, stats = train(df, _cfg(tmp_path, factors=2, iterations=2))
    assert bundle.user_ids.tolist() == ["a", "b", "c"]
    assert bundle.item_ids.tolist() == ["x", "y", "z"]
    assert bundle.item_popularity.tolist() == [3, 1, 1]  # x: a (twice), b, c -> 3 users
    assert stats.nnz == 5
    assert bundle.seen.toarray().tolist() == [[5.0, 1.0, 0.0], [1.0, 0.0, 0.0], [5.0, 0.0, 1.0]]
    assert bundle.user_factors.dtype == bundle.item_factors.dtype == np.float32
    assert bundle.user_factors.flags.c_contiguous and bundle.item_factors.flags.c_contiguous
