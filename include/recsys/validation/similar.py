"""The similar-items table's contract (``item_id, rank, similar_item_id, score``): checked before
publish serves it, with the same report and error as the recommendations table's checks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.recsys.errors import OutputValidationError
from include.recsys.validation.output import _SAMPLE, _SCORE_TOL, _sample
from include.recsys.validation.report import (
    ERROR,
    ValidationReport,
    check_result,
    finish,
)


def validate_similar_table(
    table: pd.DataFrame,
    *,
    top_k: int,
    catalog: pd.Index,
    allowed: np.ndarray | None = None,
    fallback: pd.DataFrame | None = None,
    run_name: str = "similar_items",
    report_path: str | Path | None = None,
) -> ValidationReport:
    """The similar-items table's contract (``item_id, rank, similar_item_id, score``), checked
    before it is published; raises :class:`OutputValidationError` on any failure.

    Every catalog item has ``min(top_k, allowed items other than itself)`` rows, ranks 1..K,
    no item lists itself or an item twice, scores are cosines (finite, in [-1, 1]) that never
    rise with rank, similar items are catalog items and none is excluded by the rules
    (``allowed``: bool per ``catalog`` item), nor in ``fallback``.
    """
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    missing = [c for c in ("item_id", "rank", "similar_item_id", "score") if c not in table.columns]
    results.append(check_result("similar_columns", severity=ERROR, success=not missing, observed=missing,
                                bounds={"missing": []}, message=f"similar-items table lacks column(s) {missing}"))
    if not missing:
        results += _similar_checks(table, top_k, pd.Index(catalog), allowed, fallback)
    report = ValidationReport(
        success=all(r["success"] for r in results), n_rows=len(table), results=results,
        suite_name="similar_items_table", duration_s=time.perf_counter() - started,
        notes=[f"{run_name}: {len(table):,} rows, top {top_k}"],
    )
    return finish(report, report_path=report_path, error_cls=OutputValidationError)


def _similar_checks(
    table: pd.DataFrame, top_k: int, catalog: pd.Index, allowed: np.ndarray | None, fallback: pd.DataFrame | None
) -> list[dict[str, Any]]:
    t = table.sort_values(["item_id", "rank"], kind="stable", ignore_index=True)
    allowed = np.ones(len(catalog), bool) if allowed is None else np.asarray(allowed, dtype=bool)
    src = catalog.get_indexer(pd.Index(t["item_id"]))
    dst = catalog.get_indexer(pd.Index(t["similar_item_id"]))
    out: list[dict[str, Any]] = []

    def add(name: str, bad: np.ndarray, what: str, sample: Any) -> None:
        out.append(check_result(name, severity=ERROR, success=not bad.any(), observed=int(bad.sum()),
                                bounds={"max": 0}, message=f"{int(bad.sum()):,} {what}, e.g. {_sample(sample)}"))

    outside = (src < 0) | (dst < 0)
    add("similar_in_catalog", outside, "row(s) name items outside the model's catalog",
        t.loc[outside, "similar_item_id"].unique())
    add("similar_not_self", t["item_id"].to_numpy() == t["similar_item_id"].to_numpy(),
        "row(s) list an item as similar to itself", t.loc[t["item_id"] == t["similar_item_id"], "item_id"].unique())
    dup = t.duplicated(["item_id", "similar_item_id"]).to_numpy()
    add("similar_distinct", dup, "repeated (item, similar item) row(s)", t.loc[dup, "item_id"].unique())
    excl = (dst >= 0) & ~allowed[np.maximum(dst, 0)]
    fb_bad = np.zeros(0, bool)
    if fallback is not None:
        fdst = catalog.get_indexer(pd.Index(fallback["similar_item_id"]))
        fb_bad = (fdst < 0) | ~allowed[np.maximum(fdst, 0)]
    add("similar_no_excluded_items", np.r_[excl, fb_bad],
        "row(s) (table and fallback) list items the business rules exclude or the catalog lacks",
        list(t.loc[excl, "similar_item_id"].unique()))
    # list lengths: min(K, allowed items other than the item itself) for every catalog item
    count = pd.Series(src[src >= 0]).value_counts().reindex(range(len(catalog)), fill_value=0).to_numpy()
    expected = np.minimum(top_k, int(allowed.sum()) - allowed.astype(int))
    wrong = count != expected
    add("similar_items_per_item", wrong, f"item(s) without exactly min({top_k}, allowed others) similar items",
        [f"{catalog[i]} has {count[i]} (expected {expected[i]})" for i in np.flatnonzero(wrong)[:_SAMPLE]])
    starts = np.r_[0, np.cumsum(np.bincount(pd.factorize(t["item_id"])[0]))[:-1]] if len(t) else np.zeros(0, int)
    per = np.bincount(pd.factorize(t["item_id"])[0]) if len(t) else np.zeros(0, int)
    position = np.arange(len(t)) - np.repeat(starts, per) + 1
    bad_rank = t["rank"].to_numpy() != position
    add("similar_ranks_contiguous", bad_rank, "row(s) whose rank is not its position 1..K",
        t.loc[bad_rank, "item_id"].unique())
    score = t["score"].to_numpy(np.float64)
    same = np.r_[False, t["item_id"].to_numpy()[1:] == t["item_id"].to_numpy()[:-1]]
    bad_score = ~np.isfinite(score) | (np.abs(score) > 1 + 1e-4) | (
        same & (np.r_[np.inf, np.diff(score)] > _SCORE_TOL))
    add("similar_scores", bad_score, "row(s) with a score outside [-1, 1] or rising with rank",
        t.loc[bad_score, "item_id"].unique())
    return out


