"""The backend seam (``include.recsys.backends.base``): the stages reach an engine only through
``get(cfg.backend)``; the implicit backend's fit and score are the library's ALS and scorer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pydantic
import pytest

from include.recsys.backends.base import BACKENDS, get
from include.recsys.backends.implicit import train
from include.recsys.config.settings import load_config
from include.recsys.core.ids import encode
from include.recsys.scoring.recommend import recommend, seen_matrix


def _events() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    users = rng.integers(0, 60, 2000)
    items = (users * 7 + rng.integers(0, 9, 2000)) % 40  # each user near a block of items
    return pd.DataFrame({"user_id": [f"u{u}" for u in users], "item_id": [f"i{i}" for i in items],
                         "weight": np.ones(2000, np.float32)}).drop_duplicates(["user_id", "item_id"])


def test_implicit_backend_fits_and_scores_like_the_library() -> None:
    """get("implicit") -> fit gives the same factors as backends.implicit.train, score the same
    top-n as scoring.recommend (seen items filtered), for the config's default backend."""
    cfg = load_config({"factors": 8, "iterations": 4})
    assert cfg.backend == "implicit"
    engine = get(cfg.backend)
    assert engine.name == "implicit" and callable(engine.fit) and callable(engine.score)
    coded, users, items = encode(_events())
    bundle, stats = engine.fit(coded, cfg, id_maps=(users, items))
    direct, _ = train(coded, cfg, id_maps=(users, items))
    np.testing.assert_array_equal(bundle.user_factors, direct.user_factors)
    np.testing.assert_array_equal(bundle.item_factors, direct.item_factors)
    assert stats.users == len(bundle.user_ids) and stats.nnz > 0
    who = pd.Index(bundle.user_ids[:25])
    seen = seen_matrix(bundle, who, coded[["user_id", "item_id"]])
    got = engine.score(bundle, who, seen, 5)
    want = recommend(direct, who, seen, 5)
    np.testing.assert_array_equal(got.items, want.items)
    np.testing.assert_array_equal(got.scores, want.scores)
    for row, user in enumerate(who):  # never a seen item
        seen_items = set(seen[row].indices)
        assert not seen_items & set(got.items[row][got.items[row] >= 0].tolist()), user


def test_unknown_backend_is_refused_by_config_and_registry() -> None:
    """A backend nobody registered -> the config refuses it, and get() names the known ones."""
    assert set(BACKENDS) == {"implicit", "spark"}
    with pytest.raises(pydantic.ValidationError):
        load_config({"backend": "nosuch"})
    with pytest.raises(ValueError, match="implicit"):
        get("nosuch")
