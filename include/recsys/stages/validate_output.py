"""The validate_output stage: the unpublished version's output contract (GX suite + set checks
against the snapshot's coded pairs, CURRENT, the rules and the A/B plan) before publish."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from include.recsys.config.settings import PipelineConfig
from include.recsys.core.run import RunContext
from include.recsys.stages._shared import (
    _log_validation_to_mlflow,
    _manifest_variants,
    _read_fallback,
    item_rules,
)

log = logging.getLogger(__name__)


def _privacy_seen(cfg: PipelineConfig, rc: RunContext, snap: dict[str, Any]) -> Any:
    """The snapshot's distinct (user, item) pairs as
    :class:`~include.recsys.validation.output.SeenPairs`, from the run's seen pattern
    (:func:`~include.recsys.stages._shared.run_seen`: built once per run, already sorted by user
    and item), with user ids tokenised as the table's are: only the distinct user ids are
    tokenised, never one string per row. A snapshot row with a missing id, or maps that do not
    fit the pattern, raise :class:`~include.recsys.errors.IdRouteError`."""
    from include.recsys.core.ids import RERUN, read_id_maps
    from include.recsys.core.privacy import enabled, load_key, pseudonymize_ids
    from include.recsys.errors import IdRouteError
    from include.recsys.stages._shared import load_seen, run_seen, seen_missing_rows
    from include.recsys.validation.output import SeenPairs

    users, items = read_id_maps(snap.get("users"), snap.get("items"), snap["snapshot"])
    folder = run_seen(cfg, rc, snap["snapshot"], snap.get("users"), snap.get("items"))
    missing = seen_missing_rows(folder)
    if missing:  # the input suite fails such a snapshot first
        raise IdRouteError(f"{snap['snapshot']}: {missing:,} row(s) with a missing user or item id: {RERUN}")
    indptr, indices = load_seen(folder)
    if len(indptr) != len(users) + 1 or (len(indices) and int(indices.max()) >= len(items)):
        raise IdRouteError(f"{snap['snapshot']}: the id maps beside it ({len(users):,} users, {len(items):,} items) "
                           f"do not fit the run's seen pattern ({folder}; maps of another snapshot?): {RERUN}")
    ids = pd.Index(pseudonymize_ids(users.ids, load_key())) if enabled() else users.ids
    return SeenPairs.from_csr(ids, items.ids, indptr, indices)


def validate_output(cfg: PipelineConfig, rc: RunContext, snap: dict[str, Any], pre: dict[str, Any]) -> dict[str, Any]:
    """Output contract of the unpublished version ``pre["path"]`` before publish.

    Raises OutputValidationError (a DataValidationError: no retries) when the table breaks it;
    publish does not run and CURRENT stays where it was.
    """
    from include.recsys.errors import OutputValidationError
    from include.recsys.tables.current import read_current
    from include.recsys.tables.layout import version_dir
    from include.recsys.tables.versions import read_version_table
    from include.recsys.validation.output import validate_table

    root = cfg.recommendations_root
    served = read_current(root)
    paths = rc.paths(cfg)
    paths.validation.mkdir(parents=True, exist_ok=True)
    current = None
    if served and served != pre["version"] and version_dir(root, served).exists():
        current = read_version_table(str(version_dir(root, served)), ["user_id", "item_id"])
    rules = item_rules(cfg, rc)
    try:
        report = validate_table(
            read_version_table(pre["path"]),
            top_n=cfg.top_n,
            seen=_privacy_seen(cfg, rc, snap),
            current=current,
            excluded=rules.excluded if rules is not None else None,
            fallback=_read_fallback(root, pre["version"]) if rules is not None else None,
            variants=_manifest_variants(root, pre["version"]),
            window=(snap["window_start"], snap["window_end"]),
            run_name=f"recommendations__{pre['version']}",
            report_path=paths.output_report,
            docs_dir=paths.data_docs / "output",
        )
    except OutputValidationError:
        _log_validation_to_mlflow(cfg, rc)
        raise
    _log_validation_to_mlflow(cfg, rc)
    log.info("output validation of %s: %s", pre["version"], report.summary())
    return {
        "version": pre["version"],
        "path": pre["path"],
        "report": str(paths.output_report),
        "counts": report.counts(),
        "data_docs": report.data_docs,
    }
