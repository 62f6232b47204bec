"""Hyperparameter search for ALS on a validation split carved from the training period only.

Validation split
    :func:`validation_split` cuts the *training* events (everything before the gate's cutoff)
    once more in time: the last ``tune_validation_days`` before that cutoff validate, what is
    before them fits. The gate's holdout is never read while tuning. (The quality benchmark
    uses a per-user temporal split instead; :func:`prepare` takes any fit/validation pair.)

Search
    Seeded random search (:func:`sample_trials`) over the model families
    (:mod:`include.recsys.backends.families`), each with its own small space: ALS over factors,
    regularization and alpha (log-uniform), the weighting (none / BM25 with K1, B / TF-IDF) and
    the recency half-life; item-kNN over the similarity (BM25 with K1, B / cosine) and the
    neighbours K; EASE over λ (log-uniform) and the weighting. Trials after the first go to the
    families in turn (``tune_families``; EASE is left out, with the reason logged, when the
    catalog is above ``ease_max_items``). Trial 0 is always the incumbent (the configuration
    the run would use without tuning), so the result is never worse than it on validation, and
    the family that wins is the one with the best validation NDCG@10: the gate's holdout never
    takes part in the choice. For ALS, iterations are the budget: every trial
    runs up to ``tune_max_iterations`` sweeps and stops early when validation NDCG@10 has not
    improved for ``tune_patience`` sweeps (implicit's fit callback); the best sweep count is
    what the trial reports. Trials are independent: in Airflow each is one mapped task and one
    MLflow child run of the DAG run's run.

Cost control
    :func:`decide` says whether a run tunes: asked for (``tune=true``), the previous gate
    verdict was FAIL (``tune_on_decay``), or the last tuned configuration is
    ``tune_every_days`` older than this run's data interval (or none exists). Otherwise the
    newest configuration tagged ``best_config=true`` in the MLflow experiment is reused
    (:func:`last_best_config`), and without one the config defaults are used.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from include.recsys.backends.implicit import (
    MODEL_FIELDS,
    build_als,
    check_finite,
    fit_als,
    model_config,
)
from include.recsys.backends.families import FAMILIES, eligible_families, family_defaults
from include.recsys.config.settings import PipelineConfig

log = logging.getLogger(__name__)


METRIC = "ndcg@10"


@dataclass(frozen=True)
class SearchSpace:
    """Where random search samples. Ranges are log-uniform for scale parameters."""

    factors: tuple[int, ...] = (16, 32, 64, 128)
    regularization: tuple[float, float] = (0.01, 30.0)
    alpha: tuple[float, float] = (0.1, 50.0)
    weighting: tuple[str, ...] = ("none", "bm25", "tfidf")
    bm25_k1: tuple[float, float] = (1.0, 200.0)
    bm25_b: tuple[float, float] = (0.2, 1.0)
    # "off" twice: most trials leave recency alone
    recency_half_life_days: tuple[float, ...] = (0.0, 0.0, 14.0, 56.0, 180.0)
    # item-kNN: implicit re-weights the summed matrix itself (BM25 / cosine normalisation)
    knn_kind: tuple[str, ...] = ("bm25", "bm25", "cosine")
    knn_k: tuple[int, ...] = (20, 50, 100, 200, 400)
    knn_bm25_k1: tuple[float, float] = (0.3, 5.0)
    knn_bm25_b: tuple[float, float] = (0.2, 1.0)
    # EASE: λ scales with the Gram matrix (summed weights squared), hence the wide range
    ease_lambda: tuple[float, float] = (20.0, 20000.0)
    ease_weighting: tuple[str, ...] = ("none", "none", "tfidf")


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def sample_trials(
    n: int,
    seed: int,
    incumbent: dict[str, Any],
    max_iterations: int,
    space: SearchSpace | None = None,
    families: tuple[str, ...] | list[str] = ("als",),
) -> list[dict[str, Any]]:
    """``n`` trial configurations (model fields), trial 0 the incumbent; seeded, reproducible.

    Trials 1.. go to ``families`` in turn (a fair share each, whatever ``n``). The first trial
    of a family that is not the incumbent's is that family at its config defaults (so a tuned
    family is never worse than its defaults on validation); the others draw from the family's
    own seeded stream, so the ALS trials of ``families=("als",)`` are the ones this search
    always drew. A trial of one family carries the incumbent's fields of the others (unused by
    it) and ``iterations=max_iterations`` (ALS's budget; item-item fits have none).
    """
    if n < 1:
        raise ValueError(f"the trial budget must be >= 1, got {n}")
    families = tuple(families) or ("als",)
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown model families {sorted(unknown)}; known: {FAMILIES}")
    space = space or SearchSpace()
    base = {**{k: incumbent[k] for k in MODEL_FIELDS}, "iterations": max_iterations}
    rngs = {f: np.random.default_rng([seed, 0x7E11] + ([FAMILIES.index(f)] if f != "als" else [])) for f in families}
    trials = [dict(base)]
    started = {base.get("model_family", "als")}
    for t in range(n - 1):
        family = families[t % len(families)]
        if family not in started:
            started.add(family)
            trials.append({**base, **family_defaults(family), "iterations": max_iterations})
            continue
        draw = _draw_als if family == "als" else _draw_knn if family == "item_knn" else _draw_ease
        trials.append({**base, **draw(rngs[family], space, max_iterations)})
    return trials


def _draw_knn(rng: np.random.Generator, space: SearchSpace, _max_iterations: int) -> dict[str, Any]:
    kind = str(rng.choice(space.knn_kind))
    return {
        "model_family": "item_knn",
        "knn_kind": kind,
        "knn_k": int(rng.choice(space.knn_k)),
        "knn_bm25_k1": round(_loguniform(rng, *space.knn_bm25_k1), 3) if kind == "bm25" else 1.2,
        "knn_bm25_b": round(float(rng.uniform(*space.knn_bm25_b)), 3) if kind == "bm25" else 0.75,
        "weighting": "none",
        "recency_half_life_days": float(rng.choice(space.recency_half_life_days)),
    }


def _draw_ease(rng: np.random.Generator, space: SearchSpace, _max_iterations: int) -> dict[str, Any]:
    return {
        "model_family": "ease",
        "ease_lambda": round(_loguniform(rng, *space.ease_lambda), 3),
        "weighting": str(rng.choice(space.ease_weighting)),
        "recency_half_life_days": float(rng.choice(space.recency_half_life_days)),
    }


def _draw_als(rng: np.random.Generator, space: SearchSpace, max_iterations: int) -> dict[str, Any]:
    weighting = str(rng.choice(space.weighting))
    return {
        "model_family": "als",
        "factors": int(rng.choice(space.factors)),
        "regularization": round(_loguniform(rng, *space.regularization), 5),
        "alpha": round(_loguniform(rng, *space.alpha), 4),
        "iterations": max_iterations,
        "weighting": weighting,
        "bm25_k1": round(_loguniform(rng, *space.bm25_k1), 3) if weighting == "bm25" else 100.0,
        "bm25_b": round(float(rng.uniform(*space.bm25_b)), 3) if weighting == "bm25" else 0.8,
        "recency_half_life_days": float(rng.choice(space.recency_half_life_days)),
    }


def validation_split(
    train_df: pd.DataFrame, cutoff: pd.Timestamp, days: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp]:
    """(fit events, validation pairs, validation cutoff): the last ``days`` before ``cutoff``.

    ``train_df`` must hold training events only (all before ``cutoff``); the validation pairs
    are the new (user, item) pairs of the last ``days`` (:func:`include.recsys.data.split.time_split`).
    """
    from include.recsys.data.split import time_split

    cutoff = pd.Timestamp(cutoff)
    if (train_df["event_ts"] >= cutoff).any():
        raise ValueError(f"validation_split: training events at or after the cutoff {cutoff}")
    val_cutoff = cutoff - pd.Timedelta(days=days)
    fit_df, valid, _ = time_split(train_df, val_cutoff)
    return fit_df, valid, val_cutoff


@dataclass
class TuningData:
    """A fit matrix and its validation targets, in the fit data's index space."""

    fit_df: pd.DataFrame
    users: Any  # IdMap
    items: Any  # IdMap
    seen: Any  # csr users x items of the fit events (what is filtered)
    eval_rows: np.ndarray  # user indices evaluated
    relevant: Any  # csr (len(eval_rows) x n_items)
    cutoff: pd.Timestamp | None

    @property
    def n_eval_users(self) -> int:
        return int(len(self.eval_rows))


def prepare(
    fit_df: pd.DataFrame,
    valid_pairs: pd.DataFrame,
    cutoff: pd.Timestamp | None,
    *,
    max_eval_users: int = 5000,
    seed: int = 0,
) -> TuningData:
    """Index the fit events; validation targets = new pairs of known users and items.

    Pairs of items the fit data never saw cannot be recommended by any trial; they are left
    out (the same for every trial, so the ranking of trials is unchanged). At most
    ``max_eval_users`` users are evaluated (a seeded sample) to keep each sweep's check cheap.
    """
    import scipy.sparse as sp

    from include.recsys.core.ids import IdMap, interaction_matrix

    users = IdMap.from_values(fit_df["user_id"])
    items = IdMap.from_values(fit_df["item_id"])
    seen = interaction_matrix(fit_df, users, items, value=None)
    u = users.index_of(valid_pairs["user_id"])
    i = items.index_of(valid_pairs["item_id"])
    ok = (u >= 0) & (i >= 0)
    if ok.any():
        # a pair already seen in the fit data is no target (it is filtered from every list)
        already = np.asarray(seen[u[ok], i[ok]]).ravel() > 0
        keep = np.flatnonzero(ok)[~already]
        u, i = u[keep], i[keep]
    else:
        u, i = u[:0], i[:0]
    rows = np.unique(u)
    if len(rows) > max_eval_users:
        rows = np.sort(np.random.default_rng([seed, 0xE7A1]).choice(rows, max_eval_users, replace=False))
    pos = np.searchsorted(rows, u)
    in_sample = (pos < len(rows)) & (rows[np.minimum(pos, len(rows) - 1)] == u) if len(rows) else np.zeros(len(u), bool)
    relevant = sp.csr_matrix(
        (np.ones(int(in_sample.sum()), np.float32), (pos[in_sample], i[in_sample])),
        shape=(len(rows), len(items)),
    )
    relevant.sum_duplicates()
    return TuningData(fit_df, users, items, seen, rows.astype(np.int64), relevant, cutoff)


class _EarlyStop(Exception):
    """Raised from implicit's fit callback to end the sweeps."""


@dataclass
class TrialResult:
    trial: int
    params: dict[str, Any]
    best_iteration: int  # sweeps that gave the best validation metric (the refit uses this)
    best_metric: float
    history: list[float] = field(default_factory=list)  # validation NDCG@10 after each sweep
    stopped_early: bool = False
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and math.isfinite(self.best_metric)

    def config(self) -> dict[str, Any]:
        """The model fields of this trial with the early-stopped iteration count (ALS; an
        item-item family has no iterations: its fields are returned as sampled)."""
        if self.params.get("model_family", "als") != "als":
            return dict(self.params)
        return {**self.params, "iterations": int(self.best_iteration)}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "config": self.config()}


