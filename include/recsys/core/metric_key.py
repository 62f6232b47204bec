"""``<metric>@<k>`` keys (``ndcg@10``): the one parser, the k a stage uses, the order tables show.

Evaluation reports, the gate spec, the config's ``gate_metric`` and the people-facing tables
all name a ranking metric at a cut-off this way; which metric names exist is the gate spec's
business (:data:`include.recsys.config.gate_spec.METRIC_NAMES`), not this module's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_KEY = re.compile(r"([a-z][a-z_]*)@([1-9][0-9]*)")

#: The order tables list metric families in: ndcg first, the other accuracy metrics, then
#: beyond-accuracy; names not listed come after these.
DISPLAY_ORDER = ("ndcg", "precision", "recall", "map", "mrr", "hit_rate", "coverage", "gini", "novelty", "ild")


def parse_metric(s: str) -> tuple[str, int]:
    """``"ndcg@10"`` -> ``("ndcg", 10)``; a ValueError naming ``s`` for anything else (no
    leading zeros: ``ndcg@010`` would never match the report's ``ndcg@10``)."""
    m = _KEY.fullmatch(s) if isinstance(s, str) else None
    if m is None:
        raise ValueError(f"{s!r} is not '<metric>@<k>' (a lowercase metric name, '@', a positive integer)")
    return m.group(1), int(m.group(2))


def metric_k(metric: str, ks: Sequence[int]) -> int:
    """The k of ``metric`` when it is one of ``ks``, else the smallest of ``ks``: a metric
    without a computed cut-off still gets a curve at one that was computed."""
    try:
        k = parse_metric(metric)[1]
    except ValueError:
        return min(ks)
    return k if k in ks else min(ks)


def metric_key_order(keys: Iterable[str]) -> list[str]:
    """The ``<metric>@<k>`` keys of ``keys`` (counts such as ``n_users_evaluated`` dropped) in
    :data:`DISPLAY_ORDER`, then by k; a malformed key is kept (sorted as k 0), never an error."""

    def rank(key: str) -> tuple[int, int, str]:
        name, _, at = key.partition("@")
        family = DISPLAY_ORDER.index(name) if name in DISPLAY_ORDER else len(DISPLAY_ORDER)
        return (family, int(at) if at.isascii() and at.isdigit() else 0, key)

    return sorted((k for k in keys if "@" in k), key=rank)
