"""The tuning stages: ``plan_trials`` (whether this run tunes, and its trials), ``run_trial``
(one mapped task each) and ``select_best`` (the configuration ``train`` refits with). The
search itself is :mod:`include.recsys.tuning.search`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from include.recsys.config.settings import PipelineConfig
from include.recsys.core.io import read_json, write_json
from include.recsys.core.run import RunContext

log = logging.getLogger(__name__)


def _tuning_dir(cfg: PipelineConfig, rc: RunContext) -> Path:
    d = rc.paths(cfg).tuning
    d.mkdir(parents=True, exist_ok=True)
    return d


def plan_trials(
    cfg: PipelineConfig, rc: RunContext, parts: dict[str, Any], snap: dict[str, Any]
) -> list[dict[str, Any]]:
    """Decide whether this run tunes; if so, write the tuning split and return one dict per trial.

    Tuning runs when asked (``tune``), after a gate FAIL (``tune_on_decay``) or on the
    ``tune_every_days`` cadence (see :func:`include.recsys.tuning.search.decide`); otherwise the list is
    empty (the mapped ``run_trial`` task expands to nothing) and ``select_best`` reuses the
    newest ``best_config`` of the MLflow experiment, or the config defaults. The decision and
    the incumbent go to ``<work>/tuning/plan.json``.
    """
    from include.recsys.backends.implicit import model_config
    from include.recsys.core.io import write_parquet
    from include.recsys.tracking.runs import get_or_create_run, log_to_run
    from include.recsys.tracking.tuning import last_best_config, last_gate_verdict
    from include.recsys.tuning.search import decide, eligible_families, sample_trials, validation_split

    run_id = get_or_create_run(cfg, rc.run_id, rc.mlflow_tags())
    last = last_best_config(cfg, exclude_run_id=run_id)
    verdict = last_gate_verdict(cfg, rc.dag_id, exclude_run_id=run_id) if cfg.tune_on_decay else None
    do_tune, reason = decide(cfg, rc.end, last, verdict)
    if last is not None:
        incumbent, source = {**model_config(cfg), **last["config"]}, f"reused from MLflow run {last['run_id']}"
    else:
        incumbent, source = model_config(cfg), "defaults"
    folder = _tuning_dir(cfg, rc)
    trials: list[dict[str, Any]] = []
    families, skipped = tuple(cfg.tune_families), {}
    if do_tune:
        cutoff = pd.Timestamp(parts["stats"]["cutoff"])
        train_df = pd.read_parquet(parts["train"])
        try:
            fit_df, valid, val_cutoff = validation_split(train_df, cutoff, cfg.tune_validation_days)
        except ValueError as exc:  # e.g. no event before the validation cutoff
            do_tune, reason = False, f"{reason}; but no tuning: {exc}"
        else:
            if valid.empty or valid["user_id"].isin(fit_df["user_id"]).sum() == 0:
                do_tune, reason = False, f"{reason}; but no tuning: the validation split has no warm users"
    if do_tune:
        fit_path = write_parquet(fit_df, folder / "fit.parquet")
        valid_path = write_parquet(valid, folder / "valid.parquet")
        families, skipped = eligible_families(
            cfg.tune_families, int(fit_df["item_id"].nunique()), cfg.ease_max_items, cfg.backend
        )
        configs = sample_trials(cfg.tune_trials, cfg.seed, incumbent, cfg.tune_max_iterations, families=families)
        trials = [
            {
                "trial": i,
                "params": params,
                "parent_run_id": run_id,
                "fit": str(fit_path),
                "valid": str(valid_path),
                "valid_cutoff": val_cutoff.isoformat(),
            }
            for i, params in enumerate(configs)
        ]
        for old in folder.glob("trial-*.json"):  # results of an earlier try of this run
            old.unlink()
    plan = {
        "tune": do_tune,
        "reason": reason,
        "trials": len(trials),
        "incumbent": incumbent,
        "incumbent_source": source,
        "incumbent_run_id": last["run_id"] if last else None,
        "previous_gate": list(verdict) if verdict else None,
        "families": list(families),
        "families_skipped": skipped,
    }
    write_json(folder / "plan.json", plan)
    log_to_run(cfg, run_id, tags={"tuning_decision": ("tune: " if do_tune else "no tuning: ") + reason[:4000]})
    log.info("tuning %s: %s (%d trials over %s%s; incumbent: %s)", "ON" if do_tune else "OFF", reason, len(trials),
             "/".join(families), f", left out: {skipped}" if skipped else "", source)
    return trials


def run_trial(cfg: PipelineConfig, rc: RunContext, trial: dict[str, Any]) -> dict[str, Any]:
    """One tuning trial (a mapped task): fit with early stopping, an MLflow child run, a JSON."""
    from include.recsys.tracking.runs import end_run, log_to_run, start_child_run
    from include.recsys.tracking.tuning import log_history
    from include.recsys.tuning import search
    from include.recsys.tuning.search import prepare

    name = f"trial-{trial['trial']:03d}"
    child = start_child_run(
        cfg, trial["parent_run_id"], name,
        params={f"trial.{k}": v for k, v in trial["params"].items()},
        tags={"tuning_trial": str(trial["trial"])},
    )
    data = prepare(
        pd.read_parquet(trial["fit"]),
        pd.read_parquet(trial["valid"]),
        pd.Timestamp(trial["valid_cutoff"]),
        max_eval_users=cfg.tune_max_eval_users,
        seed=cfg.seed,
    )
    result = search.run_trial(data, cfg, trial["params"], trial=trial["trial"])
    log_history(cfg, child, result.history)
    log_to_run(
        cfg, child,
        metrics={
            "valid_ndcg_at_10_best": result.best_metric if result.ok else -1.0,
            "best_iteration": result.best_iteration,
            "trial_seconds": result.seconds,
            "valid_users": data.n_eval_users,
        },
        tags={"stopped_early": str(result.stopped_early), **({"trial_error": result.error[:4000]} if result.error else {})},
    )
    end_run(cfg, child, "FINISHED" if result.ok else "FAILED")
    out = write_json(_tuning_dir(cfg, rc) / f"{name}.json", {**result.to_dict(), "mlflow_run_id": child})
    return {"trial": trial["trial"], "ok": result.ok, "best_metric": result.best_metric, "path": str(out)}


def select_best(cfg: PipelineConfig, rc: RunContext, trials: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The configuration ``train`` refits with, and where it came from.

    Tuned now: the best trial (validation NDCG@10; its early-stopped iteration count) and the
    run is tagged ``best_config=true`` for later runs to reuse. Otherwise the plan's
    incumbent: reused from an earlier run, or the config defaults. Trials that failed are
    skipped; if all failed, the incumbent is used and the log says so.
    """
    from include.recsys.tracking.runs import get_or_create_run, log_to_run
    from include.recsys.tracking.tuning import BEST_JSON_TAG, BEST_TAG, TUNED_END_TAG
    from include.recsys.tuning import search

    folder = _tuning_dir(cfg, rc)
    if not (folder / "plan.json").exists():
        raise FileNotFoundError(f"{folder / 'plan.json'} is missing: plan_trials did not run for {rc.run_id}")
    plan = read_json(folder / "plan.json")
    run_id = get_or_create_run(cfg, rc.run_id, rc.mlflow_tags())
    results = [read_json(p) for p in sorted(folder.glob("trial-*.json"))] if plan["tune"] else []
    best = search.select_best(results)
    tags: dict[str, str] = {}
    metrics: dict[str, float] = {}
    if best is not None:
        config, source = best["config"], "tuned"
        detail = f"tuned now: trial {best['trial']} of {len(results)} (validation ndcg@10 {best['best_metric']:.4f})"
        tags = {
            BEST_TAG: "true",
            BEST_JSON_TAG: json.dumps(config, sort_keys=True),
            TUNED_END_TAG: rc.end.isoformat(),
            "best_trial_run_id": best.get("mlflow_run_id", ""),
        }
        metrics = {
            "tune_best_valid_ndcg_at_10": best["best_metric"],
            "tune_best_iteration": best["best_iteration"],
            "tune_trials_ok": sum(1 for r in results if r.get("ok")),
            "tune_trials": len(results),
            "tune_trial_seconds_sum": sum(r.get("seconds", 0.0) for r in results),
        }
        incumbent = next((r for r in results if r["trial"] == 0 and r.get("ok")), None)
        if incumbent:
            metrics["tune_incumbent_valid_ndcg_at_10"] = incumbent["best_metric"]
        metrics.update(search.best_by_family(results))
    else:
        config = plan["incumbent"]
        source = "reused" if plan["incumbent_run_id"] else "defaults"
        detail = plan["incumbent_source"] + (" (every trial failed)" if plan["tune"] else "")
    family = str(config.get("model_family", "als"))
    tags.update({"config_source": source, "config_source_detail": detail[:4000], "model_family": family})
    if plan.get("families_skipped"):
        tags["tune_families_skipped"] = json.dumps(plan["families_skipped"])[:4000]
    if plan["incumbent_run_id"] and source == "reused":
        tags["config_source_run_id"] = plan["incumbent_run_id"]
    log_to_run(cfg, run_id, tags=tags, metrics=metrics or None)
    out = {"config": config, "source": source, "detail": detail, "reason": plan["reason"]}
    write_json(folder / "best.json", out)
    log.info("configuration for the refit: %s family %s (%s): %s", source, family, detail,
             json.dumps(config, sort_keys=True))
    return {**out, "path": str(folder / "best.json")}