def validation_ndcg(data: TuningData, user_factors: np.ndarray, item_factors: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k of the evaluated users (seen items filtered), with exact top-k."""
    from include.recsys.metrics.ranking import ranking_metrics
    from include.recsys.scoring.recommend import topn_dense

    if data.n_eval_users == 0:
        return float("nan")
    uf = user_factors[data.eval_rows]
    if not (np.isfinite(uf).all() and np.isfinite(item_factors).all()):
        return float("nan")
    top, _ = topn_dense(uf, item_factors, data.seen[data.eval_rows], k)
    return float(ranking_metrics(top, data.relevant, [k]).summary[f"ndcg@{k}"])


def run_trial(
    data: TuningData,
    cfg: PipelineConfig,
    params: dict[str, Any],
    *,
    trial: int = 0,
    max_iterations: int | None = None,
    patience: int | None = None,
) -> TrialResult:
    """Fit ALS with ``params`` on ``data`` and early-stop on validation NDCG@10 (an item-item
    family's ``params`` are fitted once instead: :func:`_run_item_item_trial`).

    The callback evaluates after every sweep, remembers the best sweep count,
    and stops the fit after ``patience`` sweeps without improvement. A trial whose factors
    turn non-finite ends with ``error`` set (it never wins).
    """
    from include.recsys.backends.weighting import ConfidenceSpec, confidence_matrix

    if params.get("model_family", "als") != "als":
        return _run_item_item_trial(data, cfg, params, trial)
    t0 = time.perf_counter()
    max_iterations = int(max_iterations or params.get("iterations") or cfg.tune_max_iterations)
    patience = int(patience or cfg.tune_patience)
    tcfg = cfg.with_overrides({k: params[k] for k in MODEL_FIELDS if k in params})
    ui = confidence_matrix(data.fit_df, data.users, data.items, ConfidenceSpec.from_config(tcfg), data.cutoff)
    history: list[float] = []
    state = {"best": -math.inf, "best_it": 0}

    def on_sweep(iteration: int, _seconds: float, _loss: float | None) -> None:
        score = validation_ndcg(data, model.user_factors, model.item_factors)
        history.append(score)
        if not math.isfinite(score):
            raise _EarlyStop("non-finite")
        if score > state["best"]:
            state["best"], state["best_it"] = score, iteration + 1
        elif iteration + 1 - state["best_it"] >= patience:
            raise _EarlyStop("patience")

    error = None
    stopped = False
    model = build_als(tcfg, max_iterations)
    try:
        fit_als(ui, tcfg, callback=on_sweep, model=model)
        check_finite({"user factor": model.user_factors, "item factor": model.item_factors}, tcfg)
    except _EarlyStop as stop:
        stopped = True
        if str(stop) == "non-finite":
            error = f"validation metric not finite after sweep {len(history)} (diverged)"
    except Exception as exc:  # one bad trial must not end the search
        error = f"{type(exc).__name__}: {exc}"
    result = TrialResult(
        trial=trial,
        params={k: params[k] for k in MODEL_FIELDS if k in params},
        best_iteration=int(state["best_it"]),
        best_metric=float(state["best"]) if state["best_it"] else float("nan"),
        history=[round(h, 6) if math.isfinite(h) else None for h in history],
        stopped_early=stopped,
        seconds=time.perf_counter() - t0,
        error=error,
    )
    log.info(
        "trial %d %s: %s=%.4f at sweep %d/%d%s in %.2fs%s",
        trial, json.dumps(result.params), METRIC, result.best_metric, result.best_iteration,
        max_iterations, " (early stop)" if stopped else "", result.seconds,
        f" ERROR {error}" if error else "",
    )
    return result


def validation_ndcg_item_item(data: TuningData, user_items, item_item, k: int = 10) -> float:
    """Mean NDCG@k of the evaluated users for an item-item family, through the scorer's own
    :func:`topn_item_item` (seen filtered, lists filled up by popularity as served)."""
    from include.recsys.metrics.ranking import ranking_metrics
    from include.recsys.scoring.recommend import topn_item_item

    if data.n_eval_users == 0:
        return float("nan")
    popularity = np.bincount(data.seen.indices, minlength=data.seen.shape[1])
    top, _ = topn_item_item(user_items[data.eval_rows], item_item, data.seen[data.eval_rows], k,
                            popularity=popularity)
    return float(ranking_metrics(top, data.relevant, [k]).summary[f"ndcg@{k}"])


def _run_item_item_trial(data: TuningData, cfg: PipelineConfig, params: dict[str, Any], trial: int) -> TrialResult:
    """Fit an item-item family once (no sweeps to stop early) and score it on validation."""
    from include.recsys.backends.families import describe, fit_item_item
    from include.recsys.backends.weighting import ConfidenceSpec, confidence_matrix

    t0 = time.perf_counter()
    metric, error = float("nan"), None
    tparams = {k: params[k] for k in MODEL_FIELDS if k in params}
    try:
        tcfg = cfg.with_overrides(tparams)
        ui = confidence_matrix(data.fit_df, data.users, data.items, ConfidenceSpec.from_config(tcfg), data.cutoff)
        item_item, _ = fit_item_item(ui, tcfg)
        metric = validation_ndcg_item_item(data, ui, item_item)
        if not math.isfinite(metric):
            error = "validation metric not finite"
    except Exception as exc:  # one bad trial (e.g. EASE over its budget) must not end the search
        error = f"{type(exc).__name__}: {exc}"
    result = TrialResult(
        trial=trial, params=tparams, best_iteration=0, best_metric=metric,
        history=[round(metric, 6)] if math.isfinite(metric) else [], seconds=time.perf_counter() - t0,
        error=error,
    )
    log.info(
        "trial %d %s: %s=%.4f in %.2fs%s", trial, describe(tcfg) if error is None else json.dumps(tparams),
        METRIC, metric, result.seconds, f" ERROR {error}" if error else "",
    )
    return result


def select_best(results: list[TrialResult | dict[str, Any]]) -> dict[str, Any] | None:
    """The best successful trial (highest validation metric; ties: lowest trial number)."""
    rows = [r.to_dict() if isinstance(r, TrialResult) else r for r in results]
    ok = [r for r in rows if r.get("ok")]
    if not ok:
        return None
    return max(ok, key=lambda r: (r["best_metric"], -r["trial"]))


def best_by_family(results: list[TrialResult | dict[str, Any]]) -> dict[str, float]:
    """Best validation NDCG@10 of each family's successful trials, as MLflow metric names
    (``tune_best_valid_ndcg_at_10_<family>``): how far the winner is ahead of the others."""
    out: dict[str, float] = {}
    for r in (x.to_dict() if isinstance(x, TrialResult) else x for x in results):
        if r.get("ok"):
            key = f"tune_best_valid_ndcg_at_10_{r['params'].get('model_family', 'als')}"
            out[key] = max(out.get(key, -math.inf), float(r["best_metric"]))
    return out


def search(
    data: TuningData,
    cfg: PipelineConfig,
    *,
    n_trials: int | None = None,
    incumbent: dict[str, Any] | None = None,
    space: SearchSpace | None = None,
    families: tuple[str, ...] | list[str] | None = None,
) -> tuple[dict[str, Any] | None, list[TrialResult]]:
    """In-process random search (the benchmark's path; Airflow runs trials as mapped tasks)."""
    families, _ = eligible_families(families or cfg.tune_families, len(data.items), cfg.ease_max_items, cfg.backend)
    trials = sample_trials(
        n_trials or cfg.tune_trials, cfg.seed, incumbent or model_config(cfg), cfg.tune_max_iterations, space,
        families,
    )
    results = [run_trial(data, cfg, p, trial=i) for i, p in enumerate(trials)]
    return select_best(results), results


def apply_config(
    cfg: PipelineConfig, config: dict[str, Any], base: PipelineConfig | None = None
) -> tuple[PipelineConfig, list[str]]:
    """``cfg`` with a best configuration's model fields; fields the run set explicitly win.

    A field counts as explicit when the run's value differs from ``base`` (the environment's
    defaults, i.e. the form's defaults): an engineer who triggers with ``factors=64`` gets 64.
    Returns (config, the explicit fields kept).
    """
    from include.recsys.config.settings import load_config

    base = base or load_config({"data_dir": cfg.data_dir})
    kept = [k for k in MODEL_FIELDS if k in config and getattr(cfg, k) != getattr(base, k)]
    updates = {k: v for k, v in config.items() if k in MODEL_FIELDS and k not in kept}
    return cfg.with_overrides(updates), kept


def decide(
    cfg: PipelineConfig,
    interval_end: pd.Timestamp,
    last_best: dict[str, Any] | None,
    last_verdict: tuple[str, str] | None,
) -> tuple[bool, str]:
    """(tune now?, why). Pure: the MLflow look-ups are done by the caller."""
    if cfg.tune:
        return True, "requested (tune=true)"
    if cfg.tune_on_decay and last_verdict and last_verdict[0] == "FAIL":
        return True, f"decay: the previous run's gate verdict was FAIL (MLflow run {last_verdict[1]})"
    if cfg.tune_every_days > 0:
        if last_best is None:
            return True, "cadence: no tuned configuration in MLflow yet"
        tuned_end = last_best.get("tuned_interval_end")
        if tuned_end:
            age = pd.Timestamp(interval_end) - pd.Timestamp(tuned_end)
            if age >= pd.Timedelta(days=cfg.tune_every_days):
                return True, (
                    f"cadence: last tuned for the interval ending {tuned_end}, "
                    f"{age.days} days >= tune_every_days={cfg.tune_every_days}"
                )
    if last_best is not None:
        return False, f"reuse: last tuned configuration (MLflow run {last_best['run_id']}) is recent"
    return False, "no tuning due and none stored: config defaults"
