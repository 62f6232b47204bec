"""Input checks beyond the GX suite: snapshot statistics, history and drift.

The GX suite (``include/config/gx/interactions_snapshot.json``) checks the snapshot frame
row by row and column by column. What it cannot see is handled here, vectorised with
numpy/pandas (no Python row loops) and reported in the same result format
(:func:`include.recsys.validation.report.check_result`):

* what the snapshot step saw at the source (``SnapshotStats``): the exact-duplicate rate
  (``duplicates_dropped / rows_read``), rows dated at/after the interval end (clock skew),
  rows before the window start, null ids; all dropped by the snapshot, so only visible here;
* the share of events of the most active user (a bot);
* drift against history: ``rows``, ``users``, ``items``, the share of new users / items
  (first event at/after the previous successful snapshot's window end) and the share of
  events on the top 1 % items, compared with the median of the last ``baseline_runs``
  successful snapshots of the same DAG, source and ``window_days``.

History: one JSON line per successful validation in
``<data_dir>/validation_history/<dag_id>.jsonl``, appended only when the run's input
validation passed (a retry of the same run replaces its line). With no usable history the
drift checks pass with an explicit "no baseline" note.

Bounds and severities live in ``include/config/validation.json``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.recsys.validation.input import validate_interactions
from include.recsys.validation.report import ERROR, ValidationReport, check_result

DEFAULT_BOUNDS_PATH: Path = Path(__file__).resolve().parents[2] / "config" / "validation.json"

BOUNDS_ENV = "RECSYS_VALIDATION_BOUNDS"

DRIFT_METRICS = ("rows", "users", "items", "new_user_share", "new_item_share", "top1pct_item_share")


def load_bounds(path: str | Path | None = None) -> dict[str, Any]:
    """The bounds file (``$RECSYS_VALIDATION_BOUNDS`` or ``include/config/validation.json``)."""
    target = Path(path or os.environ.get(BOUNDS_ENV) or DEFAULT_BOUNDS_PATH)
    bounds = json.loads(target.read_text(encoding="utf-8"))
    for section in ("input", "drift", "output"):
        if section not in bounds:
            raise ValueError(f"{target}: bounds need an {section!r} section")
    return bounds


def read_snapshot(
    path: str | Path, users: str | Path | None, items: str | Path | None
) -> tuple[pd.DataFrame, tuple[np.ndarray, np.ndarray]]:
    """The snapshot frame the suite validates, and its integer id codes.

    The int32 ``user_idx`` / ``item_idx`` columns (:data:`include.recsys.core.ids.CODE_COLUMNS`,
    written by the snapshot stage) are read as numpy arrays (nulls -> -1) for
    :func:`snapshot_statistics`. The frame gets every other column as ``pd.read_parquet`` reads
    it, except ``user_id`` / ``item_id``: those are rebuilt as categoricals from the codes and the
    snapshot's id maps (``users`` / ``items``), so no id string is read or held per row (17M rows
    on preset l); a code of -1 is a null id, for the suite to report. A snapshot without codes or
    maps raises :class:`~include.recsys.errors.IdRouteError`.
    """
    import pyarrow.parquet as pq

    from include.recsys.core.ids import CODE_COLUMNS, read_codes, read_id_maps

    user_map, item_map = read_id_maps(users, items, path)
    codes = read_codes(path, (len(user_map), len(item_map)), allow_missing=True)
    names = pq.read_schema(path).names
    columns = [c for c in names if c not in CODE_COLUMNS and not c.startswith("__index_level_")]
    df = pd.read_parquet(path, columns=[c for c in columns if c not in ("user_id", "item_id")])
    for column, id_map, code in (("user_id", user_map, codes[0]), ("item_id", item_map, codes[1])):
        if column in columns:
            # read_codes checked every code against the map: no second pass over the rows
            df[column] = pd.Categorical.from_codes(code, dtype=pd.CategoricalDtype(id_map.ids), validate=False)
    return df[columns], codes


def _epoch_us(ts: pd.Series) -> np.ndarray:
    """Microseconds since the epoch (UTC) as int64, NaT -> int64 min.

    A ``datetime64[*, tz]`` column is converted without leaving numpy (``to_numpy(dtype=...)``
    on a tz-aware column goes through Timestamp objects: ~0.8 s per 17M rows)."""
    if isinstance(ts.dtype, pd.DatetimeTZDtype):
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    if ts.dtype.kind == "M":
        return ts.to_numpy().astype("datetime64[us]", copy=False).view("int64")
    return ts.to_numpy(dtype="datetime64[us]", na_value=np.datetime64("NaT")).astype("int64")


def snapshot_statistics(
    df: pd.DataFrame,
    previous_end: pd.Timestamp | None,
    codes: tuple[np.ndarray, np.ndarray],
) -> dict[str, Any]:
    """Vectorised statistics of a snapshot frame (``event_ts``) and its rows' id codes.

    ``codes``: per-row integer codes of ``user_id`` and ``item_id`` (the snapshot's
    ``user_idx`` / ``item_idx``: positions in its sorted id maps; negative = missing id). No
    string column is hashed; only ids that occur are counted (a map may be wider than the rows).
    """
    n = len(df)
    u_codes, i_codes = (np.asarray(c) for c in codes)  # int32 as read: no widened copies
    if u_codes.dtype.kind not in "iu" or i_codes.dtype.kind not in "iu":
        raise TypeError(f"snapshot_statistics: codes must be integers, got {u_codes.dtype} / {i_codes.dtype}")
    if len(u_codes) != n or len(i_codes) != n:
        raise ValueError(f"snapshot_statistics: codes have {len(u_codes)} / {len(i_codes)} rows, frame {n}")
    u_ok, i_ok = u_codes >= 0, i_codes >= 0
    user_counts = np.bincount(u_codes[u_ok]) if u_ok.any() else np.zeros(0, np.int64)
    item_counts = np.bincount(i_codes[i_ok]) if i_ok.any() else np.zeros(0, np.int64)
    # codes of ids that do not occur (a map wider than the frame) are not ids of this frame
    u_present, i_present = user_counts > 0, item_counts > 0
    user_counts, item_counts = user_counts[u_present], item_counts[i_present]
    stats: dict[str, Any] = {"rows": n, "users": len(user_counts), "items": len(item_counts)}
    stats["top_user_share"] = float(user_counts.max() / n) if n and len(user_counts) else 0.0
    k = max(1, math.ceil(0.01 * len(item_counts)))
    stats["top1pct_item_share"] = (
        float(np.partition(item_counts, -k)[-k:].sum() / n) if n and len(item_counts) else 0.0
    )
    stats["new_user_share"] = stats["new_item_share"] = None
    if previous_end is not None and n:
        ts = _epoch_us(df["event_ts"])
        cut = pd.Timestamp(previous_end).tz_convert("UTC").tz_localize(None).to_datetime64().astype("datetime64[us]").astype("int64")
        for name, codes_, ok, present in (
            ("user", u_codes, u_ok, u_present), ("item", i_codes, i_ok, i_present)
        ):
            # first event per id: an unbuffered minimum per code (no hash group-by)
            first = np.full(len(present), np.iinfo(np.int64).max, dtype=np.int64)
            np.minimum.at(first, codes_[ok], ts[ok])
            first = first[present]
            stats[f"new_{name}_share"] = float((first >= cut).mean()) if len(first) else 0.0
    return stats


def history_path(data_dir: str | Path, key: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    return Path(data_dir) / "validation_history" / f"{safe}.jsonl"


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """Entries of a history file; unreadable lines are ignored (the history is advisory)."""
    p = Path(path)
    if not p.exists():
        return []
    entries = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


def append_history(path: str | Path, entry: dict[str, Any], keep: int) -> Path:
    """Add ``entry`` (replacing a line of the same ``run_id``), keep the last ``keep``; atomic."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    entries = [e for e in read_history(p) if e.get("run_id") != entry.get("run_id")]
    entries.append(entry)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text("".join(json.dumps(e, default=str) + "\n" for e in entries[-keep:]), encoding="utf-8")
    os.replace(tmp, p)
    return p


