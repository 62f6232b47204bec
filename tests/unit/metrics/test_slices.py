"""Slices, baselines and the multi-model evaluation of ``include.recsys.metrics.ranking``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from include.recsys.metrics.evaluation import evaluate_models
from include.recsys.metrics.ranking import ranking_metrics
from include.recsys.metrics.slices import (
    head_item_mask,
    heavy_threshold,
    restrict_relevant,
    user_slice_labels,
)
from include.recsys.scoring.baselines import popularity_order
from include.recsys.scoring.recommend import ranked_filtered

CUTOFF = pd.Timestamp("2026-11-14", tz="UTC")


def _csr(rows: Sequence[Sequence[int]], n_items: int) -> sp.csr_matrix:
    indptr = np.cumsum([0] + [len(r) for r in rows])
    indices = np.array([i for r in rows for i in r], dtype=np.int32)
    return sp.csr_matrix(
        (np.ones(indices.size, np.float32), indices, indptr), shape=(len(rows), n_items)
    )


# --- slice labels ----------------------------------------------------------------------
def test_heavy_threshold() -> None:
    # quantile 0.8 of 1..10 (linear) = 8.2 -> 9; users without training events are ignored
    assert heavy_threshold(np.array([0, 0, *range(1, 11)]), 0.8) == 9
    assert heavy_threshold(np.array([5, 5, 5]), 0.8) == 5
    assert heavy_threshold(np.array([0, 0]), 0.8) == 1
    with pytest.raises(ValueError):
        heavy_threshold(np.array([1]), 1.0)


def test_user_slice_labels() -> None:
    first = pd.Series(
        pd.to_datetime(
            [None, "2026-11-10 00:00", "2026-11-07 00:00", "2026-10-01 00:00", "2026-11-06 23:59"],
            utc=True,
        )
    )
    labels = user_slice_labels(
        np.array([0, 2, 9, 12, 1]), first, CUTOFF, heavy_min=9, new_user_days=7
    )
    assert labels["activity"].tolist() == ["cold", "light", "heavy", "heavy", "light"]
    # new: first training event at or after cutoff - 7 days (2026-11-07 00:00); cold = new
    assert labels["user"].tolist() == ["new", "new", "new", "returning", "returning"]
    with pytest.raises(ValueError, match="length"):
        user_slice_labels(np.array([1, 2]), first, CUTOFF, heavy_min=2, new_user_days=7)


def test_head_item_mask_and_ties() -> None:
    pop = np.array([5, 3, 2, 0])  # 10 pairs; cumulative by popularity [5, 8, 10, 10]
    assert head_item_mask(pop, 0.5).tolist() == [True, False, False, False]
    assert head_item_mask(pop, 0.6).tolist() == [True, True, False, False]
    assert head_item_mask(pop, 1.0).tolist() == [True, True, True, False]
    # ties: the lower index goes first; extra columns (holdout-only items, dummy) are tail
    assert head_item_mask(np.array([2, 2, 2, 2]), 0.5, n_items=6).tolist() == [
        True,
        True,
        False,
        False,
        False,
        False,
    ]
    assert not head_item_mask(np.zeros(3), 0.5).any()
    with pytest.raises(ValueError):
        head_item_mask(pop, 0.0)


def test_restrict_relevant() -> None:
    rel = _csr([[0, 2], [1], [3]], 4)
    got = restrict_relevant(rel, np.array([True, False, True, False]))
    assert got.shape == (3, 4)
    assert got.toarray().astype(int).tolist() == [[1, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert rel.nnz == 4  # input untouched


# --- recent popularity order ---------------------------------------------------------------
# (the recent counts themselves come from the split's codes: tests/unit/metrics/test_holdout.py)
def test_recent_popularity_order() -> None:
    recent = np.array([1, 0, 2, 0])  # distinct recent users per item a, b, c, d
    global_pop = np.array([1, 5, 2, 3])
    # recent first (c, a), then the rest by global popularity (b, d)
    order = popularity_order(recent, global_pop)
    assert order.tolist() == [2, 0, 1, 3]
    assert popularity_order(np.array([1, 1, 0])).tolist() == [0, 1, 2]  # ties: lower index
    # the baseline list with the same seen filter as every model
    seen = _csr([[2], []], 4)
    assert ranked_filtered(order, seen, 3).tolist() == [[0, 1, 3], [2, 0, 1]]


# --- evaluate_models ----------------------------------------------------------------------
# 5 holdout users over 6 item columns; user 3 is cold (no training events).
#   u0: rel {0, 4}   cand [0, 1, 2]   pop [1, 0, 2]   light, new
#   u1: rel {1}      cand [1, 3, 4]   pop [0, 2, 3]   heavy, returning
#   u2: rel {5}      cand [2, 0, 1]   pop [0, 1, 2]   heavy, returning
#   u3: rel {0}      cand [0, 1, 2]   pop [0, 1, 2]   cold (the fallback list)
#   u4: rel {3, 4}   cand [-1,-1,-1]  pop [0, 1, 2]   light, returning (candidate: no recs)
# head items: {0, 1}
REL = _csr([[0, 4], [1], [5], [0], [3, 4]], 6)
LISTS = {
    "candidate": np.array([[0, 1, 2], [1, 3, 4], [2, 0, 1], [0, 1, 2], [-1, -1, -1]]),
    "popularity": np.array([[1, 0, 2], [0, 2, 3], [0, 1, 2], [0, 1, 2], [0, 1, 2]]),
}
WARM = np.array([True, True, True, False, True])
LABELS = pd.DataFrame(
    {
        "activity": ["light", "heavy", "heavy", "cold", "light"],
        "user": ["new", "returning", "returning", "new", "returning"],
    }
)
HEAD = np.array([True, True, False, False, False, False])


@pytest.fixture(scope="module")
def ev():
    return evaluate_models(
        LISTS,
        REL,
        [1, 3],
        warm=WARM,
        labels=LABELS,
        head_items=HEAD,
        user_ids=["a", "b", "c", "d", "e"],
        item_popularity=np.array([4, 3, 2, 1, 0, 0]),
        n_train_users=4,
        n_catalog=5,
        n_boot=200,
        seed=1,
    )


def test_headline_is_warm_users_only(ev) -> None:
    for name, top in LISTS.items():
        expected = ranking_metrics(
            top[WARM],
            REL[WARM],
            [1, 3],
            n_catalog=5,
            item_popularity=np.array([4, 3, 2, 1, 0, 0]),
            n_train_users=4,
        ).summary
        assert ev.metrics[name] == pytest.approx(expected, nan_ok=True)
    c = ev.metrics["candidate"]
    assert c["n_users_evaluated"] == 4 and c["n_users_no_recs"] == 1
    # hand-worked: u0 hit at rank 1, u1 at rank 1, u2 miss, u4 no recs
    assert c["hit_rate@1"] == pytest.approx(2 / 4)
    assert c["recall@3"] == pytest.approx((1 / 2 + 1 + 0 + 0) / 4)
    assert ev.curves["candidate"]["k"] == 1  # default: the smallest k


def test_slices(ev) -> None:
    s = ev.slices["candidate"]
    assert s["activity=cold"]["n_users"] == 1
    assert s["activity=cold"]["hit_rate@1"] == 1.0  # u3: fallback [0, ...], relevant {0}
    assert s["activity=light"]["n_users"] == 2  # u0, u4
    assert s["activity=light"]["recall@3"] == pytest.approx((1 / 2 + 0) / 2)
    assert s["activity=heavy"]["n_users"] == 2  # u1, u2
    assert s["activity=heavy"]["mrr@3"] == pytest.approx((1 + 0) / 2)
    # user slices: warm users only (u3 is cold, reported in activity=cold)
    assert s["user=new"]["n_users"] == 1 and s["user=returning"]["n_users"] == 3
    assert s["user=new"]["ndcg@1"] == pytest.approx(1.0)  # u0
    # items=head: relevant sets restricted to items {0, 1} -> u0 {0}, u1 {1}; others drop out
    assert s["items=head"]["n_users"] == 2
    assert s["items=head"]["recall@1"] == pytest.approx((1 + 1) / 2)
    # items=tail: u0 {4}, u2 {5}, u4 {3, 4}; candidate never shows 3, 5 to them, 4 only to u1
    assert s["items=tail"]["n_users"] == 3
    assert s["items=tail"]["hit_rate@3"] == 0.0
    pop = ev.slices["popularity"]
    assert pop["items=head"]["hit_rate@1"] == pytest.approx(0.0)  # u0 gets 1, u1 gets 0
    assert pop["items=head"]["hit_rate@3"] == pytest.approx(0.5)  # u0 finds 0 at rank 2
    # a slice without users carries only its count
    empty = evaluate_models(LISTS, REL, [1], warm=WARM, labels=LABELS.assign(user="returning"))
    assert empty.slices["candidate"]["user=new"] == {"n_users": 0}


def test_paired_and_per_user(ev) -> None:
    assert list(ev.paired) == ["candidate_vs_popularity"]
    ci = ev.paired["candidate_vs_popularity"]["hit_rate@1"]
    # candidate hit@1 on warm users [1, 1, 0, 0], popularity [0, 0, 0, 0]
    assert ci["mean_diff"] == pytest.approx(0.5) and ci["n_users"] == 4 and ci["n_boot"] == 200
    assert 0.0 <= ci["lo"] <= 0.5 <= ci["hi"] <= 1.0
    pu = ev.per_user
    assert len(pu) == 2 * 5  # every evaluated user, warm and cold, for both models
    assert {
        "model",
        "user_id",
        "user_index",
        "in_headline",
        "activity",
        "user",
        "ndcg@3",
        "novelty@3",
    } <= set(pu.columns)
    cold = pu.loc[pu["user_id"] == "d"]
    assert (~cold["in_headline"]).all() and (cold["activity"] == "cold").all()
    assert pu.loc[(pu["model"] == "candidate") & (pu["user_id"] == "e"), "ndcg@3"].item() == 0.0
    assert any("ild" in note for note in ev.notes)


def test_evaluate_models_with_features_and_errors() -> None:
    feats = np.eye(6)
    ev = evaluate_models(LISTS, REL, [3], item_features=feats, n_boot=10)
    assert ev.metrics["candidate"]["ild@3"] == pytest.approx(1.0)  # orthogonal items
    assert ev.notes == [] and "items=head" not in ev.slices["candidate"]
    with pytest.raises(ValueError, match="reference"):
        evaluate_models(LISTS, REL, [3], reference="champion")
    with pytest.raises(ValueError, match="shape"):
        evaluate_models({"candidate": LISTS["candidate"][:2]}, REL, [3])
    with pytest.raises(ValueError, match="warm"):
        evaluate_models(LISTS, REL, [3], warm=WARM[:2])


def test_mlflow_metric_names_are_legal(ev) -> None:
    from mlflow.utils.validation import _validate_metric_name

    from include.recsys.stages.evaluate import _eval_mlflow_metrics

    report = {
        "metrics": ev.metrics,
        "slices": ev.slices,
        "paired": ev.paired,
        "popularity_curve": ev.curves,
        "seconds": ev.seconds,
    }
    names = _eval_mlflow_metrics(report)
    assert "candidate.ndcg@3.activity.heavy" in names
    assert "paired.candidate_vs_popularity.ndcg@3.lo" in names
    assert "candidate.popularity_curve@1.p50" in names
    for name in names:
        _validate_metric_name(name.replace("@", "_at_"))  # what registry.log_to_run logs
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in names.values())
    assert not math.isnan(names["candidate.n_users.activity.cold"])
