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
    from include.recsys.data import IdMap, Window, build_snapshot, write_parquet
    from include.recsys.publish import file_sha256

    window = Window.ending_at(rc.end, cfg.window_days)
    df, stats = build_snapshot(cfg, window)
    out = rc.work_dir(cfg) / "snapshot"
    path = write_parquet(df, out / "interactions.parquet")
    write_parquet(IdMap.from_values(df["user_id"]).to_frame("user"), out / "users.parquet")
    write_parquet(IdMap.from_values(df["item_id"]).to_frame("item"), out / "items.parquet")
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
    from include.recsys.validate_history import history_path, validate_snapshot

    df = pd.read_parquet(snap["snapshot"])
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
        )
    except DataValidationError:
        # a refused snapshot never reaches train: its reports and Data Docs go to MLflow now
        _log_validation_to_mlflow(cfg, rc)
        raise
    log.info("input validation: %s", report.summary())
    return {
        "report": str(report_path),
        "success": report.success,
        "warnings": len(report.warnings),
        "counts": report.counts(),
        "data_docs": report.data_docs,
    }


def split(cfg: PipelineConfig, rc: RunContext, snap: dict[str, Any]) -> dict[str, Any]:
    from include.recsys.data import write_parquet
    from include.recsys.split import time_split

    df = pd.read_parquet(snap["snapshot"])
    cutoff = pd.Timestamp(snap["window_end"]) - pd.Timedelta(days=cfg.holdout_days)
    train_df, holdout, stats = time_split(df, cutoff)
    out = rc.work_dir(cfg) / "split"
    return {
        "train": str(write_parquet(train_df, out / "train.parquet")),
        "holdout": str(write_parquet(holdout, out / "holdout.parquet")),
        "stats": asdict(stats),
    }


def train(cfg: PipelineConfig, rc: RunContext, parts: dict[str, Any], snap: dict[str, Any]) -> dict[str, Any]:
    """Fit ALS on the training split; log params and timings to this DAG run's MLflow run."""
    from include.recsys import registry
    from include.recsys.train import train as fit

    # MLflow first: an unreachable server fails (and is retried) before an expensive fit
    run_id = registry.get_or_create_run(cfg, rc.run_id, rc.mlflow_tags(), reopen=True)
    from include.recsys.data import read_segments

    train_df = pd.read_parquet(parts["train"])
    bundle, stats = fit(train_df, cfg, read_segments(cfg))
    bundle_dir = bundle.save(rc.work_dir(cfg) / "model" / "bundle")
    validation = rc.work_dir(cfg) / "validation"  # GX report (+ Data Docs when written there)
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
            "snapshot_rows": snap["stats"]["rows"],
            "snapshot_duplicates_dropped": snap["stats"]["duplicates_dropped"],
        },
        tags={
            "data_window": f"[{snap['window_start']}, {snap['window_end']})",
            "data_snapshot_sha256": snap["sha256"],
            **registry.lineage_tags(),
            **rc.mlflow_tags(),
        },
        artifacts={"validation": validation} if validation.exists() else None,
    )
    return {"bundle": str(bundle_dir), "mlflow_run_id": run_id, "stats": asdict(stats)}


def _to_eval_space(item_ids: np.ndarray, eval_items: pd.Index) -> np.ndarray:
    """External item ids (None = padding) -> eval index; items outside the eval space -> dummy."""
    flat = item_ids.ravel()
    pad = pd.isna(flat)
    idx = eval_items.get_indexer(pd.Index(np.where(pad, eval_items[0], flat)))
    idx = np.where(idx < 0, len(eval_items), idx)  # unknown item: the never-relevant dummy column
    idx[pad] = -1
    return idx.reshape(item_ids.shape)


