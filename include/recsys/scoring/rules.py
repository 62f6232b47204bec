"""Item availability and business rules: which items may be recommended tonight.

The rules source is a Parquet or CSV table, one row per item (the path from
``RECSYS_ITEM_RULES``; see ``PipelineConfig.item_rules_path``):

==================  ========  ==================================================================
column              required  meaning
==================  ========  ==================================================================
``item_id``         yes       the item, as the interactions spell it (one row per item)
``available``       yes       true/false (also 1/0, "true"/"false", "yes"/"no")
``available_from``  no        the item may be shown from this instant on (UTC; empty: no bound)
``available_until`` no        ... and before this instant (exclusive; empty: no bound)
``category``        no        free text; the manifest counts exclusions per category
``allow_surfaces``  no        ``|``-separated surfaces the item may appear on (empty: all)
``deny_surfaces``   no        ``|``-separated surfaces it must never appear on
==================  ========  ==================================================================

An item is **excluded** when ``available`` is false, when the run's data interval end (never
the wall clock: a rerun of the same night gives the same lists) is before ``available_from`` or
at/after ``available_until``, or -- when the table is built for a surface
(``item_rules_surface``) -- when that surface is in ``deny_surfaces`` or ``allow_surfaces`` is
non-empty without it. Items the rules file does not list are allowed (the file lists the
catalog's exceptions and its known items; the manifest counts the unlisted ones).

Scoring applies the rules inside the top-k kernel (excluded items are left out of the scan, so
each list fills to N from the next best allowed items), the popularity fallback and the
similar-items table likewise; output validation checks that no excluded item appears.

A missing, empty or malformed file is a :class:`RulesError` (a data error: the DAG fails the
task without retries) naming the file, column and row. With ``item_rules_on_error:
keep_previous`` the last good copy (``<data_dir>/rules/last_good.parquet``, saved whenever a
file loads cleanly) is used instead, and the run's manifest says so.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.recsys.core.io import atomic_write, file_sha256, write_parquet
from include.recsys.errors import RulesError

log = logging.getLogger(__name__)


REQUIRED = ("item_id", "available")

OPTIONAL = ("available_from", "available_until", "category", "allow_surfaces", "deny_surfaces")

_TRUE = {"true", "1", "yes", "y", "t"}

_FALSE = {"false", "0", "no", "n", "f"}

LAST_GOOD = "last_good.parquet"

LAST_GOOD_META = "last_good.json"

RESOLVED_META = "resolved.json"


@dataclass
class ItemRules:
    """The rules resolved for one instant: which item ids are excluded, and why."""

    excluded: pd.Index  # item ids that must not be recommended
    listed: int  # rows (items) in the rules file
    sha256: str  # digest of the rules file's bytes
    path: str  # where they were read from
    as_of: str  # the instant the date bounds were compared to (the data interval end)
    surface: str = ""
    source: str = "file"  # "file" | "previous copy"
    error: str | None = None  # why the previous copy is used
    by_category: dict[str, int] = field(default_factory=dict)

    def allowed_mask(self, item_ids: pd.Index) -> np.ndarray:
        """Bool per entry of ``item_ids``: True where the item may be recommended."""
        if len(self.excluded) == 0:
            return np.ones(len(item_ids), dtype=bool)
        return ~_isin(pd.Index(item_ids), self.excluded)

    def summary(self, item_ids: pd.Index | None = None) -> dict[str, Any]:
        """What the manifest records: digest, counts, and where the rules came from."""
        out: dict[str, Any] = {
            "path": self.path, "sha256": self.sha256, "source": self.source, "as_of": self.as_of,
            "items_listed": self.listed, "excluded_items": int(len(self.excluded)),
            "surface": self.surface or None, "excluded_by_category": self.by_category,
        }
        if item_ids is not None:
            mask = self.allowed_mask(item_ids)
            out["excluded_in_catalog"] = int((~mask).sum())
            out["catalog_items"] = int(len(item_ids))
        if self.error:
            out["error"] = self.error
        return out


def _isin(ids: pd.Index, excluded: pd.Index) -> np.ndarray:
    """``ids.isin(excluded)`` tolerant of int/str spelling differences (CSV vs Parquet ids)."""
    hit = np.asarray(ids.isin(excluded), dtype=bool)
    if ids.dtype.kind != excluded.dtype.kind:
        hit |= np.asarray(ids.astype(str).isin(excluded.astype(str)), dtype=bool)
    return hit


def read_rules_table(path: Path | str) -> pd.DataFrame:
    """The rules file as a checked DataFrame; :class:`RulesError` naming file/column/row."""
    path = Path(path)
    if not str(path) or not path.is_file():
        raise RulesError(f"item rules file {path} does not exist: fix RECSYS_ITEM_RULES or restore the file")
    try:
        if path.suffix.lower() in (".csv", ".txt"):
            df = pd.read_csv(path, dtype={"item_id": str, "category": str, "allow_surfaces": str,
                                          "deny_surfaces": str, "available": str})
        else:
            df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow/pandas raise many types for a corrupt file
        raise RulesError(f"item rules file {path} cannot be read as "
                         f"{'CSV' if path.suffix.lower() == '.csv' else 'Parquet'}: {exc}") from exc
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise RulesError(f"item rules file {path} lacks column(s) {missing} (has {list(df.columns)}); "
                         f"required: {list(REQUIRED)}")
    if df.empty:
        raise RulesError(f"item rules file {path} is empty: an empty rules file would allow every "
                         "item; write at least one row, or unset RECSYS_ITEM_RULES")
    _check_ids(df, path)
    df["available"] = _parse_bool(df["available"], path)
    for col in ("available_from", "available_until"):
        if col in df.columns:
            df[col] = _parse_time(df[col], path, col)
    if "available_from" in df.columns and "available_until" in df.columns:
        bad = (df["available_from"] >= df["available_until"]).fillna(False).to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise RulesError(f"item rules file {path}, row {row} (item {df['item_id'].iloc[row]!r}): "
                             "available_from is not before available_until")
    return df


def _check_ids(df: pd.DataFrame, path: Path) -> None:
    ids = df["item_id"]
    null = ids.isna().to_numpy() | (ids.astype(str).str.strip() == "").to_numpy()
    if null.any():
        raise RulesError(f"item rules file {path}, column item_id, row {int(np.flatnonzero(null)[0])}: "
                         "empty item id")
    dup = ids.duplicated().to_numpy()
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        raise RulesError(f"item rules file {path}, column item_id, row {row}: item {ids.iloc[row]!r} "
                         "is listed twice (one row per item)")


def _parse_bool(col: pd.Series, path: Path) -> pd.Series:
    if col.dtype == bool:
        return col
    text = col.astype(str).str.strip().str.lower()
    ok = text.isin(_TRUE | _FALSE).to_numpy() & col.notna().to_numpy()
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        raise RulesError(f"item rules file {path}, column available, row {row}: {col.iloc[row]!r} is "
                         "not a boolean (true/false, 1/0, yes/no)")
    return text.isin(_TRUE)


def _parse_time(col: pd.Series, path: Path, name: str) -> pd.Series:
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        return col.dt.tz_convert("UTC")
    parsed = pd.to_datetime(col, utc=True, errors="coerce", format="mixed")
    bad = parsed.isna().to_numpy() & col.notna().to_numpy() & (col.astype(str).str.strip() != "").to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise RulesError(f"item rules file {path}, column {name}, row {row}: {col.iloc[row]!r} is not a "
                         "timestamp (ISO 8601, UTC)")
    return parsed


def _surfaces(col: pd.Series) -> list[set[str]]:
    return [set() if pd.isna(v) else {s.strip() for s in str(v).split("|") if s.strip()} for v in col]


def resolve(df: pd.DataFrame, as_of: Any, surface: str = "") -> np.ndarray:
    """Bool per row of a checked rules table: True where the item is excluded at ``as_of``."""
    ts = pd.Timestamp(as_of)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    excluded = ~df["available"].to_numpy(dtype=bool)
    if "available_from" in df.columns:
        excluded |= (df["available_from"] > ts).fillna(False).to_numpy(dtype=bool)
    if "available_until" in df.columns:
        excluded |= (df["available_until"] <= ts).fillna(False).to_numpy(dtype=bool)
    if surface:
        if "deny_surfaces" in df.columns:
            excluded |= np.array([surface in s for s in _surfaces(df["deny_surfaces"])], dtype=bool)
        if "allow_surfaces" in df.columns:
            excluded |= np.array([bool(s) and surface not in s for s in _surfaces(df["allow_surfaces"])], dtype=bool)
    return excluded


def _from_table(df: pd.DataFrame, path: str, digest: str, as_of: Any, surface: str, **kw: Any) -> ItemRules:
    mask = resolve(df, as_of, surface)
    by_cat: dict[str, int] = {}
    if "category" in df.columns:
        counts = df.loc[mask, "category"].fillna("").astype(str).value_counts()
        by_cat = {str(k): int(v) for k, v in counts.items()}
    return ItemRules(
        excluded=pd.Index(df.loc[mask, "item_id"].to_numpy()), listed=len(df), sha256=digest, path=path,
        as_of=pd.Timestamp(as_of).isoformat(), surface=surface, by_category=by_cat, **kw,
    )


def load_for_run(
    path: Path | str, as_of: Any, *, on_error: str = "fail", keep_dir: Path | str, surface: str = ""
) -> ItemRules:
    """The rules of one run, with the keep-previous policy.

    A clean load refreshes the last good copy under ``keep_dir`` (the file's own bytes, so its
    digest is the same). On a :class:`RulesError`: ``on_error="fail"`` re-raises it;
    ``"keep_previous"`` resolves the last good copy at ``as_of`` instead (``source: previous
    copy``, the error recorded), or re-raises when there is none.
    """
    if on_error not in ("fail", "keep_previous"):
        raise ValueError(f"item_rules_on_error must be 'fail' or 'keep_previous', got {on_error!r}")
    keep = Path(keep_dir)
    path = Path(path)
    try:
        df = read_rules_table(path)
    except RulesError as exc:
        if on_error == "fail" or not (keep / LAST_GOOD).exists():
            if on_error == "keep_previous":
                raise RulesError(f"{exc} (keep_previous: no last good copy under {keep} yet)") from exc
            raise
        meta = json.loads((keep / LAST_GOOD_META).read_text()) if (keep / LAST_GOOD_META).exists() else {}
        log.warning("item rules: %s; using the last good copy %s (from %s, saved %s)",
                    exc, keep / LAST_GOOD, meta.get("path"), meta.get("saved_for"))
        prev = pd.read_parquet(keep / LAST_GOOD)
        return _from_table(prev, str(keep / LAST_GOOD), meta.get("sha256", file_sha256(keep / LAST_GOOD)),
                           as_of, surface, source="previous copy", error=str(exc))
    digest = file_sha256(path)
    rules = _from_table(df, str(path), digest, as_of, surface)
    # the checked table (bools and timestamps parsed), with the source file's digest
    write_parquet(df, keep / LAST_GOOD)
    atomic_write(keep / LAST_GOOD_META, json.dumps({"path": str(path), "sha256": digest, "saved_for": rules.as_of}))
    return rules


def save_resolved(rules: ItemRules, folder: Path | str) -> ItemRules:
    """Freeze a run's resolved rules in its work folder, first writer wins (an exclusive
    ``os.link``): every shard, the fallback and the similar-items table then use the same
    exclusions even when the rules file changes during the run. Returns the frozen rules."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / RESOLVED_META
    meta = {k: v for k, v in rules.__dict__.items() if k != "excluded"}
    meta["excluded"] = rules.excluded.to_numpy().tolist()
    tmp = folder / f".{RESOLVED_META}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta, default=str))
    try:
        os.link(tmp, target)
    except FileExistsError:
        log.info("item rules of this run were already resolved (%s): using those", target)
    finally:
        tmp.unlink(missing_ok=True)
    return read_resolved(folder)


def read_resolved(folder: Path | str) -> ItemRules | None:
    """The rules frozen by :func:`save_resolved`, or None when none were."""
    path = Path(folder) / RESOLVED_META
    if not path.exists():
        return None
    meta = json.loads(path.read_text())
    return ItemRules(excluded=pd.Index(meta.pop("excluded")), **meta)
