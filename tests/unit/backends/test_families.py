"""The item-item families (``include.recsys.backends.families``) against their definitions.

EASE is checked against a direct numpy solve of ``B = I - P / diag(P)``, ``P = (XᵀX + λI)⁻¹``;
item-kNN against implicit's own ``recommend`` on the same matrix. Both go through the
pipeline's trainer and scorer (``backends.implicit.train`` / ``scoring.recommend.recommend``),
so what is checked is what the table gets: seen items filtered, the ``allowed`` mask, the
popularity fallback, and the bundle's save/load round trip.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from include.recsys.errors import FamilyTooLarge
from include.recsys.backends.implicit import train
from include.recsys.config.settings import load_config
from include.recsys.core.ids import encode
from include.recsys.scoring.bundle import ModelBundle
from include.recsys.scoring.recommend import recommend

N_USERS, N_ITEMS = 60, 30


def _events(seed: int = 3) -> pd.DataFrame:
    """Random users x items events with float weights (no exact score ties), every item used."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(N_USERS):
        for i in rng.choice(N_ITEMS, size=int(rng.integers(3, 10)), replace=False):
            rows.append((f"u{u:02d}", f"i{i:02d}", float(rng.uniform(0.5, 5.0))))
    for i in range(N_ITEMS):  # every item once more, so the catalog is complete
        rows.append((f"u{i % N_USERS:02d}", f"i{i:02d}", 1.0))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "weight"])


def _fit(df: pd.DataFrame, tmp_path, **extra):
    cfg = load_config({"data_dir": tmp_path, **extra})
    coded, users, items = encode(df)
    bundle, stats = train(coded, cfg, id_maps=(users, items))
    return bundle, stats, cfg


def _ranked(scores: np.ndarray, seen, n: int) -> np.ndarray:
    """Top-n by (score desc, item asc) with seen items left out: the reference order."""
    out = np.full((scores.shape[0], n), -1, np.int32)
    for r in range(scores.shape[0]):
        s = scores[r].astype(np.float64)
        s[seen[r].indices] = -np.inf
        order = np.lexsort((np.arange(len(s)), -s))
        order = order[np.isfinite(s[order])][:n]
        out[r, : len(order)] = order
    return out


def test_ease_equals_direct_numpy_solve(tmp_path):
    lam = 7.5
    bundle, stats, _ = _fit(_events(), tmp_path, model_family="ease", ease_lambda=lam)
    assert bundle.kind == "ease" and stats.items == N_ITEMS
    x = bundle.user_items.toarray().astype(np.float64)
    p = np.linalg.inv(x.T @ x + lam * np.eye(N_ITEMS))
    b = np.eye(N_ITEMS) - p / np.diag(p)[None, :]
    np.testing.assert_allclose(bundle.item_item, b, rtol=1e-4, atol=1e-6)
    assert np.all(np.diag(bundle.item_item) == 0)
    # the scorer ranks by X @ B with seen filtered, exactly as the reference does
    recs = recommend(bundle, bundle.user_ids, bundle.seen, 8)
    np.testing.assert_array_equal(recs.items, _ranked(x @ b, bundle.seen, 8))
    assert recs.from_model.all()


@pytest.mark.filterwarnings("ignore::implicit.utils.ParameterWarning")  # implicit's own COO hand-over
@pytest.mark.parametrize("kind", ["bm25", "cosine", "tfidf"])
def test_item_knn_equals_implicit_recommend(tmp_path, kind):
    from implicit.nearest_neighbours import BM25Recommender, CosineRecommender, TFIDFRecommender

    k = 6
    bundle, _, _ = _fit(_events(), tmp_path, model_family="item_knn", knn_kind=kind, knn_k=k)
    ui = bundle.user_items.tocsr()
    ref = {"bm25": BM25Recommender(K=k, K1=1.2, B=0.75), "cosine": CosineRecommender(K=k),
           "tfidf": TFIDFRecommender(K=k)}[kind]
    ref.fit(ui, show_progress=False)
    n = 10
    recs = recommend(bundle, bundle.user_ids, bundle.seen, n)
    for u in range(N_USERS):
        ids, scores = ref.recommend(u, ui[u], N=n, filter_already_liked_items=True)
        keep = scores > 0  # implicit lists only items with evidence (a stored similarity)
        ids, scores = ids[keep], scores[keep]
        np.testing.assert_array_equal(recs.items[u, : len(ids)], ids, err_msg=f"user {u}")
        np.testing.assert_allclose(recs.scores[u, : len(ids)], scores, rtol=1e-5)
        # the rest of the list: the most popular unseen items, score 0, never -1 while any is left
        tail = recs.items[u, len(ids):]
        assert (tail >= 0).all() and (recs.scores[u, len(ids):] == 0).all()
        assert not set(tail) & set(ids)


