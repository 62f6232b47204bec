"""The evaluate stage: every model's lists on the frozen holdout -> ``eval/report.json``,
the per-user table and the MLflow metrics of the run (the metrics themselves: :mod:`include.recsys.metrics`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from include.recsys.config.settings import PipelineConfig
from include.recsys.core.io import write_json
from include.recsys.core.metric_key import metric_k
from include.recsys.core.run import RunContext

if TYPE_CHECKING:
    from include.recsys.metrics.holdout import HoldoutInputs
    from include.recsys.scoring.bundle import ModelBundle

log = logging.getLogger(__name__)


def _eval_mlflow_metrics(report: dict[str, Any]) -> dict[str, float]:
    """Flat MLflow metrics of an evaluation report (names use only MLflow-legal characters:
    ``=`` becomes ``.``, and ``registry.log_to_run`` turns ``@`` into ``_at_``)."""
    out: dict[str, float] = {}
    for name, summary in report["metrics"].items():
        out.update({f"{name}.{k}": v for k, v in summary.items() if isinstance(v, (int, float))})
    for name, slices in report["slices"].items():
        for key, values in slices.items():
            where = key.replace("=", ".")
            out.update({f"{name}.{m}.{where}": v for m, v in values.items() if isinstance(v, (int, float))})
    for pair, per_metric in report["paired"].items():
        for m, ci in per_metric.items():
            out.update({f"paired.{pair}.{m}.{s}": ci[s] for s in ("mean_diff", "lo", "hi")})
    for name, curve in report["popularity_curve"].items():
        out.update({
            f"{name}.popularity_curve@{curve['k']}.p{round(s * 100)}": n
            for s, n in zip(curve["shares"], curve["items"], strict=True)
        })
    out["eval_seconds"] = report["seconds"]
    return out


def _champion_comparison(cfg: PipelineConfig, version: str | None, holdout_start: Any) -> dict[str, Any] | None:
    """Whether the champion's training data lies before this holdout (its model-version tags,
    :func:`include.recsys.validation.gate.champion_comparison`); None without a champion."""
    if version is None:
        return None
    from include.recsys.tracking.registry import model_data
    from include.recsys.validation.gate import champion_comparison

    result = champion_comparison(version, model_data(cfg, version), holdout_start)
    if not result["fair"]:
        log.warning("champion comparison skipped: %s", result["reason"])
    return result


def evaluate(
    cfg: PipelineConfig, rc: RunContext, parts: dict[str, Any], model: dict[str, Any]
) -> dict[str, Any]:
    """Candidate, champion (if any), popularity and recent popularity on the same frozen
    holdout with the same seen-item filter -> ``eval/report.json`` + per-user Parquet + MLflow.

    Headline metrics are over warm holdout users (as before); cold holdout users get each
    model's fallback list and are scored in the ``activity=cold`` slice. See
    :mod:`include.recsys.metrics` for every definition. The holdout, seen and training
    figures come from the split files' integer codes
    (:func:`include.recsys.metrics.holdout.holdout_inputs`).
    """
    import time

    from include.recsys.core.privacy import pseudonymize_table
    from include.recsys.metrics.evaluation import evaluate_models, evaluation_report
    from include.recsys.metrics.holdout import holdout_inputs
    from include.recsys.metrics.slices import (
        head_item_mask,
        heavy_threshold,
        user_slice_labels,
    )
    from include.recsys.scoring.bundle import ModelBundle

    # no release_memory() here or at the end: the DAG's stage_memory() wraps every stage and
    # already released what the previous stage left (a full gc.collect costs 0.2-0.6 s here)
    t0 = time.perf_counter()
    candidate_bundle = ModelBundle.load(model["bundle"])
    stats_cutoff = (parts.get("stats") or {}).get("cutoff")
    inputs = holdout_inputs(
        parts["train"], parts["holdout"], candidate_bundle, recent_days=cfg.recent_days,
        cutoff=pd.Timestamp(stats_cutoff) if stats_cutoff else None,
        users_map=parts.get("users"), items_map=parts.get("items"),
    )
    users, warm, relevant, cutoff = inputs.users, inputs.warm, inputs.relevant, inputs.cutoff
    t_inputs = time.perf_counter() - t0
    n_catalog = len(candidate_bundle.item_ids)
    lists, champion_version = _lists(cfg, rc, inputs, candidate_bundle)
    t_lists = time.perf_counter() - t0

    heavy_min = heavy_threshold(inputs.train_counts, cfg.eval_heavy_quantile)
    labels = user_slice_labels(
        inputs.user_counts, inputs.first_ts, cutoff, heavy_min=heavy_min, new_user_days=cfg.eval_new_user_days
    )
    del inputs
    head = head_item_mask(candidate_bundle.item_popularity, cfg.eval_head_share, n_items=relevant.shape[1])
    ev = evaluate_models(
        lists, relevant, cfg.ks, warm=warm, labels=labels, head_items=head, user_ids=users, n_catalog=n_catalog,
        item_popularity=candidate_bundle.item_popularity, n_train_users=len(candidate_bundle.user_ids),
        curve_k=metric_k(cfg.gate_metric, cfg.ks), reference="candidate", n_boot=cfg.bootstrap_samples,
        confidence=cfg.bootstrap_confidence, seed=cfg.seed,
    )

    paths = rc.paths(cfg)
    paths.eval_dir.mkdir(parents=True, exist_ok=True)
    per_user_path = paths.eval_dir / "per_user_metrics.parquet"
    # user ids leave the pipeline here (MLflow artifact): tokens when pseudonymization is on
    pseudonymize_table(ev.per_user.drop(columns=["user_index"])).to_parquet(
        per_user_path, index=False
    )
    seconds = time.perf_counter() - t0
    report = evaluation_report(
        ev, ks=cfg.ks, warm=warm, n_catalog=n_catalog, champion_version=champion_version,
        champion_comparison=_champion_comparison(cfg, champion_version, cutoff), per_user_path=str(per_user_path),
        settings=_settings(cfg, cutoff, heavy_min, int(head[:n_catalog].sum())), seconds=seconds,
    )
    write_json(paths.eval_report, report)
    _log_evaluation(cfg, model, parts, report, champion_version, paths.eval_dir)
    log.info(
        "evaluated %d models on %d holdout users (%d warm, %d cold) in %.2fs "
        "(inputs %.2fs, lists %.2fs, metrics + slices + bootstrap %.2fs): %s = %s",
        len(lists), len(users), int(warm.sum()), int((~warm).sum()), seconds, t_inputs,
        t_lists - t_inputs, ev.seconds, cfg.gate_metric,
        {name: round(m.get(cfg.gate_metric, float("nan")), 4) for name, m in ev.metrics.items()},
    )
    del ev, lists, relevant
    return {"report": str(paths.eval_report), "metrics": report["metrics"], "champion_version": champion_version}


def _lists(
    cfg: PipelineConfig, rc: RunContext, inputs: HoldoutInputs, candidate_bundle: ModelBundle
) -> tuple[dict[str, Any], str | None]:
    """Every model's top-``max_k`` lists in the eval item space (the candidate's item indices
    come first, so its lists need no mapping; one seen matrix serves the candidate and both
    baselines) and the champion's version (None without a champion)."""
    from include.recsys.data.source import read_segments
    from include.recsys.scoring.baselines import popularity_order
    from include.recsys.backends.base import get as backend
    from include.recsys.scoring.recommend import ranked_filtered
    from include.recsys.tracking.registry import CHAMPION, download_bundle

    n = cfg.max_k
    segments = read_segments(cfg)
    # the holdout users' lists come from the run's engine (backend=spark: scored per partition
    # on the executors); the metrics are then computed here over every list, exactly
    engine = backend(cfg.backend)
    lists = {
        "candidate": engine.score(
            candidate_bundle, inputs.users, inputs.seen, n, user_segments=segments, cfg=cfg
        ).items,
        "popularity": ranked_filtered(candidate_bundle.popular_order, inputs.seen, n),
        "recent_popularity": ranked_filtered(
            popularity_order(inputs.recent, candidate_bundle.item_popularity), inputs.seen, n
        ),
    }
    got = download_bundle(cfg, CHAMPION, rc.paths(cfg).champion)
    if got is None:
        return lists, None
    champion_version, champion_bundle = got
    champion = engine.score(
        champion_bundle, inputs.users, inputs.seen_for(champion_bundle), n, user_segments=segments, cfg=cfg
    )
    lists["champion"] = inputs.to_eval_space(champion.items, champion_bundle.item_ids)
    return lists, champion_version