def comparable(
    entries: list[dict[str, Any]], *, run_id: str, source: str, window_days: int, window_end: pd.Timestamp
) -> list[dict[str, Any]]:
    """Previous entries of other runs, same source and window length, not newer than this one."""
    end = pd.Timestamp(window_end)
    return [
        e
        for e in entries
        if e.get("run_id") != run_id
        and e.get("source") == source
        and e.get("window_days") == window_days
        and pd.Timestamp(e["window_end"]) <= end
    ]


def _max_check(name: str, observed: float, spec: dict[str, Any], what: str) -> dict[str, Any]:
    bound = spec["max"]
    ok = observed <= bound
    shown = f"{observed:.4g}" if isinstance(observed, float) else f"{observed:,}"
    return check_result(
        name, severity=spec.get("severity", ERROR), success=ok, observed=observed,
        bounds={"max": bound}, message=f"{what}: observed {shown} > bound {bound}",
    )


def source_checks(snap_stats: dict[str, Any], frame_stats: dict[str, Any], bounds: dict[str, Any]) -> list[dict[str, Any]]:
    """Checks on what the snapshot step saw at the source, and on the bot share."""
    checks = bounds["input"]["checks"]
    read = int(snap_stats.get("rows_read") or 0)
    dups = int(snap_stats.get("duplicates_dropped") or 0)
    rate = dups / read if read else 0.0
    out = [
        _max_check(
            "duplicate_rate", rate, checks["duplicate_rate"],
            f"exact-duplicate rate {dups:,} of {read:,} rows read (upstream double load?)",
        )
    ]
    for key, what in (
        ("future_rows", "source rows dated at/after the data interval end (dropped)"),
        ("outside_window_rows", "source rows dated before the window start (dropped)"),
        ("null_id_rows", "source rows with a null user_id or item_id"),
    ):
        if key in snap_stats:
            out.append(_max_check(key, int(snap_stats[key]), checks[key], what))
    out.append(
        _max_check(
            "top_user_share", frame_stats["top_user_share"], checks["top_user_share"],
            "share of events from the most active user (bot?)",
        )
    )
    return out


