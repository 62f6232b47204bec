"""The stages of one nightly run, as plain functions (no Airflow import).

Each stage reads the paths the previous stage returned, writes its outputs under the run's
work folder (``<data_dir>/runs/<interval>/<run>/``) and returns a small JSON-able dict of paths
and figures: that dict is what travels through XCom. Re-running a stage overwrites its own
outputs (idempotent); publishing happens at most once per run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.recsys.config import PipelineConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """Who is running: the DAG run and the data interval it is keyed by."""

    dag_id: str
    run_id: str
    interval_start: datetime
    interval_end: datetime
    try_number: int = 1

    @property
    def end(self) -> pd.Timestamp:
        ts = pd.Timestamp(self.interval_end)
        return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")

    @property
    def interval_key(self) -> str:
        return self.end.strftime("%Y%m%dT%H%M%SZ")

    @property
    def run_key(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.run_id)

    @property
    def version(self) -> str:
        """The table version this run may publish: sortable by interval, unique per run."""
        return f"{self.interval_key}-{hashlib.sha1(self.run_id.encode()).hexdigest()[:8]}"

    def work_dir(self, cfg: PipelineConfig) -> Path:
        d = cfg.runs_root / self.interval_key / self.run_key
        d.mkdir(parents=True, exist_ok=True)
        return d

    def data_interval(self) -> dict[str, str]:
        """The run's data interval as UTC ISO strings (``start``, ``end``)."""
        start = pd.Timestamp(self.interval_start)
        start = start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")
        return {"start": start.isoformat(), "end": self.end.isoformat()}

    def mlflow_tags(self) -> dict[str, str]:
        return {
            "dag_id": self.dag_id,
            "airflow_run_id": self.run_id,
            "data_interval_start": str(self.interval_start),
            "data_interval_end": str(self.interval_end),
            "airflow_try_number": str(self.try_number),
        }


def _write_json(path: Path, obj: Any) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)
    return path


def _read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text())


# --- stages ---------------------------------------------------------------------------------


def snapshot(cfg: PipelineConfig, rc: RunContext) -> dict[str, Any]:
    """Window of the source ending at the interval end -> snapshot Parquet + id maps."""
    from include.recsys.data import (
        Window,
        build_indexed_snapshot,
        release_memory,
        write_parquet,
        write_snapshot_parquet,
    )
    from include.recsys.publish import file_sha256

    window = Window.ending_at(rc.end, cfg.window_days)
    snap = build_indexed_snapshot(cfg, window)
    stats = snap.stats
    out = rc.work_dir(cfg) / "snapshot"
    # the rows carry int32 user_idx / item_idx into the sorted id maps written beside them, so
    # later stages join, group and build matrices on integers instead of string ids
    path = write_snapshot_parquet(snap.frame, out / "interactions.parquet")
    write_parquet(snap.users.to_frame("user"), out / "users.parquet")
    write_parquet(snap.items.to_frame("item"), out / "items.parquet")
    del snap
    release_memory()
    return {
        "snapshot": str(path),
        "users": str(out / "users.parquet"),
        "items": str(out / "items.parquet"),
        "window_start": window.start.isoformat(),
        "window_end": window.end.isoformat(),
        "sha256": file_sha256(path),
        "stats": asdict(stats),
    }


def validate_input(cfg: PipelineConfig, rc: RunContext, snap: dict[str, Any]) -> dict[str, Any]:
    """Input contract (GX suite + source stats + drift vs history); DataValidationError on errors.

    Reports and Data Docs go to ``<work>/validation/`` (logged to MLflow by ``train``); the
    statistics are appended to ``<data_dir>/validation_history/<dag_id>.jsonl`` only on success.
    """
    from include.recsys.validate_history import history_path, read_snapshot, validate_snapshot

    df, codes = read_snapshot(snap["snapshot"])  # codes: user_idx/item_idx when the snapshot has them
    folder = rc.work_dir(cfg) / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    report_path = folder / "input_report.json"
    from include.recsys.validate import DataValidationError

    try:
        report, stats = validate_snapshot(
            df,
            snap,
            run_id=rc.run_id,
            history_file=history_path(cfg.data_dir, rc.dag_id),
            source=str(cfg.source),
            window_days=cfg.window_days,
            event_types=list(cfg.event_weights),
            report_path=report_path,
            docs_dir=folder / "data_docs" / "input",
            codes=codes,
        )
    except DataValidationError:
        # a refused snapshot never reaches train: its reports and Data Docs go to MLflow now
        _log_validation_to_mlflow(cfg, rc)
        raise
    del df, codes
    from include.recsys.data import release_memory

    release_memory()
    log.info("input validation: %s", report.summary())
    return {
        "report": str(report_path),
        "success": report.success,
        "warnings": len(report.warnings),
        "counts": report.counts(),
        "data_docs": report.data_docs,
    }


def split(cfg: PipelineConfig, rc: RunContext, snap: dict[str, Any]) -> dict[str, Any]:
    """Time-based holdout of the snapshot -> ``split/train.parquet`` + ``split/holdout.parquet``
    (streamed row group by row group: the snapshot frame is never held whole)."""
    from include.recsys.data import release_memory
    from include.recsys.split import time_split_file

    release_memory()  # what earlier stages of this process left behind
    cutoff = pd.Timestamp(snap["window_end"]) - pd.Timedelta(days=cfg.holdout_days)
    out = rc.work_dir(cfg) / "split"
    stats = time_split_file(snap["snapshot"], cutoff, out / "train.parquet", out / "holdout.parquet")
    release_memory()
    return {
        "train": str(out / "train.parquet"),
        "holdout": str(out / "holdout.parquet"),
        # the id maps the files' user_idx / item_idx index (the snapshot's)
        "users": snap.get("users"),
        "items": snap.get("items"),
        "stats": asdict(stats),
    }


def _tuning_dir(cfg: PipelineConfig, rc: RunContext) -> Path:
    d = rc.work_dir(cfg) / "tuning"
    d.mkdir(parents=True, exist_ok=True)
    return d


def plan_trials(
    cfg: PipelineConfig, rc: RunContext, parts: dict[str, Any], snap: dict[str, Any]
) -> list[dict[str, Any]]:
    """Decide whether this run tunes; if so, write the tuning split and return one dict per trial.

    Tuning runs when asked (``tune``), after a gate FAIL (``tune_on_decay``) or on the
    ``tune_every_days`` cadence (see :func:`include.recsys.tune.decide`); otherwise the list is
    empty (the mapped ``run_trial`` task expands to nothing) and ``select_best`` reuses the
    newest ``best_config`` of the MLflow experiment, or the config defaults. The decision and
    the incumbent go to ``<work>/tuning/plan.json``.
    """
    from include.recsys import registry, tune
    from include.recsys.data import write_parquet
    from include.recsys.train import model_config

    run_id = registry.get_or_create_run(cfg, rc.run_id, rc.mlflow_tags())
    last = tune.last_best_config(cfg, exclude_run_id=run_id)
    verdict = tune.last_gate_verdict(cfg, rc.dag_id, exclude_run_id=run_id) if cfg.tune_on_decay else None
    do_tune, reason = tune.decide(cfg, rc.end, last, verdict)
    if last is not None:
        incumbent, source = {**model_config(cfg), **last["config"]}, f"reused from MLflow run {last['run_id']}"
    else:
        incumbent, source = model_config(cfg), "defaults"
    folder = _tuning_dir(cfg, rc)
    trials: list[dict[str, Any]] = []
    if do_tune:
        cutoff = pd.Timestamp(parts["stats"]["cutoff"])
        train_df = pd.read_parquet(parts["train"])
        try:
            fit_df, valid, val_cutoff = tune.validation_split(train_df, cutoff, cfg.tune_validation_days)
        except ValueError as exc:  # e.g. no event before the validation cutoff
            do_tune, reason = False, f"{reason}; but no tuning: {exc}"
        else:
            if valid.empty or valid["user_id"].isin(fit_df["user_id"]).sum() == 0:
                do_tune, reason = False, f"{reason}; but no tuning: the validation split has no warm users"
    if do_tune:
        fit_path = write_parquet(fit_df, folder / "fit.parquet")
        valid_path = write_parquet(valid, folder / "valid.parquet")
        configs = tune.sample_trials(cfg.tune_trials, cfg.seed, incumbent, cfg.tune_max_iterations)
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
    }
    _write_json(folder / "plan.json", plan)
    registry.log_to_run(cfg, run_id, tags={"tuning_decision": ("tune: " if do_tune else "no tuning: ") + reason[:4000]})
    log.info("tuning %s: %s (%d trials; incumbent: %s)", "ON" if do_tune else "OFF", reason, len(trials), source)
    return trials


