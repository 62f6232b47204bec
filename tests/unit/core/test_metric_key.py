"""``<metric>@<k>`` keys: parsing, the k a stage uses, the order tables show them in."""

from __future__ import annotations

import re

import pytest

from include.recsys.core.metric_key import metric_k, metric_key_order, parse_metric


def test_parse_metric() -> None:
    assert parse_metric("ndcg@10") == ("ndcg", 10)
    assert parse_metric("hit_rate@1") == ("hit_rate", 1)


@pytest.mark.parametrize("bad", ["ndcg", "ndcg@", "@10", "ndcg@0", "ndcg@010", "ndcg@x", "NDCG@10",
                                 "ndcg@10@20", "ndcg@10\n", "ndcg@-1", "ndcg@²", "", None, 10])
def test_parse_metric_refuses_and_names_the_value(bad) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        parse_metric(bad)


def test_metric_k() -> None:
    assert metric_k("ndcg@20", [10, 20]) == 20
    assert metric_k("ndcg@5", [10, 20]) == 10  # not computed: the smallest k
    assert metric_k("ndcg", [20, 10]) == 10


def test_metric_key_order() -> None:
    keys = ["precision@10", "n_users_evaluated", "ndcg@20", "ndcg@5", "zeta@1", "ild@10", "ndcg@x", "recall@10"]
    assert metric_key_order(keys) == ["ndcg@x", "ndcg@5", "ndcg@20", "precision@10", "recall@10", "ild@10", "zeta@1"]
    assert metric_key_order(["ndcg@²"]) == ["ndcg@²"]
