"""The run card's data (``run_card.json``): what a run left in its work folder, gathered once.

:func:`collect` reads the work folder (through :class:`~include.recsys.core.paths.RunPaths`),
the stage outputs it is given and the previous card of the same run; :func:`load_history`
reads earlier runs' cards for the history plot. Rendering is :mod:`.card_html`'s business."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from include.recsys.core.fmt import as_number
from include.recsys.core.io import read_json_or_none
from include.recsys.core.paths import RunPaths

log = logging.getLogger(__name__)

_MODEL_ORDER = ("candidate", "champion", "popularity", "recent_popularity")

DATA_NAME = RunPaths(Path()).run_card_data.name  # run_card.json, also what load_history globs

SCHEMA = 1

HISTORY_RUNS = 30  # previous runs shown in the history plot


def _parquet_rows(path: Path) -> int | None:
    try:
        import pyarrow.parquet as pq

        return int(pq.read_metadata(path).num_rows)
    except Exception:
        return None


def _validation_summary(report: dict[str, Any] | None) -> dict[str, Any] | None:
    if not report:
        return None
    results = report.get("results") or []
    failed = [
        {
            "check": r.get("check") or r.get("expectation_type"),
            "column": r.get("column"),
            "severity": r.get("severity"),
            "observed": r.get("observed_value", r.get("unexpected_count")),
            "message": r.get("message"),
        }
        for r in results
        if not r.get("success") and not r.get("skipped")
    ]
    return {
        "success": report.get("success"),
        "counts": report.get("counts"),
        "failed": failed[:50],
        "notes": (report.get("notes") or [])[:20],
        "data_docs": report.get("data_docs"),
        "rows": report.get("n_rows"),
    }


def collect(
    work: Path,
    *,
    dag_id: str,
    run_id: str,
    interval_start: Any = None,
    interval_end: Any = None,
    snap: dict[str, Any] | None = None,
    parts: dict[str, Any] | None = None,
    mlflow_run_id: str | None = None,
    mlflow_experiment: str | None = None,
    model_name: str | None = None,
    model_version: str | None = None,
    published: dict[str, Any] | None = None,
    code_version: str | None = None,
) -> dict[str, Any]:
    """The card's data from the work folder, the given stage outputs and the previous
    ``run_card.json`` of this run (so a refresh after publish keeps what the gate stage knew)."""
    paths = RunPaths(Path(work))
    old = read_json_or_none(paths.run_card_data) or {}
    data: dict[str, Any] = {
        "schema": SCHEMA,
        "dag_id": dag_id,
        "run_id": run_id,
        "interval_start": str(interval_start) if interval_start is not None else old.get("interval_start"),
        "interval_end": str(interval_end) if interval_end is not None else old.get("interval_end"),
    }
    snapshot = _snapshot_part(paths, snap, old)
    if snapshot is not None:
        data["snapshot"] = snapshot
    split = _split_part(paths, parts, old)
    if split is not None:
        data["split"] = split
    data["validation"] = {
        "input": _validation_summary(read_json_or_none(paths.input_report)),
        "output": _validation_summary(read_json_or_none(paths.output_report)),
    }
    ev = read_json_or_none(paths.eval_report)
    if ev is not None:
        ev = {k: v for k, v in ev.items() if k != "per_user"}
    data["evaluation"] = ev
    data["gate"] = read_json_or_none(paths.gate)
    data.update(_model_part(old, ev, mlflow_run_id, mlflow_experiment, model_name, model_version))
    data["model"].update(_family_part(paths, data["model"]))
    data["published"] = published or old.get("published")
    data["code_version"] = code_version or old.get("code_version")
    data["history_point"] = _history_point(data)
    return data


def _snapshot_part(paths: RunPaths, snap: dict[str, Any] | None, old: dict[str, Any]) -> dict[str, Any] | None:
    """The snapshot stage's dict, else the previous card's, else read back from the files."""
    if snap:
        return {
            "window_start": snap.get("window_start"),
            "window_end": snap.get("window_end"),
            "sha256": snap.get("sha256"),
            "stats": snap.get("stats") or {},
        }
    if old.get("snapshot"):
        return old["snapshot"]
    if not paths.snapshot.exists():
        return None
    from include.recsys.core.io import file_sha256

    inp = read_json_or_none(paths.input_report) or {}
    return {
        "window_start": inp.get("window_start"),
        "window_end": inp.get("window_end"),
        "sha256": file_sha256(paths.snapshot),
        "stats": {
            "rows": _parquet_rows(paths.snapshot),
            "users": _parquet_rows(paths.snapshot_users),
            "items": _parquet_rows(paths.snapshot_items),
        },
    }


def _split_part(paths: RunPaths, parts: dict[str, Any] | None, old: dict[str, Any]) -> dict[str, Any] | None:
    """The split stage's stats, else the previous card's, else the row counts of the files."""
    if parts:
        return {"stats": parts.get("stats") or {}}
    if old.get("split"):
        return old["split"]
    if not paths.split_train.exists():
        return None
    return {
        "stats": {
            "train_rows": _parquet_rows(paths.split_train),
            "holdout_rows": _parquet_rows(paths.split_holdout),
        }
    }


def _model_part(
    old: dict[str, Any], ev: dict[str, Any] | None, mlflow_run_id: str | None, mlflow_experiment: str | None,
    model_name: str | None, model_version: str | None,
) -> dict[str, Any]:
    """``mlflow`` and ``model``: what was given, else what the previous card knew."""
    old_mlflow, old_model = old.get("mlflow") or {}, old.get("model") or {}
    return {
        "mlflow": {
            "run_id": mlflow_run_id or old_mlflow.get("run_id"),
            "experiment": mlflow_experiment or old_mlflow.get("experiment"),
        },
        "model": {
            "name": model_name or old_model.get("name"),
            "version": str(model_version) if model_version is not None else old_model.get("version"),
            "champion_version_evaluated": (ev or {}).get("champion_version"),
        },
    }


def _family_part(paths: RunPaths, old_model: dict[str, Any]) -> dict[str, Any]:
    """The model family and configuration ``train`` refitted (``tuning/best.json``), the
    families the search tried with each one's best validation NDCG@10 (the trial JSONs), and
    the bundle's own ``kind`` when no tuning file exists; else what the previous card knew."""
    out: dict[str, Any] = {}
    best = read_json_or_none(paths.tuning / "best.json")
    if best:
        config = best.get("config") or {}
        out.update(family=config.get("model_family", "als"), config=config, config_source=best.get("source"))
        plan = read_json_or_none(paths.tuning / "plan.json") or {}
        if plan.get("tune"):
            tried: dict[str, float | None] = {f: None for f in plan.get("families") or []}
            for p in sorted(paths.tuning.glob("trial-*.json")):
                r = read_json_or_none(p) or {}
                f = (r.get("params") or {}).get("model_family", "als")
                if r.get("ok"):
                    tried[f] = max(tried.get(f) or -1.0, float(r["best_metric"]))
                else:
                    tried.setdefault(f, None)
            out["families_tried"] = tried
            out["families_skipped"] = plan.get("families_skipped") or {}
    else:
        meta = read_json_or_none(paths.model_bundle / "bundle.json")
        if meta is not None:
            out["family"] = meta.get("kind", "als")
    for key in ("family", "config", "config_source", "families_tried", "families_skipped"):
        if key not in out and old_model.get(key) is not None:
            out[key] = old_model[key]
    return out


