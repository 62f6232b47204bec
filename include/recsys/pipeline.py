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
    """Great Expectations suite on the snapshot; raises DataValidationError on error checks."""
    from include.recsys.validate import validate_interactions

    df = pd.read_parquet(snap["snapshot"])
    report_path = rc.work_dir(cfg) / "validation" / "input_report.json"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report = validate_interactions(
        df,
        window_start=pd.Timestamp(snap["window_start"]),
        window_end=pd.Timestamp(snap["window_end"]),
        report_path=report_path,
    )
    log.info("input validation: %s", report.summary())
    return {"report": str(report_path), "success": report.success, "warnings": len(report.warnings)}


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

    train_df = pd.read_parquet(parts["train"])
    bundle, stats = fit(train_df, cfg)
    bundle_dir = bundle.save(rc.work_dir(cfg) / "model" / "bundle")
    run_id = registry.get_or_create_run(cfg, rc.run_id, rc.mlflow_tags())
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
            **rc.mlflow_tags(),
        },
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
        raise GateFailed(result)
    return {**result.to_dict(), "path": str(path)}


def register(cfg: PipelineConfig, rc: RunContext, model: dict[str, Any]) -> dict[str, Any]:
    """Register the candidate in the MLflow registry and point ``challenger`` at it."""
    from include.recsys import registry

    version = registry.register_model(cfg, model["mlflow_run_id"], Path(model["bundle"]))
    registry.set_alias(cfg, registry.CHALLENGER, version)
    return {"model_name": cfg.model_name, "model_version": version}


def precompute(
    cfg: PipelineConfig,
    rc: RunContext,
    snap: dict[str, Any],
    model: dict[str, Any],
    reg: dict[str, Any],
    ev: dict[str, Any],
    verdict: dict[str, Any],
) -> dict[str, Any]:
    """Top-N for every user of the snapshot + the fallback list -> an unpublished version."""
    from include.recsys.publish import read_current, version_dir, write_version
    from include.recsys.recommend import ModelBundle, recommend

    root = cfg.recommendations_root
    if read_current(root) == rc.version:  # a rerun after this run already published
        log.info("version %s is already served; not recomputing it", rc.version)
        return {"version": rc.version, "path": str(version_dir(root, rc.version)), "rows": None, "users": None}
    bundle = ModelBundle.load(model["bundle"])
    df = pd.read_parquet(snap["snapshot"], columns=["user_id", "item_id"])
    users = pd.Index(pd.unique(df["user_id"])).sort_values()
    recs = recommend(bundle, users, df, cfg.top_n, block_size=cfg.score_block_size)
    table = recs.to_frame(bundle).assign(
        model_name=reg["model_name"], model_version=str(reg["model_version"])
    )
    popularity = df.drop_duplicates().groupby("item_id", sort=False).size().sort_values(
        ascending=False, kind="stable"
    )
    top = popularity.head(cfg.top_n)
    fallback = pd.DataFrame(
        {
            "rank": np.arange(1, len(top) + 1, dtype=np.int16),
            "item_id": top.index,
            "score": (top.to_numpy() / max(top.max(), 1)).astype(np.float32),
        }
    )
    manifest = {
        "model_name": reg["model_name"],
        "model_version": str(reg["model_version"]),
        "mlflow_run_id": model["mlflow_run_id"],
        "airflow_dag_id": rc.dag_id,
        "airflow_run_id": rc.run_id,
        "data_window": {"start": snap["window_start"], "end": snap["window_end"]},
        "snapshot": {"rows": snap["stats"]["rows"], "sha256": snap["sha256"]},
        "top_n": cfg.top_n,
        "users_by_model": int(recs.from_model.sum()),
        "users_by_fallback": int((~recs.from_model).sum()),
        "metrics": ev["metrics"]["candidate"],
        "gate": {"verdict": verdict["verdict"], "metric": verdict["metric"]},
    }
    folder = write_version(root, rc.version, table, fallback, manifest)
    return {"version": rc.version, "path": str(folder), "rows": len(table), "users": len(users)}


def publish(cfg: PipelineConfig, rc: RunContext, pre: dict[str, Any], reg: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """Point CURRENT at the new version, then move ``champion``; clean old versions."""
    from include.recsys import registry
    from include.recsys.publish import cleanup, point_current

    root = cfg.recommendations_root
    moved = point_current(root, pre["version"], reason=f"publish by {rc.run_id}")
    registry.set_alias(cfg, registry.CHAMPION, reg["model_version"])
    removed = cleanup(root, cfg.keep_versions)
    registry.log_to_run(
        cfg,
        model["mlflow_run_id"],
        tags={"published_version": pre["version"], "champion_version": reg["model_version"]},
        artifacts={"table": Path(pre["path"]) / "_manifest.json"},
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
    p = summary.get("published") or {}
    lines.append(f"  published        : {p.get('version', 'nothing')}" + (f" at {p['path']}" if p.get("path") else ""))
    lines.append(f"  MLflow run       : {summary.get('mlflow_run_id', 'n/a')}")
    return "\n".join(lines)
