"""The serving bundle's seen matrix (the register stage): built from the snapshot's integer codes
and id maps, it holds every snapshot pair of the bundle's users and items; codes outside the
maps, or a snapshot without codes or maps, are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include.recsys.core.ids import encode
from include.recsys.core.io import write_parquet
from include.recsys.errors import IdRouteError
from include.recsys.scoring.bundle import ModelBundle
from include.recsys.scoring.recommend import seen_matrix
from include.recsys.stages.register import _serving_seen

# snapshot pairs (duplicates included); u9 and i5 are not in the model
PAIRS = [("u0", "i0"), ("u0", "i3"), ("u0", "i0"), ("u2", "i3"), ("u2", "i5"), ("u4", "i1"),
         ("u9", "i0"), ("u4", "i99"), ("u1", "i0")]


def _snapshot(folder: Path, codes: bool = True) -> dict[str, str]:
    df = pd.DataFrame(PAIRS, columns=["user_id", "item_id"]).assign(weight=np.float32(1))
    coded, users, items = encode(df)
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "snapshot": str(write_parquet(coded if codes else df, folder / "interactions.parquet")),
        "users": str(write_parquet(users.to_frame("user"), folder / "users.parquet")),
        "items": str(write_parquet(items.to_frame("item"), folder / "items.parquet")),
    }


def _bundle() -> ModelBundle:
    # the model knows some of the snapshot's users and items, and ids the snapshot lacks
    users = pd.Index(["u0", "u1", "u2", "u4", "zz"])
    items = pd.Index(["i0", "i1", "i3", "i99", "i_new"])
    return ModelBundle(
        user_ids=users, item_ids=items,
        user_factors=np.zeros((len(users), 2), np.float32), item_factors=np.zeros((len(items), 2), np.float32),
        item_popularity=np.ones(len(items)),
    )


def _serving(snap: dict[str, str], bundle: ModelBundle):
    return _serving_seen(bundle, Path(snap["snapshot"]), snap["users"], snap["items"])


def test_serving_seen_holds_every_snapshot_pair_of_the_model(tmp_path):
    bundle = _bundle()
    got = seen_matrix(bundle, bundle.user_ids, _serving(_snapshot(tmp_path), bundle))
    want = np.zeros((5, 5), np.float32)  # rows u0 u1 u2 u4 zz, columns i0 i1 i3 i99 i_new
    for u, i in [("u0", "i0"), ("u0", "i3"), ("u2", "i3"), ("u4", "i1"), ("u4", "i99"), ("u1", "i0")]:
        want[bundle.user_ids.get_loc(u), bundle.item_ids.get_loc(i)] = 1.0
    assert got.shape == (5, 5) and got.has_canonical_format
    np.testing.assert_array_equal(got.toarray() > 0, want > 0)
    np.testing.assert_array_equal(got.indptr, [0, 2, 3, 4, 6, 6])


def test_seen_codes_outside_the_id_map_are_refused(tmp_path):
    snap = _snapshot(tmp_path)
    df = pd.read_parquet(snap["snapshot"])
    df.loc[0, "user_idx"] = 10_000
    write_parquet(df, snap["snapshot"])
    with pytest.raises(IdRouteError, match="user_idx"):
        _serving(snap, _bundle())


def test_a_snapshot_without_codes_or_maps_is_refused(tmp_path):
    snap = _snapshot(tmp_path / "plain", codes=False)
    with pytest.raises(IdRouteError, match="has no user_idx/item_idx codes.*rerun the snapshot stage"):
        _serving(snap, _bundle())
    snap = _snapshot(tmp_path / "coded")
    with pytest.raises(IdRouteError, match="no user id map"):
        _serving({**snap, "users": None}, _bundle())


def test_pyfunc_seen_rows_equal_the_seen_pairs_route():
    import scipy.sparse as sp

    from include.recsys.tracking.pyfunc import _seen_rows

    bundle = _bundle()
    rng = np.random.default_rng(5)
    dense = (rng.random((len(bundle.user_ids), len(bundle.item_ids))) < 0.4).astype(np.float32)
    bundle.seen = sp.csr_matrix(dense)
    users = pd.Index(["u4", "nobody", "u0", "zz", "u2", "u1"])  # unknown users in between
    got = _seen_rows(bundle, users)
    want = seen_matrix(bundle, users, bundle.seen_pairs(users))
    assert got.shape == want.shape == (len(users), len(bundle.item_ids))
    assert (got != want).nnz == 0 and got.nnz == want.nnz > 0
    assert got[1].nnz == 0
    bundle.seen = None
    assert _seen_rows(bundle, users).nnz == 0
