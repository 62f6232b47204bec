"""TODO docstring."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from include.recsys.config.settings import PipelineConfig
from include.recsys.core.run import RunContext
from include.recsys.stages._shared import (
    _coded,
    _log_validation_to_mlflow,
    _manifest_variants,
    _read_fallback,
    item_rules,
)

log = logging.getLogger(__name__)


def _privacy_seen(snap: dict[str, Any]) -> Any:
    """The snapshot's (user, item) pairs, with user ids tokenised as the table's are.

    A coded snapshot (``user_idx`` / ``item_idx`` and its id maps, see :func:`_coded`) gives
    :class:`~include.recsys.validation.output.SeenPairs`: two int32 columns plus the maps, and
    only the ~140k distinct user ids are tokenised. Otherwise string ids are read as
    categoricals (Parquet dictionaries: codes plus each distinct id once), which the output
    checks look up per category."""
    import pyarrow.parquet as pq

    from include.recsys.core.ids import CODE_COLUMNS, IdMap
    from include.recsys.core.privacy import (
        enabled,
        load_key,
        pseudonymize_ids,
        pseudonymize_table,
    )
    from include.recsys.validation.output import SeenPairs

    if _coded(snap):
        table = pq.read_table(snap["snapshot"], columns=list(CODE_COLUMNS))
        if not any(table.column(c).null_count for c in CODE_COLUMNS):
            u, i = (table.column(c).to_numpy() for c in CODE_COLUMNS)
            del table
            if len(i) == 0 or i.min() >= 0:  # a missing id (-1): the frame route below keeps it
                users = IdMap.read(snap["users"], "user").ids
                if enabled():
                    users = pd.Index(pseudonymize_ids(users, load_key()))
                return SeenPairs.from_codes(users, IdMap.read(snap["items"], "item").ids, u, i)
    columns = ["user_id", "item_id"]
    if enabled():
        return pseudonymize_table(pd.read_parquet(snap["snapshot"], columns=columns))
    return pd.read_parquet(snap["snapshot"], columns=columns, read_dictionary=columns)


def validate_output(cfg: PipelineConfig, rc: RunContext, snap: dict[str, Any], pre: dict[str, Any]) -> dict[str, Any]:
    """Output contract of the unpublished version ``pre["path"]`` before publish.

    Raises OutputValidationError (a DataValidationError: no retries) when the table breaks it;
    publish does not run and CURRENT stays where it was.
    """
    from include.recsys.core.memory import release_memory
    from include.recsys.errors import OutputValidationError
    from include.recsys.tables.current import read_current
    from include.recsys.tables.layout import version_dir
    from include.recsys.tables.versions import read_version_table
    from include.recsys.validation.output import validate_table

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