def run_trial(cfg: PipelineConfig, rc: RunContext, trial: dict[str, Any]) -> dict[str, Any]:
    """One tuning trial (a mapped task): fit with early stopping, an MLflow child run, a JSON."""
    from include.recsys import registry, tune

    name = f"trial-{trial['trial']:03d}"
    child = registry.start_child_run(
        cfg, trial["parent_run_id"], name,
        params={f"trial.{k}": v for k, v in trial["params"].items()},
        tags={"tuning_trial": str(trial["trial"])},
    )
    data = tune.prepare(
        pd.read_parquet(trial["fit"]),
        pd.read_parquet(trial["valid"]),
        pd.Timestamp(trial["valid_cutoff"]),
        max_eval_users=cfg.tune_max_eval_users,
        seed=cfg.seed,
    )
    result = tune.run_trial(data, cfg, trial["params"], trial=trial["trial"])
    tune.log_history(cfg, child, result.history)
    registry.log_to_run(
        cfg, child,
        metrics={
            "valid_ndcg_at_10_best": result.best_metric if result.ok else -1.0,
            "best_iteration": result.best_iteration,
            "trial_seconds": result.seconds,
            "valid_users": data.n_eval_users,
        },
        tags={"stopped_early": str(result.stopped_early), **({"trial_error": result.error[:4000]} if result.error else {})},
    )
    registry.end_run(cfg, child, "FINISHED" if result.ok else "FAILED")
    out = _write_json(_tuning_dir(cfg, rc) / f"{name}.json", {**result.to_dict(), "mlflow_run_id": child})
    return {"trial": trial["trial"], "ok": result.ok, "best_metric": result.best_metric, "path": str(out)}


def select_best(cfg: PipelineConfig, rc: RunContext, trials: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The configuration ``train`` refits with, and where it came from.

    Tuned now: the best trial (validation NDCG@10; its early-stopped iteration count) and the
    run is tagged ``best_config=true`` for later runs to reuse. Otherwise the plan's
    incumbent: reused from an earlier run, or the config defaults. Trials that failed are
    skipped; if all failed, the incumbent is used and the log says so.
    """
    from include.recsys import registry, tune

    folder = _tuning_dir(cfg, rc)
    if not (folder / "plan.json").exists():
        raise FileNotFoundError(f"{folder / 'plan.json'} is missing: plan_trials did not run for {rc.run_id}")
    plan = _read_json(folder / "plan.json")
    run_id = registry.get_or_create_run(cfg, rc.run_id, rc.mlflow_tags())
    results = [_read_json(p) for p in sorted(folder.glob("trial-*.json"))] if plan["tune"] else []
    best = tune.select_best(results)
    tags: dict[str, str] = {}
    metrics: dict[str, float] = {}
    if best is not None:
        config, source = best["config"], "tuned"
        detail = f"tuned now: trial {best['trial']} of {len(results)} (validation ndcg@10 {best['best_metric']:.4f})"
        tags = {
            tune.BEST_TAG: "true",
            tune.BEST_JSON_TAG: json.dumps(config, sort_keys=True),
            tune.TUNED_END_TAG: rc.end.isoformat(),
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
    else:
        config = plan["incumbent"]
        source = "reused" if plan["incumbent_run_id"] else "defaults"
        detail = plan["incumbent_source"] + (" (every trial failed)" if plan["tune"] else "")
    tags.update({"config_source": source, "config_source_detail": detail[:4000]})
    if plan["incumbent_run_id"] and source == "reused":
        tags["config_source_run_id"] = plan["incumbent_run_id"]
    registry.log_to_run(cfg, run_id, tags=tags, metrics=metrics or None)
    out = {"config": config, "source": source, "detail": detail, "reason": plan["reason"]}
    _write_json(folder / "best.json", out)
    log.info("configuration for the refit: %s (%s): %s", source, detail, json.dumps(config, sort_keys=True))
    return {**out, "path": str(folder / "best.json")}


def train(
    cfg: PipelineConfig,
    rc: RunContext,
    parts: dict[str, Any],
    snap: dict[str, Any],
    best: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit ALS on the training split; log params and timings to this DAG run's MLflow run.

    ``best`` (from :func:`select_best`) sets the model fields, except the ones the run's form
    set explicitly (they win). Without it the run's config is used as is.
    """
    from include.recsys import registry
    from include.recsys.train import model_config, read_training_events
    from include.recsys.train import train as fit

    # MLflow first: an unreachable server fails (and is retried) before an expensive fit
    run_id = registry.get_or_create_run(cfg, rc.run_id, rc.mlflow_tags(), reopen=True)
    from include.recsys.data import IdMap, read_segments

    source, kept = "config", []
    if best:
        from include.recsys.tune import apply_config

        cfg, kept = apply_config(cfg, best["config"])
        source = best.get("source", "tuned")
    # only the columns training uses; the snapshot's integer codes instead of string ids
    coded = bool(parts.get("users") and parts.get("items"))
    cutoff = pd.Timestamp(parts["stats"]["cutoff"]) if parts.get("stats", {}).get("cutoff") else None
    # the leak check runs while reading; event times are kept only for a recency decay
    train_df = read_training_events(
        parts["train"], codes=coded, cutoff=cutoff, need_times=cfg.recency_half_life_days > 0
    )
    id_maps = (IdMap.read(parts["users"], "user"), IdMap.read(parts["items"], "item")) if coded else None
    bundle, stats = fit(train_df, cfg, read_segments(cfg), cutoff=cutoff, id_maps=id_maps)
    del train_df
    bundle_dir = bundle.save(rc.work_dir(cfg) / "model" / "bundle")
    validation = rc.work_dir(cfg) / "validation"  # GX report (+ Data Docs when written there)
    log.info(
        "trained with the %s configuration %s%s", source, json.dumps(model_config(cfg), sort_keys=True),
        f" (form values kept: {kept})" if kept else "",
    )
    registry.log_to_run(
        cfg,
        run_id,
        params=cfg.params_for_mlflow(),
        metrics={
            "train_seconds": stats.fit_seconds,
            "train_total_seconds": stats.total_seconds,
            "train_users": stats.users,
            "train_items": stats.items,
            "train_nnz": stats.nnz,
            "train_iterations": stats.iterations,
            "snapshot_rows": snap["stats"]["rows"],
            "snapshot_duplicates_dropped": snap["stats"]["duplicates_dropped"],
        },
        tags={
            "data_window": f"[{snap['window_start']}, {snap['window_end']})",
            "data_snapshot_sha256": snap["sha256"],
            "id_maps_sha256": bundle.id_maps_hash,
            "config_source": source,  # tuned / reused / defaults (select_best), config (no best)
            "form_overrides_kept": ",".join(kept) or "none",
            **registry.lineage_tags(),
            **rc.mlflow_tags(),
        },
        artifacts={"validation": validation} if validation.exists() else None,
    )
    from include.recsys import lineage  # issue 18: the snapshot as the run's training dataset

    lineage.log_training_snapshot(cfg, run_id, snap)
    return {
        "bundle": str(bundle_dir),
        "mlflow_run_id": run_id,
        "stats": asdict(stats),
        "config": model_config(cfg),
        "config_source": source,
    }


def _gate_k(cfg: PipelineConfig) -> int:
    """The k of the gate metric (``ndcg@10`` -> 10); the smallest k when it has none."""
    tail = str(cfg.gate_metric).rsplit("@", 1)[-1]
    return int(tail) if tail.isdigit() and int(tail) in cfg.ks else min(cfg.ks)


EVAL_DEFINITIONS = (
    "Definitions: include/recsys/evaluate.py (module docstring) and README 'Offline metrics'. "
    "metrics/* are over warm holdout users (training events, known to the candidate), as "
    "before slices existed; cold holdout users get each model's fallback list and are scored "
    "only in slices[*]['activity=cold']. Users without holdout items are excluded; users with "
    "holdout items but no recommendations score 0. precision@k divides by k; map@k and the "
    "ideal DCG use min(k, |relevant|); coverage/gini/popularity_curve are over the top-k "
    "exposure of the whole catalog; novelty uses the share of training users who know an "
    "item; paired = percentile bootstrap CI of mean(candidate - other) per user."
)


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
    :func:`include.recsys.gate.champion_comparison`); None without a champion."""
    if version is None:
        return None
    from include.recsys import registry
    from include.recsys.gate import champion_comparison

    result = champion_comparison(version, registry.model_data(cfg, version), holdout_start)
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
    :mod:`include.recsys.evaluate` for every definition. The holdout, seen and training
    figures come from the split files' integer codes when they carry them
    (:func:`include.recsys.evaluate.holdout_inputs`; string ids otherwise).
    """
    import time

    from include.recsys import privacy, registry
    from include.recsys.data import read_segments
    from include.recsys.evaluate import (
        evaluate_models,
        head_item_mask,
        heavy_threshold,
        holdout_inputs,
        popularity_order,
        user_slice_labels,
    )
    from include.recsys.recommend import ModelBundle, ranked_filtered, recommend

    from include.recsys.data import release_memory

    release_memory()  # what earlier stages of this process left behind
    t0 = time.perf_counter()
    candidate_bundle = ModelBundle.load(model["bundle"])
    stats_cutoff = (parts.get("stats") or {}).get("cutoff")
    inputs = holdout_inputs(
        parts["train"],
        parts["holdout"],
        candidate_bundle,
        recent_days=cfg.recent_days,
        cutoff=pd.Timestamp(stats_cutoff) if stats_cutoff else None,
        users_map=parts.get("users"),
        items_map=parts.get("items"),
    )
    users, warm, relevant, cutoff = inputs.users, inputs.warm, inputs.relevant, inputs.cutoff
    t_inputs = time.perf_counter() - t0
    n = cfg.max_k
    n_catalog = len(candidate_bundle.item_ids)
    segments = read_segments(cfg)

    # every list in the eval item space, where the candidate's item indices come first (its
    # lists need no mapping); one seen matrix serves the candidate and both baselines
    lists = {
        "candidate": recommend(
            candidate_bundle, users, inputs.seen, n, user_segments=segments
        ).items,
        "popularity": ranked_filtered(candidate_bundle.popular_order, inputs.seen, n),
        "recent_popularity": ranked_filtered(
            popularity_order(inputs.recent, candidate_bundle.item_popularity), inputs.seen, n
        ),
    }
    champion_version = None
    got = registry.download_bundle(cfg, registry.CHAMPION, rc.work_dir(cfg) / "champion")
    if got is not None:
        champion_version, champion_bundle = got
        champion = recommend(
            champion_bundle, users, inputs.seen_for(champion_bundle), n, user_segments=segments
        )
        lists["champion"] = inputs.to_eval_space(champion.items, champion_bundle.item_ids)
    t_lists = time.perf_counter() - t0

    heavy_min = heavy_threshold(inputs.train_counts, cfg.eval_heavy_quantile)
    labels = user_slice_labels(
        inputs.user_counts,
        inputs.first_ts,
        cutoff,
        heavy_min=heavy_min,
        new_user_days=cfg.eval_new_user_days,
    )
    del inputs
    head = head_item_mask(candidate_bundle.item_popularity, cfg.eval_head_share, n_items=relevant.shape[1])
    ev = evaluate_models(
        lists,
        relevant,
        cfg.ks,
        warm=warm,
        labels=labels,
        head_items=head,
        user_ids=users,
        n_catalog=n_catalog,
        item_popularity=candidate_bundle.item_popularity,
        n_train_users=len(candidate_bundle.user_ids),
        curve_k=_gate_k(cfg),
        reference="candidate",
        n_boot=cfg.bootstrap_samples,
        confidence=cfg.bootstrap_confidence,
        seed=cfg.seed,
    )

    out = rc.work_dir(cfg) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    per_user_path = out / "per_user_metrics.parquet"
    # user ids leave the pipeline here (MLflow artifact): tokens when pseudonymization is on
    privacy.pseudonymize_table(ev.per_user.drop(columns=["user_index"])).to_parquet(
        per_user_path, index=False
    )
    seconds = time.perf_counter() - t0
    report = {
        "ks": cfg.ks,
        "n_users": int(warm.sum()),
        "n_users_cold": int((~warm).sum()),
        "n_catalog": n_catalog,
        "champion_version": champion_version,
        "champion_comparison": _champion_comparison(cfg, champion_version, cutoff),
        "metrics": ev.metrics,
        "popularity_curve": ev.curves,
        "slices": ev.slices,
        "paired": ev.paired,
        "per_user": str(per_user_path),
        "definitions": EVAL_DEFINITIONS,
        "settings": {
            "cutoff": cutoff.isoformat(),
            "recent_days": cfg.recent_days,
            "heavy_quantile": cfg.eval_heavy_quantile,
            "heavy_min_items": heavy_min,
            "new_user_days": cfg.eval_new_user_days,
            "head_share": cfg.eval_head_share,
            "n_head_items": int(head[:n_catalog].sum()),
            "bootstrap_samples": cfg.bootstrap_samples,
            "bootstrap_confidence": cfg.bootstrap_confidence,
            "bootstrap_seed": cfg.seed,
        },
        "notes": ev.notes,
        "seconds": round(seconds, 3),
    }
    _write_json(out / "report.json", report)
    registry.log_to_run(
        cfg,
        model["mlflow_run_id"],
        metrics=_eval_mlflow_metrics(report),
        tags={"champion_version_evaluated": champion_version or "none"},
        artifacts={"evaluation": out},
    )
    from include.recsys import lineage  # issue 18: the holdout as the run's evaluation dataset

    lineage.log_holdout(cfg, model["mlflow_run_id"], parts)
    log.info(
        "evaluated %d models on %d holdout users (%d warm, %d cold) in %.2fs "
        "(inputs %.2fs, lists %.2fs, metrics + slices + bootstrap %.2fs): %s = %s",
        len(lists), len(users), int(warm.sum()), int((~warm).sum()), seconds, t_inputs,
        t_lists - t_inputs, ev.seconds, cfg.gate_metric,
        {name: round(m.get(cfg.gate_metric, float("nan")), 4) for name, m in ev.metrics.items()},
    )
    del ev, lists, relevant
    release_memory()
    return {"report": str(out / "report.json"), "metrics": report["metrics"], "champion_version": champion_version}