def _settings(cfg: PipelineConfig, cutoff: pd.Timestamp, heavy_min: int, n_head_items: int) -> dict[str, Any]:
    """The report's ``settings``: what the slices and the bootstrap were computed with."""
    return {
        "cutoff": cutoff.isoformat(),
        "recent_days": cfg.recent_days,
        "heavy_quantile": cfg.eval_heavy_quantile,
        "heavy_min_items": heavy_min,
        "new_user_days": cfg.eval_new_user_days,
        "head_share": cfg.eval_head_share,
        "n_head_items": n_head_items,
        "bootstrap_samples": cfg.bootstrap_samples,
        "bootstrap_confidence": cfg.bootstrap_confidence,
        "bootstrap_seed": cfg.seed,
    }


def _log_evaluation(
    cfg: PipelineConfig, model: dict[str, Any], parts: dict[str, Any], report: dict[str, Any],
    champion_version: str | None, eval_dir: Path,
) -> None:
    """The report's figures, the evaluation folder and the holdout's lineage into the run's
    MLflow run."""
    from include.recsys.tracking import lineage
    from include.recsys.tracking.runs import log_to_run

    log_to_run(
        cfg,
        model["mlflow_run_id"],
        metrics=_eval_mlflow_metrics(report),
        tags={"champion_version_evaluated": champion_version or "none"},
        artifacts={"evaluation": eval_dir},
    )
    lineage.log_holdout(cfg, model["mlflow_run_id"], parts)
