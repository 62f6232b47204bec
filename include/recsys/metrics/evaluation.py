"""Several models judged on one frozen holdout: headline metrics, slices, paired bootstrap CIs,
and the ``eval/report.json`` dict built from them (definitions: the package docstring)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from include.recsys.core.ids import _binary_csr
from include.recsys.metrics.bootstrap import paired_bootstrap_tables
from include.recsys.metrics.ranking import (
    PER_USER_METRICS,
    _validate_ks,
    ranking_metrics,
)
from include.recsys.metrics.slices import (
    ACTIVITY_TIERS,
    USER_TYPES,
    _slice_means,
    restrict_relevant,
)

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """What :func:`evaluate_models` returns; the pipeline writes it to ``eval/report.json``.

    Attributes:
        metrics: model -> summary of :func:`ranking_metrics` over the headline (warm) users.
        curves: model -> popularity-bias curve at ``curve_k``.
        slices: model -> ``"<dimension>=<value>"`` -> ``{"n_users": int, "<metric>@<k>": mean}``.
        paired: ``"<reference>_vs_<other>"`` -> ``"<metric>@<k>"`` -> :meth:`BootstrapCI.to_dict`.
        per_user: one row per (model, evaluated user): ``model``, ``user_index`` (row of the
            inputs), ``user_id`` (when given), ``in_headline``, the label columns and the
            per-user metric columns.
        notes: what was skipped and why (e.g. ILD without item features).
        seconds: wall time of the whole evaluation.
    """

    metrics: dict[str, dict[str, float]]
    curves: dict[str, dict[str, Any]]
    slices: dict[str, dict[str, dict[str, float]]]
    paired: dict[str, dict[str, dict[str, float]]]
    per_user: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def evaluate_models(
    lists: Mapping[str, np.ndarray],
    relevant: sp.csr_matrix,
    ks: Sequence[int],
    *,
    warm: np.ndarray | None = None,
    labels: pd.DataFrame | None = None,
    head_items: np.ndarray | None = None,
    user_ids: Sequence[Any] | np.ndarray | None = None,
    n_catalog: int | None = None,
    item_popularity: np.ndarray | None = None,
    n_train_users: int | None = None,
    item_features: np.ndarray | sp.spmatrix | None = None,
    curve_k: int | None = None,
    reference: str = "candidate",
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int | None = 0,
) -> Evaluation:
    """Score several models' lists on one holdout: headline metrics, slices, paired CIs.

    (Over 80 lines by its 16 parameters and their reference; the code is ~60 lines.)

    Every model is judged on the same rows of ``relevant`` (the frozen holdout); the caller
    has applied the same seen-item filter to every list. Rows where ``warm`` is False (cold
    users: no training events) are scored only in the ``activity=cold`` slice; all headline
    figures, the other slices and the paired bootstrap are over the warm rows (see the
    package docstring, "Slices").

    Args:
        lists: model name -> ``(n_rows, N)`` top-N item indices (``-1`` padded).
        relevant: ``(n_rows, n_items)`` holdout matrix.
        ks: cut-offs.
        warm: bool per row; default: every row is warm.
        labels: per-row slice labels, columns ``activity`` and/or ``user``
            (see :func:`user_slice_labels`); without it only ``items`` slices are made.
        head_items: bool mask over the columns of ``relevant`` (see :func:`head_item_mask`);
            without it no ``items`` slices are made.
        user_ids: external id per row, copied to ``per_user``.
        n_catalog, item_popularity, n_train_users, item_features: as in
            :func:`ranking_metrics`.
        curve_k: the k of the reported popularity-bias curve (default: the smallest k).
        reference: the model every other model is compared with in ``paired``.
        n_boot, confidence, seed: the paired bootstrap (:func:`paired_bootstrap_table`).

    Raises:
        ValueError: on an unknown ``reference``, or inputs whose row counts disagree.
    """
    t0 = time.perf_counter()
    ks_list = _validate_ks(ks)
    rel = _binary_csr(relevant, "relevant")
    n_rows = rel.shape[0]
    warm_mask = _check_lists(lists, n_rows, reference, warm, labels, user_ids)
    warm_rows = np.flatnonzero(warm_mask)
    cold_rows = np.flatnonzero(~warm_mask)
    rel_warm = rel[warm_rows]
    rows = _Rows(
        ks=ks_list,
        warm=warm_rows,
        cold=cold_rows,
        rel_warm=rel_warm,
        rel_cold=rel[cold_rows],
        rel_parts={} if head_items is None else {
            g: restrict_relevant(rel_warm, m)
            for g, m in (("head", head_items), ("tail", ~np.asarray(head_items, dtype=bool)))
        },
        labels=labels,
        ids=_external_ids(user_ids),
        extra={
            "n_catalog": n_catalog,
            "item_popularity": item_popularity,
            "n_train_users": n_train_users,
            "item_features": item_features,
        },
        curve_k=min(ks_list) if curve_k is None else int(curve_k),
        accuracy_cols=[f"{m}@{k}" for k in ks_list for m in PER_USER_METRICS],
    )
    notes = (
        []
        if item_features is not None
        else ["ild@k skipped: no item features (intra-list diversity needs item feature vectors)"]
    )
    metrics: dict[str, dict[str, float]] = {}
    curves: dict[str, dict[str, Any]] = {}
    slices: dict[str, dict[str, dict[str, float]]] = {}
    warm_frames: dict[str, pd.DataFrame] = {}
    frames: list[pd.DataFrame] = []
    for name, top in lists.items():
        metrics[name], curves[name], slices[name], frame = _per_model(name, np.asarray(top), rows)
        warm_frames[name] = frame.loc[frame["in_headline"]].reset_index(drop=True)
        frames.append(frame)
    paired = _paired(warm_frames, reference, rows.accuracy_cols, n_boot, confidence, seed)

    per_user = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    seconds = time.perf_counter() - t0
    log.info(
        "evaluated %d models x %d holdout users (%d warm, %d cold) at k=%s in %.2fs "
        "(%.0f user-lists/s)",
        len(lists),
        n_rows,
        warm_rows.size,
        cold_rows.size,
        ks_list,
        seconds,
        len(lists) * n_rows / max(seconds, 1e-9),
    )
    return Evaluation(metrics, curves, slices, paired, per_user, notes, seconds)


@dataclass(frozen=True)
class _Rows:
    """What every model's lists are scored against: the holdout split once into warm rows (the
    headline) and cold rows (only the ``activity=cold`` slice), and the shared settings."""

    ks: list[int]
    warm: np.ndarray  # row indices
    cold: np.ndarray
    rel_warm: sp.csr_matrix
    rel_cold: sp.csr_matrix
    rel_parts: dict[str, sp.csr_matrix]  # "head" / "tail": rel_warm restricted to those items
    labels: pd.DataFrame | None
    ids: np.ndarray | None  # external user id per row
    extra: dict[str, Any]  # n_catalog, item_popularity, n_train_users, item_features
    curve_k: int
    accuracy_cols: list[str]


def _check_lists(
    lists: Mapping[str, np.ndarray],
    n_rows: int,
    reference: str,
    warm: np.ndarray | None,
    labels: pd.DataFrame | None,
    user_ids: Sequence[Any] | np.ndarray | None,
) -> np.ndarray:
    """The warm mask, once every input has one entry per holdout row (a ValueError naming the
    one that does not): a mismatch fails before any model is scored."""
    if reference not in lists:
        raise ValueError(f"reference model {reference!r} is not among the lists {sorted(lists)}")
    warm_mask = np.ones(n_rows, dtype=bool) if warm is None else np.asarray(warm, dtype=bool)
    if warm_mask.shape != (n_rows,):
        raise ValueError(f"warm must have one entry per row ({n_rows}), got {warm_mask.shape}")
    if labels is not None and len(labels) != n_rows:
        raise ValueError(f"labels must have one row per holdout row ({n_rows}), got {len(labels)}")
    if user_ids is not None and len(user_ids) != n_rows:
        raise ValueError(f"user_ids must have one entry per row ({n_rows}), got {len(user_ids)}")
    for name, top in lists.items():
        shape = np.shape(top)
        if len(shape) != 2 or shape[0] != n_rows:
            raise ValueError(f"lists[{name!r}] must have shape ({n_rows}, N), got {shape}")
    return warm_mask


def _external_ids(user_ids: Sequence[Any] | np.ndarray | None) -> np.ndarray | None:
    """The external ids as one object array (once; not by iterating an Arrow array)."""
    if isinstance(user_ids, (pd.Index, pd.Series)):
        return user_ids.to_numpy(dtype=object)
    return None if user_ids is None else np.asarray(user_ids, dtype=object)


def _per_model(
    name: str, top: np.ndarray, rows: _Rows
) -> tuple[dict[str, float], dict[str, Any], dict[str, dict[str, float]], pd.DataFrame]:
    """One model's headline summary, popularity-bias curve, slices and per-user frame (warm
    rows first, then cold ones)."""
    main = ranking_metrics(top[rows.warm], rows.rel_warm, rows.ks, **rows.extra)
    curve = main.curves.get(rows.curve_k)
    if curve is None:  # curve_k not among ks: compute it on its own
        only = ranking_metrics(top[rows.warm], rows.rel_warm, [rows.curve_k], n_catalog=rows.extra["n_catalog"])
        curve = only.curves[rows.curve_k]
    parts = [
        main.per_user.assign(
            user_index=rows.warm[main.per_user["user_index"].to_numpy()], in_headline=True
        )
    ]
    if rows.cold.size:
        cold = ranking_metrics(top[rows.cold], rows.rel_cold, rows.ks, **rows.extra)
        parts.append(
            cold.per_user.assign(
                user_index=rows.cold[cold.per_user["user_index"].to_numpy()], in_headline=False
            )
        )
    frame = pd.concat(parts, ignore_index=True)
    if rows.labels is not None:
        lab = rows.labels.reset_index(drop=True).iloc[frame["user_index"].to_numpy()]
        for col in lab.columns:
            frame[col] = lab[col].to_numpy()
    if rows.ids is not None:
        frame.insert(0, "user_id", rows.ids[frame["user_index"].to_numpy()])
    frame.insert(0, "model", name)
    metric_cols = [c for c in frame.columns if "@" in c]
    model_slices: dict[str, dict[str, float]] = {}
    if rows.labels is not None:
        model_slices.update(_slice_means(frame, "activity", ACTIVITY_TIERS, metric_cols))
        headline = frame.loc[frame["in_headline"]]
        model_slices.update(_slice_means(headline, "user", USER_TYPES, metric_cols))
    for group, rel_g in rows.rel_parts.items():
        res = ranking_metrics(top[rows.warm], rel_g, rows.ks, n_catalog=rows.extra["n_catalog"])
        n_group = int(res.summary["n_users_evaluated"])
        model_slices[f"items={group}"] = {
            "n_users": n_group,
            **({c: res.summary[c] for c in rows.accuracy_cols} if n_group else {}),
        }
    return main.summary, curve, model_slices, frame


def _paired(
    warm_frames: dict[str, pd.DataFrame], reference: str, accuracy_cols: list[str], n_boot: int,
    confidence: float, seed: int | None,
) -> dict[str, dict[str, dict[str, float]]]:
    """``<reference>_vs_<other>`` -> metric -> paired bootstrap CI over the headline users."""
    ref = warm_frames[reference]
    others = {name: other for name, other in warm_frames.items() if name != reference}
    for other in others.values():
        if not np.array_equal(ref["user_index"].to_numpy(), other["user_index"].to_numpy()):
            raise RuntimeError("per-user frames of the models are not aligned")  # cannot happen
    # one set of resamples for every comparison (same seed: the CIs each comparison gets alone)
    tables = paired_bootstrap_tables(ref, others, accuracy_cols, n_boot, confidence, seed)
    return {
        f"{reference}_vs_{name}": {c: ci.to_dict() for c, ci in cis.items()}
        for name, cis in tables.items()
    }


#: What ``eval/report.json``'s figures mean, in one paragraph (the report's ``definitions``).
EVAL_DEFINITIONS = (
    "Definitions: include/recsys/metrics/__init__.py (package docstring) and README 'Offline metrics'. "
    "metrics/* are over warm holdout users (training events, known to the candidate), as "
    "before slices existed; cold holdout users get each model's fallback list and are scored "
    "only in slices[*]['activity=cold']. Users without holdout items are excluded; users with "
    "holdout items but no recommendations score 0. precision@k divides by k; map@k and the "
    "ideal DCG use min(k, |relevant|); coverage/gini/popularity_curve are over the top-k "
    "exposure of the whole catalog; novelty uses the share of training users who know an "
    "item; paired = percentile bootstrap CI of mean(candidate - other) per user."
)


def evaluation_report(
    ev: Evaluation,
    *,
    ks: Sequence[int],
    warm: np.ndarray,
    n_catalog: int,
    champion_version: str | None,
    champion_comparison: dict[str, Any] | None,
    per_user_path: str,
    settings: dict[str, Any],
    seconds: float,
) -> dict[str, Any]:
    """The ``eval/report.json`` dict: what the gate, the run card, approval and MLflow read (its
    keys are their contract; ``per_user`` is the path of the per-user table, not the table)."""
    return {
        "ks": list(ks),
        "n_users": int(warm.sum()),
        "n_users_cold": int((~warm).sum()),
        "n_catalog": n_catalog,
        "champion_version": champion_version,
        "champion_comparison": champion_comparison,
        "metrics": ev.metrics,
        "popularity_curve": ev.curves,
        "slices": ev.slices,
        "paired": ev.paired,
        "per_user": per_user_path,
        "definitions": EVAL_DEFINITIONS,
        "settings": settings,
        "notes": ev.notes,
        "seconds": round(seconds, 3),
    }