def gate(
    cfg: PipelineConfig,
    rc: RunContext,
    ev: dict[str, Any],
    model: dict[str, Any],
    snap: dict[str, Any] | None = None,
    parts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Apply the gate spec to the evaluation report: PASS / FAIL / SKIPPED with a rule table.

    Writes ``gate.json`` and the run card, logs both to MLflow (tags ``gate_verdict``,
    ``gate_forced``, one ``gate_rule.<name>`` per rule) and raises GateFailed on FAIL, unless
    ``force_publish`` is set: then a FAIL or SKIPPED verdict is kept but marked ``forced`` (a
    WARNING in the log, Slack warned by the DAG) and the run goes on to publish; the output
    validation still stands between the table and CURRENT.
    """
    from include.recsys import registry
    from include.recsys.gate import FAIL, PASS, GateFailed, decide, force, load_spec, mlflow_tags, spec_sha256

    spec = load_spec(cfg)
    report_path = Path(ev.get("report") or rc.work_dir(cfg) / "eval" / "report.json")
    report = _read_json(report_path) if report_path.exists() else {"metrics": ev["metrics"]}
    result = decide(spec, report)
    if cfg.force_publish and result.verdict != PASS:
        force(result)
        log.warning(
            "FORCED PUBLISH: gate %s on %s overridden by force_publish=true (run %s); failed rules: %s",
            result.verdict, result.metric, rc.run_id, [r.name for r in result.failed()] or "none",
        )
    path = _write_json(
        rc.work_dir(cfg) / "gate.json",
        {**result.to_dict(), "spec_path": str(cfg.gate_spec_path), "spec_sha256": spec_sha256(cfg.gate_spec_path)},
    )
    card = write_run_card(cfg, rc, model.get("mlflow_run_id"), snap=snap, parts=parts, code_version=registry.code_version())
    registry.log_to_run(
        cfg,
        model["mlflow_run_id"],
        tags=mlflow_tags(result),
        artifacts={"gate": path, **({"run_card": card} if card else {})},
    )
    log.log(logging.WARNING if result.verdict != PASS else logging.INFO, "%s", result.explain())
    if result.verdict == FAIL and not result.forced:
        err = GateFailed(result)
        err.report_path = str(card or path)  # the run card, named in the Slack alert
        raise err
    return {**result.to_dict(), "path": str(path), "run_card": str(card) if card else None}


RUN_CARD = "run_card.html"  # in the run's work folder (include/recsys/report.py)


def write_run_card(
    cfg: PipelineConfig, rc: RunContext, mlflow_run_id: str | None = None, **kwargs: Any
) -> Path | None:
    """(Re)write ``<work>/run_card.html`` (+ ``run_card.json``) from the run's work folder;
    best effort: a broken card is logged and never changes what the run does."""
    from include.recsys import report

    try:
        return report.write_run_card(
            rc.work_dir(cfg),
            cfg.runs_root,
            dag_id=rc.dag_id,
            run_id=rc.run_id,
            interval_start=rc.interval_start,
            interval_end=rc.interval_end,
            mlflow_run_id=mlflow_run_id,
            mlflow_experiment=cfg.mlflow_experiment,
            model_name=cfg.model_name,
            **kwargs,
        )
    except Exception:
        log.warning("could not write the run card", exc_info=True)
        return None


def _serving_seen(bundle: Any, snapshot_path: Path, snap: dict[str, Any] | None) -> Any:
    """What :func:`include.recsys.recommend.seen_matrix` needs for the serving bundle: every
    snapshot (user, item) pair of the bundle's users and items.

    A snapshot with the int32 ``user_idx`` / ``item_idx`` columns (and its id maps beside it)
    gives the CSR directly: the bundle's ids are looked up once per distinct id (the maps), the
    rows are two integer gathers. An older snapshot without them gives the string pairs.
    """
    import pyarrow.parquet as pq

    from include.recsys.data import CODE_COLUMNS, IdMap, csr_from_codes

    maps = [
        Path((snap or {}).get(name) or snapshot_path.with_name(f"{name}.parquet")) for name in ("users", "items")
    ]
    names = set(pq.read_schema(snapshot_path).names)
    if set(CODE_COLUMNS) <= names and all(m.exists() for m in maps):
        users, items = IdMap.read(maps[0], "user"), IdMap.read(maps[1], "item")
        # snapshot code -> bundle index (-1: not in the model); the extra last slot takes code -1
        rows = np.append(bundle.user_ids.get_indexer(users.ids), -1).astype(np.int32)
        cols = np.append(bundle.item_ids.get_indexer(items.ids), -1).astype(np.int32)
        table = pq.read_table(snapshot_path, columns=list(CODE_COLUMNS))
        u, i = (
            (col.fill_null(-1) if col.null_count else col).to_numpy()
            for col in (table.column(c) for c in CODE_COLUMNS)
        )
        del table
        for name, codes, n in (("user_idx", u, len(users)), ("item_idx", i, len(items))):
            if len(codes) and (codes.min() < -1 or codes.max() >= n):
                raise ValueError(f"{snapshot_path}: {name} outside [-1, {n}) of the id map beside it")
        return csr_from_codes(rows[u], cols[i], None, (len(bundle.user_ids), len(bundle.item_ids)))
    # string ids as categoricals: seen_matrix's id lookups run once per distinct id
    columns = ["user_id", "item_id"]
    return pd.read_parquet(snapshot_path, columns=columns, read_dictionary=columns)


def register(
    cfg: PipelineConfig, rc: RunContext, model: dict[str, Any], snap: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Register the candidate in the MLflow registry, tag the version, point ``challenger`` at it.

    What is registered is the *serving* bundle: the trained factors with a seen-items matrix of
    every snapshot interaction of the model's users (the trained bundle's holds the training
    split only). So ``models:/<name>@champion`` filters exactly what the published table
    filters and returns the same top-N for the users the model knows.
    """
    from dataclasses import replace

    from include.recsys import registry
    from include.recsys.recommend import ModelBundle, seen_matrix

    from include.recsys.data import release_memory

    release_memory()  # what earlier stages of this process left behind
    work = rc.work_dir(cfg)
    snapshot_path = Path(snap["snapshot"]) if snap else work / "snapshot" / "interactions.parquet"
    bundle = ModelBundle.load(model["bundle"])
    pairs = _serving_seen(bundle, snapshot_path, snap)  # a CSR, or string pairs (old snapshot)
    serving_dir = replace(bundle, seen=seen_matrix(bundle, bundle.user_ids, pairs)).save(
        work / "model" / "serving_bundle"
    )
    del pairs, bundle
    release_memory()
    run_id = model["mlflow_run_id"]
    version = registry.register_model(cfg, run_id, serving_dir)

    verdict = _read_json(work / "gate.json") if (work / "gate.json").exists() else {}
    report = _read_json(work / "eval" / "report.json") if (work / "eval" / "report.json").exists() else {}
    metric = verdict.get("metric") or cfg.gate_metric
    values = {name: m.get(metric) for name, m in (report.get("metrics") or {}).items()}
    run_tags = registry.run_tags(cfg, run_id)
    card = write_run_card(cfg, rc, run_id, snap=snap, model_version=version) or work / RUN_CARD
    forced = bool(verdict.get("forced"))
    tags = {
        "gate_verdict": verdict.get("verdict", "unknown"),
        "gate_forced": str(forced).lower(),
        "gate_metric": metric,
        **{f"{metric.replace('@', '_at_')}.{name}": v for name, v in values.items() if v is not None},
        "champion_version_evaluated": report.get("champion_version") or "none",
        **_model_data_tags(cfg, rc, snap, report),
        "data_window": run_tags.get("data_window", ""),
        "data_snapshot_sha256": run_tags.get("data_snapshot_sha256", ""),
        "airflow_dag_id": rc.dag_id,
        "airflow_run_id": rc.run_id,
        "mlflow_run_id": run_id,
        "code_version": run_tags.get("code_version", registry.code_version()),
        "run_card": str(card),
        "run_card_status": "present" if card.exists() else "pending",
        "run_card_artifact": f"runs:/{run_id}/run_card/{RUN_CARD}",
    }
    shown = ", ".join(f"{name} {v:.4f}" for name, v in values.items() if v is not None)
    description = (
        ("FORCED PUBLISH (force_publish=true) despite " if forced else "")
        + f"Gate {tags['gate_verdict']} on {metric} ({shown}). Data window {tags['data_window']}, "
        f"snapshot sha256 {tags['data_snapshot_sha256'][:12]}. Airflow {rc.dag_id} / {rc.run_id}, "
        f"code {tags['code_version']}. Run card: {card}."
    )
    registry.tag_model_version(cfg, version, tags, description)
    registry.set_alias(
        cfg, registry.CHALLENGER, version,
        reason=(f"FORCED past gate {tags['gate_verdict']}" if forced else "passed the gate")
        + f" on {metric} ({shown})",
        actor=rc.run_id,
    )
    return {"model_name": cfg.model_name, "model_version": version, "serving_bundle": str(serving_dir)}


def _model_data_tags(
    cfg: PipelineConfig, rc: RunContext, snap: dict[str, Any] | None, report: dict[str, Any]
) -> dict[str, str]:
    """The data of the registered version (``registry.DATA_TAGS``): the Airflow data interval,
    the snapshot window and the training end (the split cutoff: the holdout starts there).
    The champion guard and the fair champion comparison read them back."""
    window_end = (snap or {}).get("window_end") or rc.end.isoformat()
    window_start = (snap or {}).get("window_start") or (rc.end - pd.Timedelta(days=cfg.window_days)).isoformat()
    cutoff = (report.get("settings") or {}).get("cutoff")
    if not cutoff:  # same rule as the split stage
        cutoff = (pd.Timestamp(window_end) - pd.Timedelta(days=cfg.holdout_days)).isoformat()
    interval = rc.data_interval()
    return {
        "data_interval_start": interval["start"],
        "data_interval_end": interval["end"],
        "data_window_start": str(window_start),
        "data_window_end": str(window_end),
        "train_data_end": str(cutoff),
    }


def _already_served(cfg: PipelineConfig, rc: RunContext) -> bool:
    from include.recsys.publish import read_current

    if read_current(cfg.recommendations_root) == rc.version:  # a rerun after this run published
        log.info("version %s is already served; not recomputing it", rc.version)
        return True
    return False


def _sorted_user_codes(path: str | Path) -> tuple[np.ndarray, pd.Index]:
    """``pd.factorize(user_id, sort=True)`` of a Parquet file's ``user_id`` column: codes in
    sorted id order (-1 for a null id) and the sorted ids. String ids are read as Parquet
    dictionaries (integer indices plus each distinct id once), not as a 20M-row string column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from include.recsys.split import dictionary_codes

    col = pq.read_table(path, columns=["user_id"], read_dictionary=["user_id"]).unify_dictionaries()["user_id"]
    if not pa.types.is_dictionary(col.type) or col.num_chunks == 0:  # e.g. integer ids
        codes, users = pd.factorize(col.to_pandas(), sort=True)
        return codes, pd.Index(users)
    codes, n = dictionary_codes(col)
    ids = pd.Index(col.chunk(0).dictionary.to_pandas())
    used = np.bincount(codes[codes >= 0], minlength=n) > 0  # a dictionary may hold unused ids
    order = np.flatnonzero(used)[ids[used].argsort()]
    rank = np.full(n + 1, -1, np.int64)  # last slot: null (-1) stays -1
    rank[order] = np.arange(len(order))
    return rank[codes], ids[order]


def _coded(snap: dict[str, Any]) -> bool:
    """Whether the snapshot carries ``user_idx`` / ``item_idx`` into its id maps (pipeline.snapshot)."""
    import pyarrow.parquet as pq

    from include.recsys.data import CODE_COLUMNS

    names = pq.read_schema(snap["snapshot"]).names
    return bool(snap.get("users") and snap.get("items")) and all(c in names for c in CODE_COLUMNS)


def _plan_coded_shards(cfg: PipelineConfig, rc: RunContext, snap: dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`plan_shards` on the snapshot's integer codes: the sorted user map is the
    snapshot's (``user_idx`` indexes it), so a shard is a contiguous code range and its seen file
    holds its rows' ``user_idx`` / ``item_idx`` (no string column is read or written)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from include.recsys.data import CODE_COLUMNS, IdMap, release_memory

    n_users = len(IdMap.read(snap["users"], "user"))
    pairs = pq.read_table(snap["snapshot"], columns=list(CODE_COLUMNS))
    codes = pairs["user_idx"].to_numpy()
    shards = _write_seen_shards(
        cfg, rc, n_users, lambda lo, hi: pairs.filter(pa.array((codes >= lo) & (codes < hi))),
        {"users": snap["users"], "items": snap["items"]},
    )
    del pairs, codes
    release_memory()
    return shards


def _write_seen_shards(
    cfg: PipelineConfig, rc: RunContext, n_users: int, rows_of: Any, fields: dict[str, Any]
) -> list[dict[str, Any]]:
    """``cfg.shards`` contiguous ranges of the ``n_users`` sorted users; each range's seen pairs
    (``rows_of(lo, hi)``, an Arrow table) go to ``precompute/seen-<shard>.parquet``. Starts
    from an empty staging folder unless the run's version is already served."""
    import pyarrow.parquet as pq

    from include.recsys.publish import discard_staged

    folder = rc.work_dir(cfg) / "precompute"
    folder.mkdir(parents=True, exist_ok=True)
    if not _already_served(cfg, rc):  # a fresh plan starts from an empty staging folder
        discard_staged(cfg.recommendations_root, rc.version)
    n = max(1, min(cfg.shards, n_users))
    bounds = np.linspace(0, n_users, n + 1).astype(int)
    shards = []
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        seen = folder / f"seen-{i:05d}.parquet"
        tmp = seen.with_name(f".{seen.name}.tmp")
        pq.write_table(rows_of(lo, hi), tmp)
        tmp.replace(seen)
        shards.append({"index": i, "lo": int(lo), "hi": int(hi), **fields, "seen": str(seen)})
    log.info("%d users in %d shard(s) of ~%d users", n_users, n, n_users // n)
    return shards


def plan_shards(cfg: PipelineConfig, rc: RunContext, snap: dict[str, Any]) -> list[dict[str, Any]]:
    """Split the snapshot's users (sorted) into ``cfg.shards`` contiguous ranges.

    Each range becomes one mapped ``score_shard`` task writing one part file, so the part
    files are globally sorted by user_id and workers score shards in parallel. The snapshot's
    (user, item) pairs are read once here and split into one ``seen-<shard>.parquet`` per
    shard, so a shard reads only its own users' pairs (not the whole snapshot again).
    """
    from include.recsys.data import release_memory, write_parquet

    import pyarrow.parquet as pq

    release_memory()  # what earlier stages of this process left behind
    if _coded(snap):
        return _plan_coded_shards(cfg, rc, snap)
    # the pairs stay an Arrow table (no pandas string columns for 20M rows); users are grouped
    # by a stable argsort of integer codes (sorting the id strings themselves is much slower),
    # and each shard takes only its own rows (no sorted copy of the whole table)
    codes, users = _sorted_user_codes(snap["snapshot"])
    rows = np.flatnonzero(codes >= 0)  # a null user has no list
    order = rows[np.argsort(codes[rows], kind="stable")]  # snapshot order kept inside a user
    starts = np.r_[0, np.cumsum(np.bincount(codes[rows], minlength=len(users)))]
    del codes, rows
    pairs = pq.read_table(snap["snapshot"], columns=["user_id", "item_id"])
    path = write_parquet(pd.DataFrame({"user_id": users}), rc.work_dir(cfg) / "precompute" / "users.parquet")
    shards = _write_seen_shards(
        cfg, rc, len(users), lambda lo, hi: pairs.take(order[starts[lo] : starts[hi]]), {"users": str(path)}
    )
    del pairs, order
    release_memory()
    return shards


def _coded_seen(shard: dict[str, Any], users: pd.Index, bundle: Any):
    """The shard's seen CSR (its users x the model's items) from its ``user_idx`` / ``item_idx``."""
    from include.recsys.data import IdMap, csr_from_codes

    pairs = pd.read_parquet(shard["seen"])
    # snapshot item index -> model item index (-1: an item the model was not trained on)
    to_model = bundle.item_ids.get_indexer(IdMap.read(shard["items"], "item").ids)
    rows = pairs["user_idx"].to_numpy().astype(np.int64) - shard["lo"]
    cols = np.where(pairs["item_idx"].to_numpy() >= 0, to_model[pairs["item_idx"].to_numpy()], -1)
    return csr_from_codes(rows, cols, None, (len(users), len(bundle.item_ids)))


def item_rules(cfg: PipelineConfig, rc: RunContext) -> Any:
    """The run's business rules (:mod:`include.recsys.rules`), None when none are configured.

    Resolved once per run at the data interval end (never now()) and frozen in the work folder,
    so every shard, the fallback lists, the output checks and the similar-items table use the
    same exclusions. A bad rules file raises :class:`~include.recsys.rules.RulesError` (a
    SourceError: no retries) before anything is written, unless ``item_rules_on_error`` is
    ``keep_previous`` and a last good copy exists under ``<data_dir>/rules``.
    """
    if not cfg.item_rules_path:
        return None
    from include.recsys import rules

    folder = rc.work_dir(cfg) / "rules"
    frozen = rules.read_resolved(folder)
    if frozen is not None:
        return frozen
    loaded = rules.load_for_run(cfg.item_rules_path, rc.end, on_error=cfg.item_rules_on_error,
                                keep_dir=cfg.data_dir / "rules", surface=cfg.item_rules_surface)
    return rules.save_resolved(loaded, folder)


def score_shard(
    cfg: PipelineConfig,
    rc: RunContext,
    snap: dict[str, Any],
    model: dict[str, Any],
    reg: dict[str, Any],
    shard: dict[str, Any],
) -> dict[str, Any]:
    """Top-N for one shard of users (seen items filtered) -> one part file of the version."""
    from include.recsys.publish import write_part
    from include.recsys.recommend import ModelBundle, recommend

    if _already_served(cfg, rc):
        return {"index": shard["index"], "skipped": True}
    rules = item_rules(cfg, rc)  # first: a bad rules file fails before any part is written
    bundle = ModelBundle.load(model["bundle"])
    users = pd.Index(pd.read_parquet(shard["users"])["user_id"].iloc[shard["lo"] : shard["hi"]])
    if shard.get("items"):  # codes into the snapshot's id maps (_plan_coded_shards)
        seen = _coded_seen(shard, users, bundle)
    elif shard.get("seen"):  # this shard's pairs, split out by plan_shards
        seen = pd.read_parquet(shard["seen"])
    else:  # a shard planned before seen files existed
        df = pd.read_parquet(snap["snapshot"], columns=["user_id", "item_id"])
        seen = df.loc[df["user_id"].isin(users)]
    from include.recsys.data import read_segments

    plan = cfg.variant_plan
    arm_users = None
    if plan is not None:  # A/B arms (issue 19): each scored by its own model, the holdout by popularity
        table, arm_users, by_model = _score_variants(cfg, rc, model, reg, plan, bundle, users, seen, rules)
    else:
        recs = recommend(
            bundle, users, seen, cfg.top_n, block_size=cfg.score_block_size,
            user_segments=read_segments(cfg),
            allowed=rules.allowed_mask(bundle.item_ids) if rules is not None else None,
        )
        table = recs.to_frame(bundle).assign(
            model_name=reg["model_name"], model_version=str(reg["model_version"])
        )
        by_model = int(recs.from_model.sum())
        del recs
    from include.recsys import privacy

    # where ids leave the pipeline: keyed-HMAC tokens when RECSYS_PSEUDONYMIZE_USER_IDS is on
    table = privacy.pseudonymize_table(table)
    part = write_part(cfg.recommendations_root, rc.version, shard["index"], table, **_table_columns(plan))
    del table, seen, bundle
    from include.recsys.data import release_memory

    release_memory()
    out = {**part, "index": shard["index"], "users_by_model": by_model}
    return out if arm_users is None else {**out, "variant_users": arm_users}


def _table_columns(plan: Any) -> dict[str, Any]:
    """write_part / finalize_version keywords: the ``variant`` column only with variants."""
    from include.recsys.publish import TABLE_COLUMNS
    from include.recsys.variants import COLUMN

    return {} if plan is None else {"columns": [*TABLE_COLUMNS, COLUMN]}


def _variant_models(cfg: PipelineConfig, rc: RunContext, model: dict[str, Any], reg: dict[str, Any],
                    plan: Any) -> dict[str, tuple[str, str]]:
    """Variant name -> (bundle folder, model version), resolved once per run (aliases read
    when the first shard runs) and frozen in ``<work>/variants/models.json``."""
    import os

    from include.recsys import registry
    from include.recsys.variants import VariantError

    folder = rc.work_dir(cfg) / "variants"
    frozen = folder / "models.json"
    if frozen.exists():
        return {k: tuple(v) for k, v in _read_json(frozen).items()}
    out: dict[str, tuple[str, str]] = {}
    for v in plan.variants:
        if v.model == "candidate":
            out[v.name] = (str(model["bundle"]), str(reg["model_version"]))
            continue
        kind, _, ref = v.model.partition(":")
        version = registry.alias_version(cfg, ref) if kind == "alias" else ref
        if version is None:
            raise VariantError(f"variant {v.name}: model alias {ref!r} of {cfg.model_name} does not exist; "
                               "point it at a version, or change RECSYS_AB_VARIANTS")
        out[v.name] = (str(_download_version(cfg, str(version), folder / f"v{version}")), str(version))
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".models.{os.getpid()}.json"
    tmp.write_text(json.dumps(out))
    try:
        os.link(tmp, frozen)  # first writer wins: every shard scores with the same versions
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return {k: tuple(v) for k, v in _read_json(frozen).items()}


def _download_version(cfg: PipelineConfig, version: str, dst: Path) -> Path:
    """The bundle folder of registered model ``version`` (downloaded once into ``dst``)."""
    import os
    import shutil

    from include.recsys import registry
    from include.recsys.variants import VariantError

    if (dst / "bundle").exists():
        return dst / "bundle"
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}")
    try:
        local = registry._mlflow(cfg).artifacts.download_artifacts(
            artifact_uri=f"models:/{cfg.model_name}/{version}", dst_path=str(tmp))
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if registry._is_unreachable(exc):
            raise
        raise VariantError(f"model version {version} of {cfg.model_name} cannot be loaded for a variant: {exc}") from exc
    dst.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(registry._bundle_folder(Path(local)), dst / "bundle")
    except OSError:  # another shard finished first
        pass
    shutil.rmtree(tmp, ignore_errors=True)
    return dst / "bundle"


def _score_variants(cfg: PipelineConfig, rc: RunContext, model: dict[str, Any], reg: dict[str, Any],
                    plan: Any, bundle: Any, users: pd.Index, seen: Any, rules: Any) -> tuple[pd.DataFrame, dict, int]:
    """One shard's lists with the ``variant`` column (see :func:`include.recsys.variants.score`)."""
    from include.recsys import variants
    from include.recsys.data import read_segments
    from include.recsys.recommend import ModelBundle

    models = _variant_models(cfg, rc, model, reg, plan)
    bundles = {name: (bundle if path == str(model["bundle"]) else ModelBundle.load(path), version)
               for name, (path, version) in models.items()}
    # a seen CSR is in the candidate's item space; variants.score remaps it for other bundles
    return variants.score(
        bundles, plan, users, seen, cfg.top_n, model_name=reg["model_name"],
        baseline_of=(bundle, str(reg["model_version"])),
        allowed_of=(lambda b: rules.allowed_mask(b.item_ids)) if rules is not None else None,
        block_size=cfg.score_block_size, user_segments=read_segments(cfg),
    )


def assemble_version(
    cfg: PipelineConfig,
    rc: RunContext,
    snap: dict[str, Any],
    model: dict[str, Any],
    reg: dict[str, Any],
    ev: dict[str, Any],
    verdict: dict[str, Any],
    parts: list[dict[str, Any]],
) -> dict[str, Any]:
    """Fallback list + manifest, then the staged parts become ``version=<id>/`` (unpublished)."""
    from include.recsys.publish import finalize_version, version_dir

    root = cfg.recommendations_root
    if _already_served(cfg, rc):
        return {"version": rc.version, "path": str(version_dir(root, rc.version)), "rows": None, "users": None}
    from include.recsys.recommend import ModelBundle

    parts = list(parts)
    # the fallback lists come from the model's training popularity, global and per segment,
    # exactly as the table's own fallback rows do
    bundle = ModelBundle.load(model["bundle"])
    rules = item_rules(cfg, rc)
    allowed = rules.allowed_mask(bundle.item_ids) if rules is not None else None
    lists = [bundle.fallback_list(cfg.top_n, allowed=allowed).assign(segment="")]
    for seg in bundle.segment_ids if bundle.segment_ids is not None else []:
        lists.append(bundle.fallback_list(cfg.top_n, seg, allowed=allowed).assign(segment=str(seg)))
    fallback = pd.concat(lists, ignore_index=True)[["segment", "rank", "item_id", "score"]]
    users = int(sum(p["users"] for p in parts))
    by_model = int(sum(p["users_by_model"] for p in parts))
    manifest = {
        "model_name": reg["model_name"],
        "model_version": str(reg["model_version"]),
        "mlflow_run_id": model["mlflow_run_id"],
        "airflow_dag_id": rc.dag_id,
        "airflow_run_id": rc.run_id,
        "data_window": {"start": snap["window_start"], "end": snap["window_end"]},
        # the Airflow data interval the run is keyed by; publish never serves older data than
        # the served version's (data_window.end) unless allow_older_data says so
        "data_interval": rc.data_interval(),
        "snapshot": {"rows": snap["stats"]["rows"], "sha256": snap["sha256"]},
        "top_n": cfg.top_n,
        "shards": len(parts),
        "user_ids": "hmac-sha256 pseudonyms" if _pseudonymized() else "raw",
        "users_by_model": by_model,
        "users_by_fallback": users - by_model,
        "metrics": ev["metrics"]["candidate"],
        "gate": {"verdict": verdict["verdict"], "metric": verdict["metric"], "forced": bool(verdict.get("forced"))},
    }
    if rules is not None:  # digest, counts, and whether the last good copy stood in
        manifest["rules"] = rules.summary(bundle.item_ids)
    plan = cfg.variant_plan
    if plan is not None:  # salt, shares, the model version behind each arm, users per arm
        arm_users: dict[str, int] = {}
        for p in parts:
            for arm, count in (p.get("variant_users") or {}).items():
                arm_users[arm] = arm_users.get(arm, 0) + int(count)
        models = _variant_models(cfg, rc, model, reg, plan)
        manifest["variants"] = {**plan.to_dict(), "shares": plan.shares(), "users": arm_users,
                                "model_versions": {k: v[1] for k, v in models.items()}}
    folder = finalize_version(root, rc.version, parts, fallback, manifest, **_table_columns(plan))
    rows = int(sum(p["rows"] for p in parts))
    return {"version": rc.version, "path": str(folder), "rows": rows, "users": users}


def precompute(
    cfg: PipelineConfig,
    rc: RunContext,
    snap: dict[str, Any],
    model: dict[str, Any],
    reg: dict[str, Any],
    ev: dict[str, Any],
    verdict: dict[str, Any],
) -> dict[str, Any]:
    """plan_shards -> score_shard for each -> assemble_version, in one process (the DAG maps
    the shards over workers instead)."""
    shards = plan_shards(cfg, rc, snap)
    parts = [score_shard(cfg, rc, snap, model, reg, sh) for sh in shards]
    return assemble_version(cfg, rc, snap, model, reg, ev, verdict, parts)


def _log_validation_to_mlflow(cfg: PipelineConfig, rc: RunContext) -> None:
    """Validation counts (input + output) as metrics and ``<work>/validation`` (reports, Data
    Docs) as artifacts of this DAG run's MLflow run. Best effort: never changes a verdict."""
    from include.recsys import registry

    folder = rc.work_dir(cfg) / "validation"
    metrics: dict[str, float] = {}
    for kind in ("input", "output"):
        path = folder / f"{kind}_report.json"
        if path.exists():
            counts = _read_json(path).get("counts") or {}
            metrics.update({f"validation_{kind}_{k}": float(v) for k, v in counts.items()})
    try:
        run_id = registry.get_or_create_run(cfg, rc.run_id, rc.mlflow_tags())
        registry.log_to_run(cfg, run_id, metrics=metrics, artifacts={"validation": folder})
    except Exception:  # MLflow down: the reports stay in the work folder; publish will retry MLflow
        log.warning("could not log the validation reports to MLflow", exc_info=True)


def _pseudonymized() -> bool:
    from include.recsys import privacy

    return privacy.enabled()


def _privacy_seen(snap: dict[str, Any]) -> Any:
    """The snapshot's (user, item) pairs, with user ids tokenised as the table's are.

    A coded snapshot (``user_idx`` / ``item_idx`` and its id maps, see :func:`_coded`) gives
    :class:`~include.recsys.validate_output.SeenPairs`: two int32 columns plus the maps, and
    only the ~140k distinct user ids are tokenised. Otherwise string ids are read as
    categoricals (Parquet dictionaries: codes plus each distinct id once), which the output
    checks look up per category."""
    import pyarrow.parquet as pq

    from include.recsys import privacy
    from include.recsys.data import CODE_COLUMNS, IdMap
    from include.recsys.validate_output import SeenPairs

    if _coded(snap):
        table = pq.read_table(snap["snapshot"], columns=list(CODE_COLUMNS))
        if not any(table.column(c).null_count for c in CODE_COLUMNS):
            u, i = (table.column(c).to_numpy() for c in CODE_COLUMNS)
            del table
            if len(i) == 0 or i.min() >= 0:  # a missing id (-1): the frame route below keeps it
                users = IdMap.read(snap["users"], "user").ids
                if privacy.enabled():
                    users = pd.Index(privacy.pseudonymize_ids(users, privacy.load_key()))
                return SeenPairs.from_codes(users, IdMap.read(snap["items"], "item").ids, u, i)
    columns = ["user_id", "item_id"]
    if privacy.enabled():
        return privacy.pseudonymize_table(pd.read_parquet(snap["snapshot"], columns=columns))
    return pd.read_parquet(snap["snapshot"], columns=columns, read_dictionary=columns)


def validate_output(cfg: PipelineConfig, rc: RunContext, snap: dict[str, Any], pre: dict[str, Any]) -> dict[str, Any]:
    """Output contract of the unpublished version ``pre["path"]`` before publish.

    Raises OutputValidationError (a DataValidationError: no retries) when the table breaks it;
    publish does not run and CURRENT stays where it was.
    """
    from include.recsys.data import release_memory
    from include.recsys.publish import read_current, read_version_table, version_dir
    from include.recsys.validate_output import OutputValidationError, validate_table

    release_memory()  # what earlier stages of this process left behind
    root = cfg.recommendations_root
    served = read_current(root)
    folder = rc.work_dir(cfg) / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    current = None
    if served and served != pre["version"] and version_dir(root, served).exists():
        current = read_version_table(str(version_dir(root, served)), ["user_id", "item_id"])
    rules = item_rules(cfg, rc)
    try:
        report = validate_table(
            read_version_table(pre["path"]),
            top_n=cfg.top_n,
            seen=_privacy_seen(snap),
            current=current,
            excluded=rules.excluded if rules is not None else None,
            fallback=_read_fallback(root, pre["version"]) if rules is not None else None,
            variants=_manifest_variants(root, pre["version"]),
            window=(snap["window_start"], snap["window_end"]),
            run_name=f"recommendations__{pre['version']}",
            report_path=folder / "output_report.json",
            docs_dir=folder / "data_docs" / "output",
        )
    except OutputValidationError:
        _log_validation_to_mlflow(cfg, rc)
        raise
    _log_validation_to_mlflow(cfg, rc)
    del current
    release_memory()
    log.info("output validation of %s: %s", pre["version"], report.summary())
    return {
        "version": pre["version"],
        "path": pre["path"],
        "report": str(folder / "output_report.json"),
        "counts": report.counts(),
        "data_docs": report.data_docs,
    }


def _manifest_variants(root: Path | str, version: str) -> dict[str, Any] | None:
    """The ``variants`` block of a version's manifest (None: no A/B variants)."""
    from include.recsys.publish import read_manifest

    return read_manifest(root, version).get("variants")


def _read_fallback(root: Path | str, version: str) -> pd.DataFrame:
    """The ``_fallback.parquet`` lists of a (possibly unpublished) version."""
    import io

    from include.recsys import publish as pub

    store = pub._store(root)
    if store is not None:
        return pd.read_parquet(io.BytesIO(store.read_bytes(f"version={version}/{pub.FALLBACK}")))
    return pd.read_parquet(pub.version_dir(root, version) / pub.FALLBACK)


def similar_items(
    cfg: PipelineConfig, rc: RunContext, snap: dict[str, Any], model: dict[str, Any], reg: dict[str, Any]
) -> dict[str, Any]:
    """The similar-items table of the registered model (cosine of item factors, rules applied),
    written as an unpublished version ``rc.version`` under ``cfg.similar_items_root`` and
    validated; ``publish`` serves it together with the recommendations. Raises
    OutputValidationError (no retries) when it breaks its contract."""
    from include.recsys import similar as sim
    from include.recsys.publish import read_current, version_dir
    from include.recsys.recommend import ModelBundle
    from include.recsys.validate_output import validate_similar_table

    root = cfg.similar_items_root
    if cfg.similar_items_k == 0:
        return {"skipped": True, "reason": "similar_items_k is 0"}
    if read_current(root) == rc.version:
        return {"version": rc.version, "root": str(root), "path": str(version_dir(root, rc.version)), "rows": None}
    rules = item_rules(cfg, rc)
    bundle = ModelBundle.load(model["bundle"])
    allowed = rules.allowed_mask(bundle.item_ids) if rules is not None else None
    k = cfg.similar_items_k
    kw = {"block_size": cfg.score_block_size} if cfg.similar_items_engine == "exact" else {}
    items, scores = sim.compute(bundle.item_factors, k, allowed, engine=cfg.similar_items_engine, **kw)
    fallback = sim.fallback_frame(bundle.item_ids, bundle.item_popularity, k, allowed)
    manifest = {
        "table": "similar_items", "model_name": reg["model_name"], "model_version": str(reg["model_version"]),
        "mlflow_run_id": model["mlflow_run_id"], "airflow_run_id": rc.run_id, "engine": cfg.similar_items_engine,
        "data_window": {"start": snap["window_start"], "end": snap["window_end"]},
        "data_interval": rc.data_interval(), "items": len(bundle.item_ids),
        **({"rules": rules.summary(bundle.item_ids)} if rules is not None else {}),
    }
    folder = sim.write_table(root, rc.version, bundle.item_ids, items, scores, fallback, manifest)
    from include.recsys.publish import read_version_table

    report = validate_similar_table(
        read_version_table(str(folder)), top_k=k, catalog=bundle.item_ids, allowed=allowed,
        fallback=fallback, run_name=f"similar_items__{rc.version}",
        report_path=rc.work_dir(cfg) / "validation" / "similar_items_report.json",
    )
    return {"version": rc.version, "root": str(root), "path": str(folder), "rows": report.n_rows}


def _publish_similar(cfg: PipelineConfig, rc: RunContext, version: str, reason: str) -> bool | None:
    """Serve the run's similar-items version beside the recommendations (None: none built)."""
    from include.recsys.publish import PublishError, StaleData, cleanup, point_current, read_manifest

    root = cfg.similar_items_root
    if cfg.similar_items_k == 0:
        return None
    try:
        read_manifest(root, version)
    except PublishError:
        log.info("no similar-items version %s under %s: not published", version, root)
        return None
    try:
        moved = point_current(root, version, reason=reason, allow_older_data=cfg.allow_older_data)
    except StaleData as exc:
        log.warning("similar items: %s", exc)
        return False
    cleanup(root, cfg.keep_versions)
    return moved


PUBLISH_OUTCOME = "publish.json"  # in the run's work folder: served, or why not


def _served_data_end(root: Path | str) -> str | None:
    """``data_window.end`` of the served version (None: nothing served or no manifest)."""
    from include.recsys.publish import read_current, read_manifest

    served = read_current(root)
    if not served:
        return None
    try:
        return (read_manifest(root, served).get("data_window") or {}).get("end")
    except Exception:  # an unreadable served manifest: point_current decides and says why
        return None


def publish(cfg: PipelineConfig, rc: RunContext, pre: dict[str, Any], reg: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """Point CURRENT at the new version, then move ``champion``; clean old versions.

    Never to older data: when this run's data ends before the served table's
    (:class:`~include.recsys.publish.StaleData`) or the champion's
    (:class:`~include.recsys.registry.StaleModel`), neither pointer moves and the run succeeds
    with "stale: serving data up to X, this run's data ends at Y; not served" in its log,
    ``publish.json``, run card, summary and Slack. ``allow_older_data`` overrides that, loudly.
    """
    from include.recsys import registry
    from include.recsys.crashpoints import crashpoint
    from include.recsys.publish import StaleData, point_current, read_current

    root = cfg.recommendations_root
    allow = cfg.allow_older_data
    # the model must be registered (and the registry reachable) before the table is served; a
    # failure between CURRENT and the alias is completed by the rerun (point_current -> False)
    registry.require_version(cfg, reg["model_version"])
    served_end, run_end = _served_data_end(root), _version_data_end(root, pre["version"])
    older = bool(served_end and run_end and pd.Timestamp(run_end) < pd.Timestamp(served_end))
    reason = f"publish by {rc.run_id}"
    if older and allow:
        reason = f"OLDER DATA allowed by allow_older_data: data up to {run_end} replaces data up to {served_end}; {reason}"
        log.warning("%s (version %s)", reason, pre["version"])
    try:
        # the table, then the champion, are checked before either pointer moves, so they never
        # disagree in direction; point_current checks the table again under its commit
        if older and not allow:
            raise StaleData(served_end, run_end, read_current(root), pre["version"])
        registry.champion_data_check(cfg, reg["model_version"], allow_older_data=allow)
        moved = point_current(root, pre["version"], reason=reason, allow_older_data=allow)
    except (StaleData, registry.StaleModel) as exc:
        return _not_served(cfg, rc, pre, reg, model, exc)
    _publish_similar(cfg, rc, pre["version"], reason)  # its twin table: same version id
    crashpoint("between_current_and_alias")
    registry.set_alias(
        cfg, registry.CHAMPION, reg["model_version"], allow_older_data=allow,
        reason=f"published table version {pre['version']}", actor=rc.run_id,
    )
    outcome = {"served": True, "version": pre["version"], "moved": moved, "data_end": run_end}
    if older and allow:
        outcome["older_data"] = {"served_end": served_end, "run_end": run_end, "note": reason}
    return _finish_publish(cfg, rc, pre, reg, model, outcome)


def _version_data_end(root: Path | str, version: str) -> str | None:
    from include.recsys.publish import read_manifest

    try:
        return (read_manifest(root, version).get("data_window") or {}).get("end")
    except Exception:  # point_current refuses an unreadable version itself, with the reason
        return None


def _not_served(
    cfg: PipelineConfig, rc: RunContext, pre: dict[str, Any], reg: dict[str, Any], model: dict[str, Any],
    exc: Exception,
) -> dict[str, Any]:
    """A run whose data is older than what is served: it succeeds, serves nothing, says why."""
    log.warning("%s (version %s, model version %s; allow_older_data would override; rollback is the "
                "normal way back)", exc, pre["version"], reg["model_version"])
    outcome = {
        "served": False, "version": pre["version"], "moved": False, "reason": str(exc),
        "served_end": getattr(exc, "served_end", None), "data_end": getattr(exc, "run_end", None),
    }
    return _finish_publish(cfg, rc, pre, reg, model, outcome)


def _finish_publish(
    cfg: PipelineConfig, rc: RunContext, pre: dict[str, Any], reg: dict[str, Any], model: dict[str, Any],
    outcome: dict[str, Any],
) -> dict[str, Any]:
    """Retention (after a served version only), ``publish.json``, the run card and MLflow."""
    from include.recsys import registry
    from include.recsys.publish import MANIFEST, cleanup, read_manifest
    from include.recsys.storage import is_remote

    root = cfg.recommendations_root
    removed = cleanup(root, cfg.keep_versions) if outcome["served"] else []
    _write_json(rc.work_dir(cfg) / PUBLISH_OUTCOME, outcome)
    card = _published_run_card(cfg, rc, pre, reg, model, outcome) or rc.work_dir(cfg) / RUN_CARD
    manifest_file = Path(pre["path"]) / MANIFEST
    if is_remote(root):  # MLflow logs local files: a copy of the object store's manifest
        (rc.work_dir(cfg) / "table").mkdir(parents=True, exist_ok=True)
        manifest_file = _write_json(rc.work_dir(cfg) / "table" / MANIFEST, read_manifest(root, pre["version"]))
    tags = {"published_version": pre["version"], "champion_version": reg["model_version"]}
    if not outcome["served"]:
        tags = {"published_version": "none", "not_served": outcome["reason"]}
    elif outcome.get("older_data"):
        tags["older_data_served"] = outcome["older_data"]["note"]
    registry.log_to_run(
        cfg,
        model["mlflow_run_id"],
        tags=tags,
        artifacts={"table": manifest_file, **({"run_card": card} if card.exists() else {})},
    )
    registry.end_run(cfg, model["mlflow_run_id"])
    return {"version": pre["version"], "path": pre["path"], "moved": outcome["moved"], "removed": removed,
            "served": outcome["served"], **({"reason": outcome["reason"]} if not outcome["served"] else {})}


def publish_outcome(cfg: PipelineConfig, run_id: str) -> dict[str, Any] | None:
    """What the publish stage of DAG run ``run_id`` did (``publish.json``), None if it did not run."""
    key = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)
    found = sorted(cfg.runs_root.glob(f"*/{key}/{PUBLISH_OUTCOME}")) if cfg.runs_root.exists() else []
    return _read_json(found[-1]) if found else None


def _published_run_card(
    cfg: PipelineConfig, rc: RunContext, pre: dict[str, Any], reg: dict[str, Any], model: dict[str, Any],
    outcome: dict[str, Any] | None = None,
) -> Path | None:
    """Refresh the run card once publish decided (served: version, rows, model version; not
    served: why)."""
    from include.recsys.publish import read_manifest

    outcome = outcome or {"served": True}
    if not outcome["served"]:
        published: dict[str, Any] = {"version": None, "not_served": outcome["reason"], "unserved_version": pre["version"]}
        return write_run_card(cfg, rc, model.get("mlflow_run_id"), model_version=reg.get("model_version"), published=published)
    try:
        manifest = read_manifest(cfg.recommendations_root, pre["version"])
    except Exception:  # the card is best effort; publish has already happened
        manifest = {}
    published = {
        "version": pre["version"],
        "path": pre["path"],
        "rows": manifest.get("rows"),
        "users": manifest.get("users"),
        "created_at": manifest.get("created_at"),
        **({"older_data": outcome["older_data"]["note"]} if outcome.get("older_data") else {}),
    }
    return write_run_card(
        cfg, rc, model.get("mlflow_run_id"), model_version=reg.get("model_version"), published=published
    )


def end_mlflow_run(cfg: PipelineConfig, rc: RunContext, status: str) -> None:
    """Mark this DAG run's MLflow run FINISHED / FAILED (called when the DAG run ends)."""
    from include.recsys import registry

    run_id = registry.get_or_create_run(cfg, rc.run_id, rc.mlflow_tags())
    registry.end_run(cfg, run_id, status)


def collect_summary(cfg: PipelineConfig, rc: RunContext) -> dict[str, Any]:
    """What one run did, read back from its work folder, MLflow and the published table."""
    from include.recsys import publish as pub
    from include.recsys import registry

    work = rc.work_dir(cfg)
    summary: dict[str, Any] = {"run_id": rc.run_id, "interval_end": rc.end.isoformat()}
    if (work / "validation" / "input_report.json").exists():
        rep = _read_json(work / "validation" / "input_report.json")
        summary["validation"] = {
            "success": rep.get("success"),
            "warnings": len([r for r in rep.get("results", []) if not r.get("success") and r.get("severity") == "warning"]),
            "status": "FAILED" if not rep.get("success") else "PASSED",
        }
    if (work / "validation" / "output_report.json").exists():
        rep = _read_json(work / "validation" / "output_report.json")
        summary["output_validation"] = {"success": rep.get("success"), "counts": rep.get("counts")}
    if (work / "eval" / "report.json").exists():
        summary["evaluation"] = _read_json(work / "eval" / "report.json")
    if (work / "gate.json").exists():
        summary["gate"] = _read_json(work / "gate.json")
    if (work / RUN_CARD).exists():
        summary["run_card"] = str(work / RUN_CARD)
    root = cfg.recommendations_root
    if pub.read_current(root) == rc.version:
        summary["published"] = {"version": rc.version, "path": str(pub.version_dir(root, rc.version))}
    outcome = _read_json(work / PUBLISH_OUTCOME) if (work / PUBLISH_OUTCOME).exists() else {}
    if outcome and not outcome.get("served"):
        summary["not_served"] = outcome.get("reason")  # "stale: serving data up to X, ..."
    elif outcome.get("older_data"):
        summary["older_data"] = outcome["older_data"]["note"]
    try:
        summary["mlflow_run_id"] = registry.get_or_create_run(cfg, rc.run_id, rc.mlflow_tags())
        summary["champion_version"] = registry.alias_version(cfg, registry.CHAMPION)
    except Exception as exc:  # summary must not fail because MLflow is unreachable
        summary["mlflow_run_id"] = f"unavailable ({exc})"
    _write_json(work / "summary.json", summary)
    return summary


def _num(x: Any) -> str:
    return "n/a" if x is None else (f"{x:.4f}" if isinstance(x, float) else str(x))


def format_summary(summary: dict[str, Any], metric_keys: list[str] | None = None) -> str:
    """Human-readable lines for a summary dict (the demo's output)."""
    lines = [f"run {summary.get('run_id')} (data interval end {summary.get('interval_end')})"]
    v = summary.get("validation") or {}
    lines.append(f"  input validation : {'PASSED' if v.get('success') else v.get('status', 'not run')}"
                 + (f" ({v['warnings']} warnings)" if v.get("warnings") else ""))
    metrics = (summary.get("evaluation") or {}).get("metrics") or {}
    if metrics:
        keys = metric_keys or [k for k in metrics["candidate"] if "@" in k and k.split("@")[0] in {"precision", "recall", "ndcg", "map", "coverage"}]
        widths = {name: max(12, len(name) + 2) for name in metrics}
        header = f"  {'metric':<14}" + "".join(f"{name:>{widths[name]}}" for name in metrics)
        lines.append(header)
        for k in keys:
            lines.append(f"  {k:<14}" + "".join(f"{_num(metrics[n].get(k)):>{widths[n]}}" for n in metrics))
        lines.append(f"  (users evaluated: {metrics['candidate'].get('n_users_evaluated')})")
    g = summary.get("gate") or {}
    if g:
        forced = "  ** FORCED by force_publish: published anyway **" if g.get("forced") else ""
        lines.append(f"  gate             : {g.get('verdict')} on {g.get('metric')}{forced}")
        marks = {"PASS": "ok  ", "FAIL": "FAIL", "SKIP": "skip"}
        width = max([17, *(len(str(r["name"])) for r in g.get("rules", []))])
        for r in g.get("rules", []):
            res = r.get("result") or ("PASS" if r["passed"] else "FAIL")
            note = str(r.get("note") or "")
            note = note if len(note) <= 90 else note[:87] + "..."
            lines.append(
                f"    {marks.get(res, res)} {r['name']:<{width}} observed={_num(r['observed'])} "
                f"bound={_num(r['bound'])} {note}".rstrip()
            )
    ov = summary.get("output_validation")
    if ov:
        lines.append(f"  table validation : {'PASSED' if ov.get('success') else 'FAILED'} {ov.get('counts') or ''}".rstrip())
    p = summary.get("published") or {}
    lines.append(f"  published        : {p.get('version', 'nothing')}" + (f" at {p['path']}" if p.get("path") else ""))
    if summary.get("not_served"):
        lines.append(f"  not served       : {summary['not_served']}")
    if summary.get("older_data"):
        lines.append(f"  ** {summary['older_data']} **")
    lines.append(f"  MLflow run       : {summary.get('mlflow_run_id', 'n/a')}")
    if summary.get("run_card"):
        lines.append(f"  run card         : {summary['run_card']}")
    return "\n".join(lines)


def rollback(cfg: PipelineConfig, rc: RunContext, to_version: str | None = None, reason: str = "") -> dict[str, Any]:
    """Serve an earlier table again: CURRENT back to ``to_version`` (default: the version
    served before the current one), then the ``champion`` alias back to that table's model
    version (read from its manifest), so table and alias keep agreeing. Both moves are logged
    (``_history.jsonl`` for CURRENT, the registry's alias history)."""
    from include.recsys import publish as pub
    from include.recsys import registry

    root = cfg.recommendations_root
    before = pub.read_current(root)
    target = pub.rollback(root, to_version or None)
    model_version = pub.read_manifest(root, target).get("model_version")
    if model_version:
        registry.set_alias(
            cfg, registry.CHAMPION, str(model_version), action="rollback", actor=rc.run_id,
            reason=f"rollback: table {before} -> {target}" + (f": {reason}" if reason else ""),
        )
    log.info("rolled back %s -> %s (model version %s): %s", before, target, model_version, reason or "no reason given")
    similar = _rollback_similar(cfg, target, reason)
    out = {"from": before, "to": target, "model_version": model_version, "reason": reason}
    return out if similar is None else {**out, "similar_items": similar}


def _rollback_similar(cfg: PipelineConfig, target: str, reason: str) -> str | None:
    """The similar-items table follows a rollback to its twin version (same id) when that one
    exists; otherwise it stays where it is (it was not built then) and the log says so."""
    from include.recsys import publish as pub

    root = cfg.similar_items_root
    try:
        if pub.read_current(root) is None:
            return None
        pub.read_manifest(root, target)
    except (pub.PublishError, OSError) as exc:
        log.warning("similar items stay at %s: no version %s to roll back to (%s)", pub.read_current(root), target, exc)
        return None
    pub.point_current(root, target, reason=f"rollback with the recommendations: {reason}".strip())
    return target