def evaluate(
    cfg: PipelineConfig, rc: RunContext, parts: dict[str, Any], model: dict[str, Any]
) -> dict[str, Any]:
    """Candidate, champion (if any) and popularity on the same holdout users and seen filter."""
    import scipy.sparse as sp

    from include.recsys import registry
    from include.recsys.evaluate import ranking_metrics
    from include.recsys.recommend import (
        ModelBundle,
        Recommendations,
        ranked_filtered,
        recommend,
        seen_matrix,
    )

    candidate_bundle = ModelBundle.load(model["bundle"])
    train_df = pd.read_parquet(parts["train"], columns=["user_id", "item_id"])
    holdout = pd.read_parquet(parts["holdout"], columns=["user_id", "item_id"])
    holdout = holdout.loc[holdout["user_id"].isin(candidate_bundle.user_ids)]
    users = pd.Index(pd.unique(holdout["user_id"])).sort_values()
    seen = train_df.loc[train_df["user_id"].isin(users)]
    eval_items = candidate_bundle.item_ids.append(
        pd.Index(pd.unique(holdout["item_id"])).difference(candidate_bundle.item_ids)
    )
    rows = users.get_indexer(holdout["user_id"])
    cols = eval_items.get_indexer(holdout["item_id"])
    relevant = sp.csr_matrix(
        (np.ones(len(holdout), np.float32), (rows, cols)), shape=(len(users), len(eval_items) + 1)
    )
    relevant.sum_duplicates()
    n = cfg.max_k
    n_catalog = len(candidate_bundle.item_ids)

    def score(recs: Recommendations, bundle: ModelBundle):
        top = _to_eval_space(recs.item_ids(bundle), eval_items)
        return ranking_metrics(top, relevant, cfg.ks, n_catalog=n_catalog)

    results = {"candidate": score(recommend(candidate_bundle, users, seen, n), candidate_bundle)}
    pop_items = ranked_filtered(candidate_bundle.popular_order, seen_matrix(candidate_bundle, users, seen), n)
    pop = Recommendations(users, pop_items, np.zeros(pop_items.shape, np.float32), np.zeros(len(users), bool))
    results["popularity"] = score(pop, candidate_bundle)
    champion_version = None
    got = registry.download_bundle(cfg, registry.CHAMPION, rc.work_dir(cfg) / "champion")
    if got is not None:
        champion_version, champion_bundle = got
        results["champion"] = score(recommend(champion_bundle, users, seen, n), champion_bundle)

    out = rc.work_dir(cfg) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    per_user = pd.concat(
        [r.per_user.assign(model=name) for name, r in results.items()], ignore_index=True
    )
    per_user.to_parquet(out / "per_user_metrics.parquet", index=False)
    report = {
        "ks": cfg.ks,
        "n_users": len(users),
        "n_catalog": n_catalog,
        "champion_version": champion_version,
        "metrics": {name: r.summary for name, r in results.items()},
    }
    _write_json(out / "report.json", report)
    registry.log_to_run(
        cfg,
        model["mlflow_run_id"],
        metrics={
            f"{name}.{k}": v
            for name, r in results.items()
            for k, v in r.summary.items()
            if isinstance(v, (int, float))
        },
        tags={"champion_version_evaluated": champion_version or "none"},
        artifacts={"evaluation": out},
    )
    log.info(
        "evaluated %d users: %s",
        len(users),
        {name: round(r.summary[cfg.gate_metric], 4) for name, r in results.items()},
    )
    return {"report": str(out / "report.json"), "metrics": report["metrics"], "champion_version": champion_version}


