"""Great Expectations 1.x plumbing shared by the suites: building a suite from JSON, a quiet
ephemeral context with a local Data Docs site, the frame GX sees (widened dtypes, no
fingerprint of big frames) and the run of a suite's batches (the rows, and the distinct values
of the columns whose expectations ask for them) through Checkpoints. GX is imported lazily:
importing it takes seconds."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
from include.recsys.validation.report import _GX_SEVERITY, ERROR
from include.recsys.validation.spark_frames import is_spark, naive_utc

logger = logging.getLogger(__name__)

#: ``meta.domain`` of an expectation: what GX runs it on. ``rows`` (the default): the frame's
#: rows. ``distinct``: the distinct non-null values of its column, one GX batch per column --
#: for a per-value rule (the id format) or a distinct count the verdict is the same as on the
#: rows, at the cost of the distinct values (140k user ids instead of 17M rows on preset l);
#: the unexpected counts are then counts of distinct values, and the messages say so.
ROWS, DISTINCT = "rows", "distinct"
_DOMAINS = (ROWS, DISTINCT)


def _build_gx_suite(name: str, expectations: list[dict[str, Any]], meta: dict[str, Any]) -> Any:
    """Build a GX ``ExpectationSuite`` from expectation dicts, failing loudly on bad configs.

    ``ExpectationSuite(expectations=[...])`` only *logs* invalid expectations and drops
    them, which would silently weaken the contract, so each one is built eagerly here.
    """
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    built = []
    for exp in expectations:
        exp_meta = dict(exp.get("meta") or {})
        config = ExpectationConfiguration(
            type=exp["type"],
            kwargs=dict(exp["kwargs"]),
            meta=exp_meta,
            notes=exp.get("notes"),
            description=exp.get("description"),
            severity=_GX_SEVERITY[exp_meta.get("severity", ERROR)],
        )
        built.append(config.to_domain_obj())  # raises InvalidExpectationConfigurationError
    return gx.ExpectationSuite(name=name, expectations=built, meta=dict(meta))


def _quiet_gx() -> None:
    """Analytics off; the ``great_expectations`` logger at WARNING unless configured explicitly.

    GX logs hundreds of INFO lines on import (docs-decorator registration, datasource
    loading), so this must run before the first import.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    gx_logger = logging.getLogger("great_expectations")
    if gx_logger.level == logging.NOTSET:
        gx_logger.setLevel(logging.WARNING)