def _history_point(data: dict[str, Any]) -> dict[str, Any]:
    gate = data.get("gate") or {}
    metrics = (data.get("evaluation") or {}).get("metrics") or {}
    metric = gate.get("metric")
    return {
        "run_id": data["run_id"],
        "interval_end": data.get("interval_end"),
        "verdict": gate.get("verdict"),
        "forced": bool(gate.get("forced")),
        "metric": metric,
        **{name: as_number((metrics.get(name) or {}).get(metric), finite=True) for name in _MODEL_ORDER if metric},
        "published_version": (data.get("published") or {}).get("version"),
    }


def load_history(runs_root: Path, dag_id: str, run_id: str, metric: str | None, limit: int = HISTORY_RUNS) -> list[dict[str, Any]]:
    """History points of the previous runs of ``dag_id`` judged on ``metric``: read from their
    ``run_card.json`` under ``runs_root`` (oldest first, at most ``limit``)."""
    points = []
    for path in Path(runs_root).glob(f"*/*/{DATA_NAME}"):
        d = read_json_or_none(path)
        if not isinstance(d, dict) or d.get("dag_id") != dag_id or d.get("run_id") == run_id:
            continue
        p = d.get("history_point") or {}
        if metric and p.get("metric") != metric:
            continue
        points.append(p)
    points.sort(key=lambda p: (str(p.get("interval_end")), str(p.get("run_id"))))
    return points[-limit:]