def gate(cfg: PipelineConfig, rc: RunContext, ev: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """Decide PASS / FAIL / SKIPPED, record it (JSON + MLflow tags); raise GateFailed on FAIL."""
    from include.recsys import registry
    from include.recsys.gate import FAIL, GateFailed, decide

    m = ev["metrics"]
    result = decide(cfg, m["candidate"], m["popularity"], m.get("champion"))
    path = _write_json(rc.work_dir(cfg) / "gate.json", result.to_dict())
    registry.log_to_run(
        cfg,
        model["mlflow_run_id"],
        tags={"gate_verdict": result.verdict},
        artifacts={"gate": path},
    )
    log.info("%s", result.explain())
    if result.verdict == FAIL:
        err = GateFailed(result)
        err.report_path = str(path)  # the run card, named in the Slack alert
        raise err
    return {**result.to_dict(), "path": str(path)}


RUN_CARD = "run_card.html"  # in the run's work folder; written by the run-card stage when there is one


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

    work = rc.work_dir(cfg)
    snapshot_path = Path(snap["snapshot"]) if snap else work / "snapshot" / "interactions.parquet"
    bundle = ModelBundle.load(model["bundle"])
    pairs = pd.read_parquet(snapshot_path, columns=["user_id", "item_id"])
    serving_dir = replace(bundle, seen=seen_matrix(bundle, bundle.user_ids, pairs)).save(
        work / "model" / "serving_bundle"
    )
    run_id = model["mlflow_run_id"]
    version = registry.register_model(cfg, run_id, serving_dir)

    verdict = _read_json(work / "gate.json") if (work / "gate.json").exists() else {}
    report = _read_json(work / "eval" / "report.json") if (work / "eval" / "report.json").exists() else {}
    metric = cfg.gate_metric
    values = {name: m.get(metric) for name, m in (report.get("metrics") or {}).items()}
    run_tags = registry.run_tags(cfg, run_id)
    card = work / RUN_CARD
    tags = {
        "gate_verdict": verdict.get("verdict", "unknown"),
        "gate_metric": metric,
        **{f"{metric.replace('@', '_at_')}.{name}": v for name, v in values.items() if v is not None},
        "champion_version_evaluated": report.get("champion_version") or "none",
        "data_window": run_tags.get("data_window", ""),
        "data_snapshot_sha256": run_tags.get("data_snapshot_sha256", ""),
        "airflow_dag_id": rc.dag_id,
        "airflow_run_id": rc.run_id,
        "mlflow_run_id": run_id,
        "code_version": run_tags.get("code_version", registry.code_version()),
        "run_card": str(card),
        "run_card_status": "present" if card.exists() else "pending",
    }
    shown = ", ".join(f"{name} {v:.4f}" for name, v in values.items() if v is not None)
    description = (
        f"Gate {tags['gate_verdict']} on {metric} ({shown}). Data window {tags['data_window']}, "
        f"snapshot sha256 {tags['data_snapshot_sha256'][:12]}. Airflow {rc.dag_id} / {rc.run_id}, "
        f"code {tags['code_version']}. Run card: {card}."
    )
    registry.tag_model_version(cfg, version, tags, description)
    registry.set_alias(
        cfg, registry.CHALLENGER, version,
        reason=f"passed the gate on {metric} ({shown})", actor=rc.run_id,
    )
    return {"model_name": cfg.model_name, "model_version": version, "serving_bundle": str(serving_dir)}


def _already_served(cfg: PipelineConfig, rc: RunContext) -> bool:
    from include.recsys.publish import read_current

    if read_current(cfg.recommendations_root) == rc.version:  # a rerun after this run published
        log.info("version %s is already served; not recomputing it", rc.version)
        return True
    return False


def plan_shards(cfg: PipelineConfig, rc: RunContext, snap: dict[str, Any]) -> list[dict[str, Any]]:
    """Split the snapshot's users (sorted) into ``cfg.shards`` contiguous ranges.

    Each range becomes one mapped ``score_shard`` task writing one part file, so the part
    files are globally sorted by user_id and workers score shards in parallel.
    """
    import shutil

    from include.recsys.data import write_parquet
    from include.recsys.publish import _staging_path

    df = pd.read_parquet(snap["snapshot"], columns=["user_id"])
    users = pd.Index(pd.unique(df["user_id"])).sort_values()
    path = write_parquet(pd.DataFrame({"user_id": users}), rc.work_dir(cfg) / "precompute" / "users.parquet")
    if not _already_served(cfg, rc):  # a fresh plan starts from an empty staging folder
        shutil.rmtree(_staging_path(cfg.recommendations_root, rc.version), ignore_errors=True)
    n = max(1, min(cfg.shards, len(users)))
    bounds = np.linspace(0, len(users), n + 1).astype(int)
    log.info("%d users in %d shard(s) of ~%d users", len(users), n, len(users) // n)
    return [
        {"index": i, "lo": int(lo), "hi": int(hi), "users": str(path)}
        for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))
    ]


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
    bundle = ModelBundle.load(model["bundle"])
    users = pd.Index(pd.read_parquet(shard["users"])["user_id"].iloc[shard["lo"] : shard["hi"]])
    df = pd.read_parquet(snap["snapshot"], columns=["user_id", "item_id"])
    seen = df.loc[df["user_id"].isin(users)]
    from include.recsys.data import read_segments

    recs = recommend(
        bundle, users, seen, cfg.top_n, block_size=cfg.score_block_size,
        user_segments=read_segments(cfg),
    )
    table = recs.to_frame(bundle).assign(
        model_name=reg["model_name"], model_version=str(reg["model_version"])
    )
    from include.recsys import privacy

    # where ids leave the pipeline: keyed-HMAC tokens when RECSYS_PSEUDONYMIZE_USER_IDS is on
    table = privacy.pseudonymize_table(table)
    part = write_part(cfg.recommendations_root, rc.version, shard["index"], table)
    return {**part, "index": shard["index"], "users_by_model": int(recs.from_model.sum())}


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
    lists = [bundle.fallback_list(cfg.top_n).assign(segment="")]
    for seg in bundle.segment_ids if bundle.segment_ids is not None else []:
        lists.append(bundle.fallback_list(cfg.top_n, seg).assign(segment=str(seg)))
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
        "snapshot": {"rows": snap["stats"]["rows"], "sha256": snap["sha256"]},
        "top_n": cfg.top_n,
        "shards": len(parts),
        "user_ids": "hmac-sha256 pseudonyms" if _pseudonymized() else "raw",
        "users_by_model": by_model,
        "users_by_fallback": users - by_model,
        "metrics": ev["metrics"]["candidate"],
        "gate": {"verdict": verdict["verdict"], "metric": verdict["metric"]},
    }
    folder = finalize_version(root, rc.version, parts, fallback, manifest)
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