@pytest.mark.parametrize("family", ["ease", "item_knn", "als"])
def test_seen_and_allowed_never_recommended(tmp_path, family):
    bundle, _, _ = _fit(_events(), tmp_path, model_family=family, factors=4, iterations=3)
    allowed = np.ones(N_ITEMS, bool)
    allowed[::3] = False
    recs = recommend(bundle, bundle.user_ids, bundle.seen, 12, allowed=allowed)
    for u in range(N_USERS):
        got = recs.items[u][recs.items[u] >= 0]
        assert not set(got) & set(bundle.seen[u].indices), f"user {u} got a seen item"
        assert allowed[got].all()
        assert len(got) == len(set(got))
        assert len(got) == min(12, int(allowed.sum()) - len(set(bundle.seen[u].indices) & set(np.flatnonzero(allowed))))


@pytest.mark.parametrize("family", ["ease", "item_knn"])
def test_unknown_users_get_the_popularity_fallback(tmp_path, family):
    bundle, _, _ = _fit(_events(), tmp_path, model_family=family)
    users = pd.Index(["u00", "nobody"])
    seen = pd.DataFrame({"user_id": ["nobody"], "item_id": [bundle.item_ids[bundle.popular_order[0]]]})
    recs = recommend(bundle, users, seen, 5)
    assert recs.from_model.tolist() == [True, False]
    np.testing.assert_array_equal(recs.items[1], bundle.popular_order[1:6])


@pytest.mark.parametrize("family", ["ease", "item_knn"])
def test_bundle_round_trip(tmp_path, family):
    bundle, _, _ = _fit(_events(), tmp_path, model_family=family)
    loaded = ModelBundle.load(bundle.save(tmp_path / "bundle"))
    assert loaded.kind == family
    assert json.loads((tmp_path / "bundle" / "bundle.json").read_text())["kind"] == family
    a = recommend(bundle, bundle.user_ids, bundle.seen, 7)
    b = recommend(loaded, loaded.user_ids, loaded.seen, 7)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_als_bundle_files_unchanged(tmp_path):
    """An ALS bundle's files hold exactly the keys they held before families existed."""
    bundle, _, _ = _fit(_events(), tmp_path, factors=4, iterations=2)
    folder = bundle.save(tmp_path / "als")
    assert set(json.loads((folder / "bundle.json").read_text())) == {"format", "n_users", "n_items", "factors"}
    with np.load(folder / "factors.npz") as z:
        assert set(z.files) == {"user_factors", "item_factors", "id_maps_sha256", "seen_indptr", "seen_indices"}
    assert ModelBundle.load(folder).kind == "als"


def test_ease_refused_above_its_item_budget(tmp_path):
    with pytest.raises(FamilyTooLarge, match="ease_max_items=10"):
        _fit(_events(), tmp_path, model_family="ease", ease_max_items=10)


@pytest.mark.parametrize("family", ["ease", "item_knn"])
def test_similar_items_are_the_item_item_rows_within_the_table_contract(tmp_path, family):
    from include.recsys.scoring.similar import compute_for_bundle, fallback_frame, to_frame
    from include.recsys.validation.similar import validate_similar_table

    bundle, _, _ = _fit(_events(), tmp_path, model_family=family, knn_k=4)
    allowed = np.ones(N_ITEMS, bool)
    allowed[[2, 7]] = False
    k = 6
    items, scores = compute_for_bundle(bundle, k, allowed)
    dense = bundle.item_item.toarray() if hasattr(bundle.item_item, "toarray") else np.asarray(bundle.item_item)
    for i in range(N_ITEMS):
        row = dense[i].astype(np.float64)
        row[i] = -np.inf
        row[~allowed] = -np.inf
        if family == "item_knn":
            row[row == 0] = -np.inf  # no stored neighbour: filled by popularity after the real ones
        order = np.lexsort((np.arange(N_ITEMS), -row))
        order = order[np.isfinite(row[order])][:k]
        np.testing.assert_array_equal(items[i, : len(order)], order, err_msg=f"item {i}")
    report = validate_similar_table(
        to_frame(bundle.item_ids, items, scores), top_k=k, catalog=bundle.item_ids, allowed=allowed,
        fallback=fallback_frame(bundle.item_ids, bundle.item_popularity, k, allowed), run_name="t",
        report_path=tmp_path / "similar.json",
    )
    assert report.success, [r for r in report.results if not r["success"]]


@pytest.mark.parametrize("family", ["ease", "item_knn"])
def test_the_registered_model_serves_the_table_lists(tmp_path, family):
    from include.recsys.tracking.pyfunc import ALSRecommenderModel

    bundle, _, _ = _fit(_events(), tmp_path, model_family=family)
    model = ALSRecommenderModel()
    model.bundle = ModelBundle.load(bundle.save(tmp_path / "b"))
    users = ["u05", "u17", "nobody"]
    got = model.predict(None, pd.DataFrame({"user_id": users}), {"n": 5})
    want = recommend(bundle, pd.Index(users), bundle.seen_pairs(pd.Index(users)), 5).to_frame(bundle)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))
    assert set(got.loc[got["user_id"] == "nobody", "source"]) == {"fallback"}


def test_config_defaults_to_als_and_keeps_item_item_families_on_implicit(tmp_path):
    assert load_config({"data_dir": tmp_path}).model_family == "als"
    with pytest.raises(ValueError, match="implicit backend only"):
        load_config({"data_dir": tmp_path, "model_family": "ease", "backend": "spark"})
    with pytest.raises(ValueError):
        load_config({"data_dir": tmp_path, "model_family": "svd"})
