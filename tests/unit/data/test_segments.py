"""Cold start by segment: unknown users get their segment's popularity list (seen items
filtered), or the global list when the segment is unknown."""

from __future__ import annotations

import numpy as np
import pandas as pd

from include.recsys.backends.implicit import train
from include.recsys.config.settings import load_config
from include.recsys.core.ids import encode
from include.recsys.scoring.bundle import ModelBundle
from include.recsys.scoring.recommend import recommend
from include.recsys.tables.current import point_current
from include.recsys.tables.reader import RecommendationStore
from include.recsys.tables.versions import write_version

# two segments with disjoint tastes: north likes n0..n2, south likes s0..s2 (s0 most popular
# overall because south has more users)
EVENTS = pd.DataFrame(
    [(f"a{u}", f"n{i}") for u in range(3) for i in range(3 - (u == 2))]
    + [(f"b{u}", f"s{i}") for u in range(5) for i in range(3 - (u >= 3))],
    columns=["user_id", "item_id"],
).assign(weight=np.float32(1), event_ts=pd.Timestamp("2026-11-01", tz="UTC"))
SEGMENTS = pd.Series({**{f"a{u}": "north" for u in range(3)}, **{f"b{u}": "south" for u in range(5)}, "new-n": "north"})


def _bundle(tmp_path) -> ModelBundle:
    cfg = load_config({"data_dir": tmp_path, "factors": 2, "iterations": 2})
    coded, users, items = encode(EVENTS)
    bundle, _ = train(coded, cfg, SEGMENTS, id_maps=(users, items))
    return bundle


def test_segment_popularity_counts_distinct_users(tmp_path):
    b = _bundle(tmp_path)
    assert list(b.segment_ids) == ["north", "south"]
    north = dict(zip(b.item_ids, b.segment_popularity[0]))
    assert north["n0"] == 3 and north["n2"] == 2 and north["s0"] == 0
    assert b.fallback_list(2, "north")["item_id"].tolist() == ["n0", "n1"]
    assert b.fallback_list(2)["item_id"].tolist() == ["s0", "s1"]  # global
    assert b.fallback_list(2, "nowhere")["item_id"].tolist() == ["s0", "s1"]


def test_unknown_users_get_their_segment_list_minus_seen(tmp_path):
    b = _bundle(tmp_path)
    users = pd.Index(["new-n", "new-x", "a0"])
    seen = pd.DataFrame({"user_id": ["new-n"], "item_id": ["n0"]})
    recs = recommend(b, users, seen, 2, user_segments=SEGMENTS)
    ids = recs.item_ids(b)
    assert ids[0].tolist() == ["n1", "n2"]  # north list without the seen n0
    assert ids[1].tolist() == ["s0", "s1"]  # no segment: global
    assert recs.from_model.tolist() == [False, False, True]


def test_segments_survive_save_and_load(tmp_path):
    b = _bundle(tmp_path)
    loaded = ModelBundle.load(b.save(tmp_path / "bundle"))
    assert list(loaded.segment_ids) == ["north", "south"]
    np.testing.assert_array_equal(loaded.segment_popularity, b.segment_popularity)


def test_reader_serves_segment_fallback(tmp_path):
    b = _bundle(tmp_path)
    fallback = pd.concat(
        [b.fallback_list(2).assign(segment=""), b.fallback_list(2, "north").assign(segment="north")]
    )
    table = pd.DataFrame({"user_id": ["a0"], "rank": [1], "item_id": ["n0"], "score": [1.0],
                          "source": ["model"], "model_name": ["m"], "model_version": ["1"]})
    root = tmp_path / "recs"
    write_version(root, "v1", table, fallback, {"top_n": 2})
    point_current(root, "v1")
    store = RecommendationStore(root)
    assert store.recommend("ghost", segment="north").items == ["n0", "n1"]
    assert store.recommend("ghost").items == ["s0", "s1"]
    assert store.recommend("ghost", segment="mars").items == ["s0", "s1"]
