"""Output contract of the top-N table, checked before ``publish`` points CURRENT at it.

Two parts, one report (:class:`~include.recsys.validation.report.ValidationReport`, same format as
the input validation):

* the GX suite ``include/config/gx/recommendations_table.json`` (columns, dtypes, non-null
  ids and scores, ``1 <= rank <= top_n``, finite scores, ``source`` in {model, fallback}),
  run through a Checkpoint with Data Docs;
* set-based checks, vectorised with numpy/pandas (no Python row loops), bounds in
  ``include/config/validation.json`` (``output``):

  - ``items_per_user``: every user has exactly ``N`` rows, where
    ``N = min(top_n, |catalog| - |items the user has seen|)``: fewer than ``top_n`` only
    when the catalog (the snapshot's items) minus the user's seen items is smaller;
  - ``distinct_items``: no item twice in a user's list;
  - ``ranks_contiguous``: ranks are exactly 1..N per user (no gaps, no repeats);
  - ``scores_non_increasing``: score never rises with rank (tolerance 1e-6);
  - ``no_seen_items``: no (user, item) pair of the snapshot interactions;
  - ``no_excluded_items`` (with business rules): no item the rules exclude, in any list or
    in the fallback lists; ``items_per_user`` then counts allowed items only;
  - ``items_in_catalog``: every item is in the snapshot's items;
  - ``user_coverage``: share of the snapshot's users with a list, above a bound;
  - ``jaccard_vs_current``: mean Jaccard of the top-N item sets vs the CURRENT table over
    common users, inside bounds; skipped with a note when nothing is published yet.

Any error-severity failure raises :class:`OutputValidationError` (a
:class:`~include.recsys.errors.DataValidationError`): publish does not run, CURRENT stays.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.recsys.core.ids import compact_codes, translate_codes
from include.recsys.errors import OutputValidationError
from include.recsys.validation.report import (
    ERROR,
    ValidationReport,
    check_result,
    finish,
)
from include.recsys.validation.suite import load_suite_definition, run_suite

SUITE_PATH: Path = Path(__file__).resolve().parents[2] / "config" / "gx" / "recommendations_table.json"

_SCORE_TOL = 1e-6

_SAMPLE = 5


def _sample(values: Any) -> list[Any]:
    return [v.item() if hasattr(v, "item") else v for v in list(values)[:_SAMPLE]]


@dataclass
class SeenPairs:
    """The snapshot's (user, item) pairs as integer codes into its distinct ids.

    What :func:`set_checks` needs from the snapshot without one string per row: ``users`` /
    ``items`` hold each distinct id once (user ids tokenised when pseudonymised; ``items`` is
    the catalog), ``user_codes`` / ``item_codes`` each row's position in them. Build it with
    :meth:`from_codes`, which drops ids no row uses (a map may be wider than the rows).
    """

    users: pd.Index
    items: pd.Index
    user_codes: np.ndarray
    item_codes: np.ndarray

    @classmethod
    def from_codes(
        cls, users: pd.Index, items: pd.Index, user_codes: np.ndarray, item_codes: np.ndarray
    ) -> SeenPairs:
        """Pairs from per-row codes into ``users`` / ``items`` (e.g. the snapshot's
        ``user_idx`` / ``item_idx`` and its id maps); every code must be a valid position."""
        out = []
        for name, ids, codes in (("user", users, user_codes), ("item", items, item_codes)):
            codes = np.asarray(codes)
            if codes.dtype.kind not in "iu":
                raise TypeError(f"SeenPairs: {name} codes must be integers, got {codes.dtype}")
            if len(codes) and (codes.min() < 0 or codes.max() >= len(ids)):
                raise ValueError(f"SeenPairs: {name} codes outside [0, {len(ids)}) of the {name} ids")
            used, codes = compact_codes(codes, len(ids))  # ids without a row are not seen ids (nor catalog items)
            out += [pd.Index(ids if used.all() else ids[used]), codes]
        return cls(users=out[0], items=out[2], user_codes=out[1], item_codes=out[3])

    @classmethod
    def from_csr(cls, users: pd.Index, items: pd.Index, indptr: np.ndarray, indices: np.ndarray) -> SeenPairs:
        """Pairs from a users x items CSR pattern (the run's seen pattern: one entry per distinct
        pair, sorted by user, then item), so the pairs stay distinct and sorted."""
        if len(indptr) != len(users) + 1:
            raise ValueError(f"SeenPairs: a pattern of {len(indptr) - 1} rows for {len(users)} user ids")
        indptr = np.asarray(indptr, dtype=np.int64)
        user_codes = np.repeat(np.arange(len(users), dtype=np.int32), np.diff(indptr))
        return cls.from_codes(users, items, user_codes, np.asarray(indices))


@dataclass
class _Indexed:
    """The table sorted by (user, rank) and coded once: ``u`` each row's user (``users``, in
    order of appearance), ``i`` its item in the catalog (-1 outside), ``keys`` the pair
    ``u * n_cat + i`` (-1 outside), ``count`` rows per user."""

    t: pd.DataFrame
    users: pd.Index
    u: np.ndarray
    t_items: pd.Index
    t_item_codes: np.ndarray
    i: np.ndarray
    outside: np.ndarray
    n_cat: int
    keys: np.ndarray
    count: np.ndarray


def _index_table(table: pd.DataFrame, catalog: pd.Index) -> _Indexed:
    t = table[["user_id", "rank", "item_id", "score"]].dropna(subset=["user_id", "item_id"])
    t = t.sort_values(["user_id", "rank"], kind="stable", ignore_index=True)
    # users in order of appearance and each row's position among them: one hashing pass
    u, users_arr = pd.factorize(t["user_id"])
    users = pd.Index(users_arr)
    u = np.asarray(u, dtype=np.int64)
    # each row's item in the catalog (-1 outside); the table's items in order of appearance
    t_item_codes, t_items = pd.factorize(t["item_id"])
    i = translate_codes(t_item_codes, pd.Index(t_items), catalog)
    n_cat = len(catalog)
    outside = i < 0
    return _Indexed(
        t=t, users=users, u=u, t_items=pd.Index(t_items), t_item_codes=t_item_codes, i=i, outside=outside,
        n_cat=n_cat, keys=np.where(outside, -1, u.astype(np.int64) * n_cat + i),
        count=np.bincount(u, minlength=len(users)),
    )


def set_checks(
    table: pd.DataFrame,
    *,
    top_n: int,
    seen: SeenPairs,
    current: pd.DataFrame | None,
    bounds: dict[str, Any],
    excluded: pd.Index | None = None,
    fallback: pd.DataFrame | None = None,
) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    """The set-based checks; returns (results, notes, figures).

    ``seen``: the snapshot pairs as integer codes (no per-row string is hashed). ``excluded``:
    item ids the business rules exclude (:mod:`include.recsys.scoring.rules`): none may appear
    in the table nor in ``fallback`` (the version's fallback lists), and a user's expected list
    length counts allowed items only.
    """
    if not isinstance(seen, SeenPairs):
        raise TypeError(f"set_checks: seen must be SeenPairs (codes into the snapshot's id maps), got {type(seen).__name__}")
    ix = _index_table(table, seen.items)
    results = [_catalog_check(ix)]
    ex_cat = np.zeros(ix.n_cat, dtype=bool)
    if excluded is not None:
        ex_cat, check = _rule_check(ix, seen.items, pd.Index(excluded), fallback)
        results.append(check)
    # snapshot user -> table user (-1: no list); seen pairs (distinct) of the table's users
    user_lookup = ix.users.get_indexer(seen.users)
    seen_keys, check = _seen_check(ix, user_lookup[seen.user_codes], seen.item_codes)
    results.append(check)
    results += _count_rank_score_checks(ix, seen_keys, ex_cat, top_n)
    covered = user_lookup >= 0  # one entry per distinct snapshot user
    coverage = float(covered.mean()) if len(covered) else 1.0
    results.append(_coverage_check(covered, coverage, bounds["output"]["min_user_coverage"]))
    figures: dict[str, Any] = {"users": len(ix.users), "rows": len(ix.t), "user_coverage": coverage}
    extra, notes = _jaccard_vs_current(ix, current, bounds["output"], top_n, figures)
    return results + extra, notes, figures


def _catalog_check(ix: _Indexed) -> dict[str, Any]:
    outside = ix.outside
    return check_result(
        "items_in_catalog", severity=ERROR, success=not outside.any(), observed=int(outside.sum()),
        bounds={"max": 0},
        message=f"{int(outside.sum()):,} row(s) recommend items outside the catalog "
        f"(snapshot items), e.g. {_sample(pd.unique(ix.t.loc[outside, 'item_id']))}",
    )


def _rule_check(
    ix: _Indexed, catalog: pd.Index, excluded: pd.Index, fallback: pd.DataFrame | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """(excluded per catalog item, the check: no excluded item in any list nor fallback list)."""
    t = ix.t
    ex_rows = _in_excluded(t["item_id"], excluded)
    fb_rows = _in_excluded(fallback["item_id"], excluded) if fallback is not None else np.zeros(0, bool)
    ex_cat = _in_excluded(pd.Series(catalog), excluded)
    bad = list(pd.unique(t.loc[ex_rows, "item_id"]))
    if fallback is not None:
        bad += list(pd.unique(fallback.loc[fb_rows, "item_id"]))
    return ex_cat, check_result(
        "no_excluded_items", severity=ERROR, success=not (ex_rows.any() or fb_rows.any()),
        observed=int(ex_rows.sum() + fb_rows.sum()), bounds={"max": 0},
        message=f"{int(ex_rows.sum()):,} row(s) and {int(fb_rows.sum()):,} fallback row(s) recommend "
        f"items the business rules exclude, e.g. {_sample(bad)}",
    )


def _seen_check(ix: _Indexed, su: np.ndarray, si: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """(the sorted distinct seen keys of the table's users, the no_seen_items check);
    ``su`` / ``si``: each seen pair's table user (-1: no list) and catalog item."""
    ok = su >= 0
    keys, outside, t = ix.keys, ix.outside, ix.t
    # distinct seen pairs by sorting (numpy's vectorised sort of 17M int64 keys: ~0.3-1.3 s; a
    # hash pd.unique + isin over them took ~3.5 s), then a binary search per table row. Pairs
    # from the run's seen pattern (SeenPairs.from_csr) whose table users come in the snapshot's
    # user order are already distinct and sorted: no sort (one pass to make sure).
    seen_keys = su[ok].astype(np.int64) * ix.n_cat + si[ok]
    if len(seen_keys) and not (seen_keys[1:] > seen_keys[:-1]).all():
        seen_keys.sort()
        seen_keys = seen_keys[np.r_[True, seen_keys[1:] != seen_keys[:-1]]]
    if len(seen_keys):
        pos = np.minimum(np.searchsorted(seen_keys, keys), len(seen_keys) - 1)
        is_seen = (seen_keys[pos] == keys) & ~outside
    else:
        is_seen = np.zeros(len(keys), dtype=bool)
    return seen_keys, check_result(
        "no_seen_items", severity=ERROR, success=not is_seen.any(), observed=int(is_seen.sum()),
        bounds={"max": 0},
        message=f"{int(is_seen.sum()):,} row(s) recommend an item the user already interacted with, "
        f"e.g. {list(zip(_sample(t.loc[is_seen, 'user_id']), _sample(t.loc[is_seen, 'item_id'])))}",
    )


def _count_rank_score_checks(
    ix: _Indexed, seen_keys: np.ndarray, ex_cat: np.ndarray, top_n: int
) -> list[dict[str, Any]]:
    """distinct_items, items_per_user, ranks_contiguous, scores_non_increasing."""
    t, u, users, outside, n_cat, count = ix.t, ix.u, ix.users, ix.outside, ix.n_cat, ix.count
    out = []
    # distinct items per user
    dup = pd.Series(ix.keys).duplicated().to_numpy() & ~outside
    if outside.any():  # rows outside the catalog share key -1: compare their ids
        dup |= t.duplicated(["user_id", "item_id"]).to_numpy() & outside
    out.append(check_result(
        "distinct_items", severity=ERROR, success=not dup.any(), observed=int(dup.sum()),
        bounds={"max": 0},
        message=f"{int(dup.sum()):,} repeated (user, item) row(s), e.g. users {_sample(pd.unique(t.loc[dup, 'user_id']))}",
    ))

    # exactly N rows per user, N = min(top_n, catalog - seen)
    # (with rules: allowed catalog items minus the user's allowed seen items)
    allowed_seen = seen_keys[~ex_cat[seen_keys % max(n_cat, 1)]] if n_cat else seen_keys
    seen_per_user = np.bincount(allowed_seen // max(n_cat, 1), minlength=len(users)) if n_cat else np.zeros(len(users), int)
    expected = np.minimum(top_n, np.maximum(n_cat - int(ex_cat.sum()) - seen_per_user, 0))
    wrong = count != expected
    out.append(check_result(
        "items_per_user", severity=ERROR, success=not wrong.any(), observed=int(wrong.sum()),
        bounds={"top_n": top_n, "rule": "min(top_n, |allowed catalog| - |allowed seen|)"},
        message=f"{int(wrong.sum()):,} user(s) do not have exactly min({top_n}, catalog - seen) items, e.g. "
        + ", ".join(f"{users[k]} has {count[k]} (expected {expected[k]})" for k in np.flatnonzero(wrong)[:_SAMPLE]),
    ))

    # ranks 1..N without gaps: after sorting by (user, rank), rank == position within the user
    starts = np.r_[0, np.cumsum(count)[:-1]] if len(count) else np.zeros(0, int)
    position = np.arange(len(t)) - np.repeat(starts, count) + 1
    bad_rank = t["rank"].to_numpy() != position
    bad_users = pd.unique(t.loc[bad_rank, "user_id"])
    out.append(check_result(
        "ranks_contiguous", severity=ERROR, success=len(bad_users) == 0, observed=len(bad_users),
        bounds={"rule": "ranks are 1..N per user"},
        message=f"{len(bad_users):,} user(s) with ranks that are not exactly 1..N (gap or repeat), "
        f"e.g. {_sample(bad_users)}",
    ))

    # scores non-increasing with rank
    score = t["score"].to_numpy(np.float64)
    same_user = np.r_[False, u[1:] == u[:-1]]
    rises = same_user & (np.r_[np.inf, np.diff(score)] > _SCORE_TOL * np.maximum(1.0, np.abs(score)))
    rise_users = pd.unique(t.loc[rises, "user_id"])
    out.append(check_result(
        "scores_non_increasing", severity=ERROR, success=len(rise_users) == 0, observed=len(rise_users),
        bounds={"tolerance": _SCORE_TOL},
        message=f"{len(rise_users):,} user(s) whose score rises with rank, e.g. {_sample(rise_users)}",
    ))
    return out


def _coverage_check(covered: np.ndarray, coverage: float, spec: dict[str, Any]) -> dict[str, Any]:
    """Share of the snapshot's users with a list, above a bound."""
    return check_result(
        "user_coverage", severity=spec.get("severity", ERROR), success=coverage >= spec["min"],
        observed=coverage, bounds={"min": spec["min"]},
        message=f"user coverage {coverage:.4f} ({int(covered.sum()):,} of {len(covered):,} "
        f"snapshot users have a list) < bound {spec['min']}",
    )


def _with_extra(codes: np.ndarray, extra: np.ndarray, known: pd.Index) -> tuple[np.ndarray, int]:
    """Codes into ``extra`` -> codes into ``known`` followed by the ids of ``extra`` it lacks
    (numbered in their order); returns (codes, number of ids)."""
    look = known.get_indexer(pd.Index(extra))
    new = look < 0
    look[new] = len(known) + np.arange(int(new.sum()))
    return np.append(look, -1)[codes], len(known) + int(new.sum())


def _jaccard_vs_current(
    ix: _Indexed, current: pd.DataFrame | None, out: dict[str, Any], top_n: int, figures: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Day-over-day: mean Jaccard of the top-N item sets vs CURRENT over common users, inside
    bounds (skipped with a note before the first publish or without common users)."""
    lo, hi = out["min_mean_jaccard"], out["max_mean_jaccard"]
    if current is None:
        return [check_result(
            "jaccard_vs_current", severity=lo.get("severity", ERROR), success=True, observed=None,
            bounds={"min": lo["min"], "max": hi["max"]}, note="no CURRENT table",
        )], ["jaccard_vs_current: no CURRENT table (first publish); day-over-day check skipped"]
    # codes as pd.factorize of the concatenated (table, CURRENT) ids would give -- the table's
    # ids in order of appearance, then CURRENT-only ids in theirs -- but each string hashed once
    # per table, CURRENT's distinct ids looked up in the table's
    cu, cu_uniq = pd.factorize(current["user_id"])
    ci, ci_uniq = pd.factorize(current["item_id"])
    cur_u, _ = _with_extra(cu, cu_uniq, ix.users)
    cur_i, n_items_all = _with_extra(ci, ci_uniq, ix.t_items)
    ucode = np.concatenate([ix.u, cur_u])
    icode = np.concatenate([np.asarray(ix.t_item_codes, dtype=np.int64), cur_i])
    width = max(n_items_all, 1)
    n_new = len(ix.t)
    k_all = ucode.astype(np.int64) * width + icode
    k_new = pd.unique(k_all[:n_new])
    k_cur = pd.unique(k_all[n_new:])
    n_users_all = int(ucode.max()) + 1 if len(ucode) else 0
    size_new = np.bincount(k_new // width, minlength=n_users_all)
    size_cur = np.bincount(k_cur // width, minlength=n_users_all)
    inter = np.bincount(k_new[pd.Series(k_new).isin(k_cur).to_numpy()] // width, minlength=n_users_all)
    common = (size_new > 0) & (size_cur > 0)
    union = size_new + size_cur - inter
    jacc = inter[common] / union[common]
    mean = float(jacc.mean()) if common.any() else None
    figures["mean_jaccard_vs_current"] = mean
    figures["common_users_vs_current"] = int(common.sum())
    if mean is None:
        return [check_result(
            "jaccard_vs_current", severity=lo.get("severity", ERROR), success=True, observed=None,
            bounds={"min": lo["min"], "max": hi["max"]}, note="no common users",
        )], ["jaccard_vs_current: no user in common with CURRENT; check skipped"]
    label = f"mean Jaccard of top-{top_n} lists vs CURRENT {mean:.4f} over {int(common.sum()):,} common users"
    return [
        check_result(
            "jaccard_vs_current_min", severity=lo.get("severity", ERROR), success=mean >= lo["min"],
            observed=mean, bounds={"min": lo["min"]}, message=f"{label} < bound {lo['min']}",
        ),
        check_result(
            "jaccard_vs_current_max", severity=hi.get("severity", ERROR), success=mean <= hi["max"],
            observed=mean, bounds={"max": hi["max"]}, message=f"{label} > bound {hi['max']}",
        ),
    ], []


def variant_checks(table: pd.DataFrame, variants: dict[str, Any]) -> list[dict[str, Any]]:
    """A/B arms: every user in exactly one configured arm, realised shares within the binomial
    tolerance of the configured ones (:func:`include.recsys.scoring.variants.share_check`), and the
    holdout served the popularity baseline only (``source == "fallback"``)."""
    from include.recsys.config.variants import HOLDOUT, VariantPlan
    from include.recsys.scoring.variants import COLUMN, share_check

    plan = VariantPlan.from_dict(variants)
    if COLUMN not in table.columns:
        return [check_result("variant_column", severity=ERROR, success=False, observed=None, bounds={},
                             message="variants are configured but the table has no variant column")]
    per_user = table.groupby("user_id", sort=False)[COLUMN].agg(["first", "nunique"])
    mixed = per_user["nunique"].to_numpy() != 1
    counts = {str(k): int(v) for k, v in per_user["first"].value_counts().items()}
    rows = share_check(counts, plan)
    bad = [r for r in rows if not r[4]]
    out = [
        check_result("variant_one_per_user", severity=ERROR, success=not mixed.any(), observed=int(mixed.sum()),
                     bounds={"max": 0}, message=f"{int(mixed.sum()):,} user(s) in more than one variant, e.g. "
                     f"{_sample(per_user.index[mixed])}"),
        check_result("variant_shares", severity=ERROR, success=not bad, observed=counts,
                     bounds={arm: [round(p - tol, 6), round(p + tol, 6)] for arm, p, _, tol, _ in rows},
                     message="; ".join(f"{arm}: realised share {got:.4f} vs configured {p:.4f} (tolerance "
                                       f"{tol:.4f} over {len(per_user):,} users)" for arm, p, got, tol, _ in bad)),
    ]
    hold = (table[COLUMN] == HOLDOUT).to_numpy() & (table["source"] != "fallback").to_numpy()
    out.append(check_result("holdout_gets_baseline", severity=ERROR, success=not hold.any(), observed=int(hold.sum()),
                            bounds={"max": 0}, message=f"{int(hold.sum()):,} holdout row(s) served by a model, "
                            f"e.g. users {_sample(pd.unique(table.loc[hold, 'user_id']))}"))
    return out


def _in_excluded(values: pd.Series, excluded: pd.Index) -> np.ndarray:
    """Bool per value: in ``excluded`` (ids compared as text too: CSV rules vs integer ids)."""
    vals = pd.Index(values.astype(object) if isinstance(values.dtype, pd.CategoricalDtype) else values)
    hit = np.asarray(vals.isin(excluded), dtype=bool)
    if len(excluded) and vals.dtype.kind != excluded.dtype.kind:
        hit |= np.asarray(vals.astype(str).isin(excluded.astype(str)), dtype=bool)
    return hit


def validate_table(
    table: pd.DataFrame,
    *,
    top_n: int,
    seen: SeenPairs,
    current: pd.DataFrame | None = None,
    excluded: pd.Index | None = None,
    fallback: pd.DataFrame | None = None,
    variants: dict[str, Any] | None = None,
    window: tuple[str | None, str | None] = (None, None),
    run_name: str = "recommendations",
    run_time: Any = None,
    report_path: str | Path | None = None,
    docs_dir: str | Path | None = None,
    bounds: dict[str, Any] | None = None,
) -> ValidationReport:
    """Validate a top-N table (GX suite + set-based checks); raise OutputValidationError on errors.

    Args:
        table: ``user_id, rank, item_id, score, source`` (+ model columns).
        top_n: The configured N.
        seen: The snapshot interactions as integer codes (:class:`SeenPairs`): seen pairs, the
            catalog (its items) and the active users (its users).
        current: The CURRENT table (``user_id``, ``item_id``) or None before the first publish.
        excluded: Item ids excluded by the business rules (None: no rules configured).
        fallback: The version's fallback lists (``item_id``), checked against ``excluded``.
        variants: The manifest's ``variants`` block (salt, shares): the ``variant`` column's
            realised shares are checked against it (:func:`variant_checks`).
    """
    from datetime import datetime, timezone

    from include.recsys.validation.history import load_bounds

    started = time.perf_counter()
    bounds = bounds or load_bounds()
    definition = load_suite_definition(SUITE_PATH)
    when = pd.Timestamp(run_time) if run_time is not None else (
        pd.Timestamp(window[1]) if window[1] else pd.Timestamp(datetime(2000, 1, 1, tzinfo=timezone.utc))
    )
    results, gx_success, docs = run_suite(
        table,
        definition,
        parameters={"top_n": int(top_n)},
        run_name=run_name,
        run_time=when.to_pydatetime(),
        asset_name="recommendations",
        docs_dir=docs_dir,
    )
    gx_ok = not any(r["success"] is False and r["severity"] == ERROR for r in results)
    notes: list[str] = []
    if gx_ok:  # the set-based checks assume the columns and dtypes are right
        extra, notes, figures = set_checks(table, top_n=top_n, seen=seen, current=current, bounds=bounds,
                                           excluded=excluded, fallback=fallback)
        results += extra
        if variants is not None:
            results += variant_checks(table, variants)
        notes.append(f"figures: {figures}")
    else:
        notes.append("set-based checks skipped: the table failed its schema checks")
    report = ValidationReport(
        success=not any(r["success"] is False and r["severity"] == ERROR for r in results),
        n_rows=len(table),
        results=results,
        suite_name=definition["name"],
        window_start=window[0],
        window_end=window[1],
        gx_success=gx_success,
        duration_s=time.perf_counter() - started,
        notes=notes,
        data_docs=docs,
    )
    return finish(report, report_path=report_path, error_cls=OutputValidationError)


