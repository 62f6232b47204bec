"""The serving bundle's seen matrix (pipeline.register): built from the snapshot's integer codes
it equals the one built from the string ids; old snapshots without codes still work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include.recsys.core.ids import IdMap
from include.recsys.core.io import write_parquet
from include.recsys.scoring.bundle import ModelBundle
from include.recsys.scoring.recommend import seen_matrix
from include.recsys.stages.register import _serving_seen


def _snapshot(folder: Path, codes: bool) -> dict[str, str]:
    rng = np.random.default_rng(3)
    n = 400
    df = pd.DataFrame({
        "user_id": [f"u{k}" for k in rng.integers(0, 30, n)],
        "item_id": [f"i{k}" for k in rng.integers(0, 12, n)],  # duplicate pairs included
        "weight": np.ones(n, np.float32),
    })
    users, u = IdMap.factorize(df["user_id"])
    items, i = IdMap.factorize(df["item_id"])
    if codes:
        df["user_idx"], df["item_idx"] = u.astype(np.int32), i.astype(np.int32)
    snap = {
        "snapshot": str(write_parquet(df, folder / "interactions.parquet")),
        "users": str(write_parquet(users.to_frame("user"), folder / "users.parquet")),
        "items": str(write_parquet(items.to_frame("item"), folder / "items.parquet")),
    }
    return snap


def _bundle() -> ModelBundle:
    # the model knows some of the snapshot's users and items, and one id the snapshot lacks
    users = pd.Index(sorted([f"u{k}" for k in range(0, 30, 2)] + ["zz"]))
    items = pd.Index(sorted([f"i{k}" for k in range(0, 12, 3)] + ["i99"]))
    return ModelBundle(
        user_ids=users, item_ids=items,
        user_factors=np.zeros((len(users), 2), np.float32), item_factors=np.zeros((len(items), 2), np.float32),
        item_popularity=np.ones(len(items)),
    )


def test_seen_from_codes_equals_seen_from_strings(tmp_path):
    bundle = _bundle()
    coded = _snapshot(tmp_path / "coded", codes=True)
    plain = _snapshot(tmp_path / "plain", codes=False)
    got = _serving_seen(bundle, Path(coded["snapshot"]), coded)
    assert not isinstance(got, pd.DataFrame)  # the CSR, built from the codes
    old = _serving_seen(bundle, Path(plain["snapshot"]), plain)
    assert isinstance(old, pd.DataFrame)  # no codes: the string pairs
    a = seen_matrix(bundle, bundle.user_ids, got)
    b = seen_matrix(bundle, bundle.user_ids, old)
    assert a.shape == b.shape == (len(bundle.user_ids), len(bundle.item_ids))
    assert a.nnz > 0
    assert np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
    # without the snap dict (old callers) the id maps beside the snapshot are used
    c = _serving_seen(bundle, Path(coded["snapshot"]), None)
    assert (c != a).nnz == 0


def test_seen_codes_outside_the_id_map_are_refused(tmp_path):
    snap = _snapshot(tmp_path, codes=True)
    df = pd.read_parquet(snap["snapshot"])
    df.loc[0, "user_idx"] = 10_000
    write_parquet(df, snap["snapshot"])
    with pytest.raises(ValueError, match="user_idx"):
        _serving_seen(_bundle(), Path(snap["snapshot"]), snap)


def test_pyfunc_seen_rows_equal_the_seen_pairs_route():
    import scipy.sparse as sp

    from include.recsys.tracking.pyfunc import _seen_rows

    bundle = _bundle()
    rng = np.random.default_rng(5)
    dense = (rng.random((len(bundle.user_ids), len(bundle.item_ids))) < 0.4).astype(np.float32)
    bundle.seen = sp.csr_matrix(dense)
    users = pd.Index(["u4", "nobody", "u0", "zz", "u28", "u2"])  # unknown users in between
    got = _seen_rows(bundle, users)
    want = seen_matrix(bundle, users, bundle.seen_pairs(users))
    assert got.shape == want.shape == (len(users), len(bundle.item_ids))
    assert (got != want).nnz == 0 and got.nnz == want.nnz > 0
    assert got[1].nnz == 0
    bundle.seen = None
    assert _seen_rows(bundle, users).nnz == 0