def drift_checks(
    stats: dict[str, Any], baseline: list[dict[str, Any]], bounds: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Compare ``stats`` with the median of ``baseline`` entries; (results, notes)."""
    drift = bounds["drift"]
    recent = baseline[-int(drift.get("baseline_runs", 7)) :]
    notes: list[str] = []
    results: list[dict[str, Any]] = []
    if not recent:
        notes.append("drift: no baseline (no previous successful snapshot of this source); drift checks passed without comparison")
    for name, spec in drift["checks"].items():
        severity = spec.get("severity", ERROR)
        current = stats.get(name)
        values = [e[name] for e in recent if e.get(name) is not None]
        if current is None or not values:
            results.append(check_result(
                f"drift_{name}", severity=severity, success=True, observed=current, bounds=spec,
                note="no baseline",
            ))
            continue
        base = float(np.median(values))
        def fmt(v: float) -> str:
            return f"{v:,.0f}" if float(v).is_integer() and abs(v) >= 1 else f"{v:.4g}"

        label = f"{name}: {fmt(current)} vs baseline {fmt(base)} (median of {len(values)} previous run(s))"
        if "max_abs_change" in spec:
            change = abs(current - base)
            ok = change <= spec["max_abs_change"]
            msg = f"{label}: change {change:.4g} > bound {spec['max_abs_change']}"
        else:
            ratio = current / base if base else math.inf
            ok = spec.get("min_ratio", 0) <= ratio <= spec.get("max_ratio", math.inf)
            msg = f"{label}: ratio {ratio:.3g} outside [{spec.get('min_ratio', 0)}, {spec.get('max_ratio', 'inf')}]"
        res = check_result(
            f"drift_{name}", severity=severity, success=ok, observed={"current": current, "baseline": base},
            bounds=spec, message=msg,
        )
        results.append(res)
    return results, notes


def validate_snapshot(
    df: pd.DataFrame,
    snap: dict[str, Any],
    *,
    run_id: str,
    history_file: str | Path,
    source: str,
    window_days: int,
    event_types: list[str],
    report_path: str | Path | None = None,
    docs_dir: str | Path | None = None,
    bounds: dict[str, Any] | None = None,
    codes: tuple[np.ndarray, np.ndarray],
    suite_frame: Any = None,
) -> tuple[ValidationReport, dict[str, Any]]:
    """The whole input contract: GX suite + source statistics + drift; history on success.

    ``snap`` is the dict :func:`include.recsys.stages.snapshot.snapshot` returns (``window_start``,
    ``window_end``, ``stats``); ``codes`` the integer id codes of ``df``'s rows
    (:func:`read_snapshot`, see :func:`snapshot_statistics`). Returns (report, statistics); raises
    :class:`~include.recsys.errors.DataValidationError` on any error-severity failure
    (the history is then left untouched). ``suite_frame``: the frame the GX suite runs on
    instead of ``df`` (backend=spark: the snapshot as a Spark DataFrame, the suite on the cluster).
    """
    bounds = bounds or load_bounds()
    window_end = pd.Timestamp(snap["window_end"])
    entries = read_history(history_file)
    previous = comparable(entries, run_id=run_id, source=source, window_days=window_days, window_end=window_end)
    earlier = [e for e in previous if pd.Timestamp(e["window_end"]) < window_end]
    prev_end = pd.Timestamp(earlier[-1]["window_end"]) if earlier else None
    stats = snapshot_statistics(df, prev_end, codes)
    extra = source_checks(snap.get("stats") or {}, stats, bounds)
    drift, notes = drift_checks(stats, previous, bounds)
    if previous and prev_end is None:
        notes.append("drift: new user/item shares not compared (no earlier window in the history)")
    inp = bounds["input"]
    stats["duplicate_rate"] = extra[0]["observed_value"]
    report = validate_interactions(
        df if suite_frame is None else suite_frame,
        window_start=pd.Timestamp(snap["window_start"]),
        window_end=window_end,
        parameters={
            "event_types": sorted(set(event_types) | set(inp.get("extra_event_types", []))),
            "weight_max": inp["weight_max"],
            "min_users": inp["min_users"],
            "min_items": inp["min_items"],
            "freshness_lag_days": inp.get("freshness_lag_days", 0),
        },
        extra_results=extra + drift,
        notes=notes + [
            f"unknown source column(s) {extra_columns} present (allowed; not used)"
            for extra_columns in [(snap.get("stats") or {}).get("extra_columns")] if extra_columns
        ],
        report_path=report_path,
        docs_dir=docs_dir,
    )  # raises DataValidationError before the history is touched
    entry = {
        "run_id": run_id,
        "source": source,
        "window_days": window_days,
        "window_start": snap["window_start"],
        "window_end": snap["window_end"],
        **{k: stats[k] for k in (*DRIFT_METRICS, "top_user_share", "duplicate_rate")},
    }
    append_history(history_file, entry, int(bounds["drift"].get("history_size", 30)))
    return report, stats