def _privacy_seen(snap: dict[str, Any]) -> pd.DataFrame:
    """The snapshot's (user, item) pairs, with user ids tokenised as the table's are."""
    from include.recsys import privacy

    return privacy.pseudonymize_table(pd.read_parquet(snap["snapshot"], columns=["user_id", "item_id"]))


def validate_output(cfg: PipelineConfig, rc: RunContext, snap: dict[str, Any], pre: dict[str, Any]) -> dict[str, Any]:
    """Output contract of the unpublished version ``pre["path"]`` before publish.

    Raises OutputValidationError (a DataValidationError: no retries) when the table breaks it;
    publish does not run and CURRENT stays where it was.
    """
    from include.recsys.publish import read_current, version_dir
    from include.recsys.validate_output import OutputValidationError, read_table, validate_table

    root = cfg.recommendations_root
    served = read_current(root)
    folder = rc.work_dir(cfg) / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    current = None
    if served and served != pre["version"] and version_dir(root, served).exists():
        current = read_table(version_dir(root, served), ["user_id", "item_id"])
    try:
        report = validate_table(
            read_table(pre["path"]),
            top_n=cfg.top_n,
            seen=_privacy_seen(snap),
            current=current,
            window=(snap["window_start"], snap["window_end"]),
            run_name=f"recommendations__{pre['version']}",
            report_path=folder / "output_report.json",
            docs_dir=folder / "data_docs" / "output",
        )
    except OutputValidationError:
        _log_validation_to_mlflow(cfg, rc)
        raise
    _log_validation_to_mlflow(cfg, rc)
    log.info("output validation of %s: %s", pre["version"], report.summary())
    return {
        "version": pre["version"],
        "path": pre["path"],
        "report": str(folder / "output_report.json"),
        "counts": report.counts(),
        "data_docs": report.data_docs,
    }


def publish(cfg: PipelineConfig, rc: RunContext, pre: dict[str, Any], reg: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """Point CURRENT at the new version, then move ``champion``; clean old versions."""
    from include.recsys import registry
    from include.recsys.publish import cleanup, point_current

    root = cfg.recommendations_root
    # the model must be registered (and the registry reachable) before the table is served; a
    # failure between CURRENT and the alias is completed by the rerun (point_current -> False)
    registry.require_version(cfg, reg["model_version"])
    moved = point_current(root, pre["version"], reason=f"publish by {rc.run_id}")
    registry.set_alias(
        cfg, registry.CHAMPION, reg["model_version"],
        reason=f"published table version {pre['version']}", actor=rc.run_id,
    )
    removed = cleanup(root, cfg.keep_versions)
    card = rc.work_dir(cfg) / RUN_CARD
    registry.log_to_run(
        cfg,
        model["mlflow_run_id"],
        tags={"published_version": pre["version"], "champion_version": reg["model_version"]},
        artifacts={"table": Path(pre["path"]) / "_manifest.json", **({"run_card": card} if card.exists() else {})},
    )
    registry.end_run(cfg, model["mlflow_run_id"])
    return {"version": pre["version"], "path": pre["path"], "moved": moved, "removed": removed}


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
    root = cfg.recommendations_root
    if pub.read_current(root) == rc.version:
        summary["published"] = {"version": rc.version, "path": str(pub.version_dir(root, rc.version))}
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
        header = f"  {'metric':<14}" + "".join(f"{name:>12}" for name in metrics)
        lines.append(header)
        for k in keys:
            lines.append(f"  {k:<14}" + "".join(f"{metrics[n].get(k, float('nan')):>12.4f}" for n in metrics))
        lines.append(f"  (users evaluated: {metrics['candidate'].get('n_users_evaluated')})")
    g = summary.get("gate") or {}
    if g:
        lines.append(f"  gate             : {g.get('verdict')} on {g.get('metric')}")
        for r in g.get("rules", []):
            lines.append(
                f"    {'ok  ' if r['passed'] else 'FAIL'} {r['name']:<17} observed={_num(r['observed'])} "
                f"bound={_num(r['bound'])} {r.get('note', '')}".rstrip()
            )
    ov = summary.get("output_validation")
    if ov:
        lines.append(f"  table validation : {'PASSED' if ov.get('success') else 'FAILED'} {ov.get('counts') or ''}".rstrip())
    p = summary.get("published") or {}
    lines.append(f"  published        : {p.get('version', 'nothing')}" + (f" at {p['path']}" if p.get("path") else ""))
    lines.append(f"  MLflow run       : {summary.get('mlflow_run_id', 'n/a')}")
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
    return {"from": before, "to": target, "model_version": model_version, "reason": reason}