def _gx_context(docs_dir: str | Path | None = None) -> Any:
    """Create a quiet ephemeral GX context (no progress bars, no analytics).

    GX logs hundreds of INFO lines on import (docs-decorator registration, datasource
    loading); unless the ``great_expectations`` logger was configured explicitly, it is
    raised to WARNING so Airflow task logs stay readable.

    With ``docs_dir`` the context gets one Data Docs site (``local``): a plain folder of
    static HTML (``index.html``) that the checkpoint's ``UpdateDataDocsAction`` fills.
    """
    _quiet_gx()
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {}
    if docs_dir is not None:
        sites = {
            "local": {
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(Path(docs_dir).resolve()),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        data_docs_sites=sites,
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _gx_frame(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` as GX should see it: narrow numpy ints/floats widened to int64/float64.

    GX's pandas ``column_values.between`` is vectorised only for ``int``/``float`` (64-bit)
    dtypes and calls a Python function per row otherwise: float32 weights or scores took ~20 s
    per 5M rows. Widening is exact, so every result is the same; the dtype contract was
    already checked on the original frame.
    """
    import numpy as np

    wide = {
        c: df[c].astype(np.float64 if df[c].dtype.kind == "f" else np.int64)
        for c in df.columns
        if isinstance(df[c].dtype, np.dtype) and df[c].dtype.kind in "fiu"
        and df[c].dtype not in (np.dtype(np.float64), np.dtype(np.int64))
    }
    return df.assign(**wide) if wide else df

#: GX's pandas engine fingerprints every batch whose shallow memory use is below its
#: ``HASH_THRESHOLD`` (1e9 bytes): md5 over ``pd.util.hash_pandas_object`` of every cell. The
#: fingerprint is only a batch marker (shown under "Batch Markers" in Data Docs, used by no
#: expectation), yet on the 17M-row snapshot (0.96 GB, just under GX's limit) it costs ~4.5
#: CPU seconds -- as much as all expectations together. GX itself skips it above 1e9 bytes;
#: here the limit is lowered so only small frames (tests, small presets) keep a fingerprint.
GX_FINGERPRINT_MAX_BYTES = 64 * 2**20


@contextmanager
def _gx_fingerprint_limit(max_bytes: float) -> Any:
    """Temporarily lower GX's pandas batch-fingerprint threshold to ``max_bytes``."""
    from great_expectations.execution_engine import pandas_execution_engine as engine

    previous = getattr(engine, "HASH_THRESHOLD", None)
    if previous is None:  # a GX version without the threshold: nothing to lower
        yield
        return
    engine.HASH_THRESHOLD = min(previous, max_bytes)
    try:
        yield
    finally:
        engine.HASH_THRESHOLD = previous


def _run_gx(
    df: pd.DataFrame,
    definition: dict[str, Any],
    skip_reason: dict[int, str],
    *,
    parameters: dict[str, Any],
    run_name: str,
    run_time: datetime,
    asset_name: str,
    docs_dir: str | Path | None,
) -> tuple[dict[int, Any], bool | None, str | None]:
    """The expectations not skipped, through GX Checkpoints: (suite index -> GX result,
    every ``CheckpointResult.success``, Data Docs ``index.html``); nothing to run: ({}, None, None).

    One batch per domain (:data:`ROWS`: ``df`` as asset ``asset_name``; :data:`DISTINCT`: the
    distinct values of each such column as asset ``<asset_name>_<column>_distinct``), each with
    its own suite, ValidationDefinition and Checkpoint in one context (one Data Docs site)."""
    batches: dict[str, tuple[str | None, list[dict[str, Any]]]] = {}
    for i, exp in enumerate(definition["expectations"]):
        if i in skip_reason:
            continue
        exp_meta = {**(exp.get("meta") or {}), "_idx": i}
        column = exp["kwargs"].get("column") if exp_meta.get("domain", ROWS) == DISTINCT else None
        name = asset_name if column is None else f"{asset_name}_{column}_distinct"
        batches.setdefault(name, (column, []))[1].append({**exp, "meta": exp_meta})
    if not batches:
        return {}, None, None
    context = _gx_context(docs_dir)  # first: quietens GX logging before its (slow) import
    spark = is_spark(df)
    source = context.data_sources.add_spark(name="recsys_spark") if spark else context.data_sources.add_pandas(name="recsys_pandas")
    expectation_parameters = naive_utc(parameters) if spark else parameters
    gx_results: dict[int, Any] = {}
    success = True
    for name, (column, expectations) in batches.items():
        frame = df if column is None else _distinct(df, column)
        suite_name = definition["name"] if column is None else f"{definition['name']}.{column}_distinct"
        checkpoint_result = _run_checkpoint(
            context, source, name, suite_name, expectations, definition.get("meta") or {},
            frame=frame if spark else _gx_frame(frame),
            expectation_parameters=expectation_parameters, run_name=run_name, run_time=run_time,
        )
        success = success and bool(checkpoint_result.success)
        for suite_result in checkpoint_result.run_results.values():
            for exp_result in suite_result.results:
                gx_results[int(exp_result.expectation_config.meta["_idx"])] = exp_result
    ran = sum(len(exps) for _, exps in batches.values())
    if len(gx_results) != ran:
        raise RuntimeError(f"GX returned {len(gx_results)} results for {ran} expectations")
    docs_index = None
    if docs_dir is not None:  # once for every batch (a checkpoint action would rebuild per batch)
        context.build_data_docs(site_names=["local"])
        if (Path(docs_dir) / "index.html").exists():
            docs_index = str((Path(docs_dir) / "index.html").resolve())
    return gx_results, success, docs_index


def _run_checkpoint(
    context: Any, source: Any, asset_name: str, suite_name: str, expectations: list[dict[str, Any]],
    meta: dict[str, Any], *, frame: Any, expectation_parameters: dict[str, Any], run_name: str,
    run_time: datetime,
) -> Any:
    """One batch through GX: dataframe asset -> whole-dataframe batch definition -> suite ->
    ValidationDefinition -> Checkpoint (its results go to the context's store, for Data Docs)."""
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier

    batch_definition = (
        source.add_dataframe_asset(name=asset_name).add_batch_definition_whole_dataframe(name="whole_frame")
    )
    suite = context.suites.add(_build_gx_suite(suite_name, expectations, meta))
    if len(suite.expectations) != len(expectations):
        raise RuntimeError(f"GX built {len(suite.expectations)} of {len(expectations)} expectations of suite {suite_name}")
    validation_definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{suite_name}_vd", data=batch_definition, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"{suite_name}_checkpoint",
            validation_definitions=[validation_definition],
            result_format={"result_format": "BASIC"},
        )
    )
    with _gx_fingerprint_limit(GX_FINGERPRINT_MAX_BYTES):
        return checkpoint.run(
            batch_parameters={"dataframe": frame},
            expectation_parameters=expectation_parameters,
            run_id=RunIdentifier(run_name=run_name, run_time=run_time),
        )


def _distinct(df: Any, column: str) -> Any:
    """The distinct non-null values of ``df[column]`` as a one-column frame (a Spark DataFrame
    for a Spark ``df``). A categorical column (``read_snapshot``'s ids) gives the categories its
    rows use, without touching a string per row; others are hashed once (``pd.unique``)."""
    import numpy as np
    import pandas as pd

    if is_spark(df):
        return df.select(column).where(df[column].isNotNull()).distinct()
    values = df[column]
    if isinstance(values.dtype, pd.CategoricalDtype):
        codes = values.cat.codes.to_numpy()
        used = np.bincount(codes[codes >= 0], minlength=len(values.cat.categories)) > 0
        return pd.DataFrame({column: values.cat.categories[used].array})
    return pd.DataFrame({column: pd.unique(values.dropna())})
