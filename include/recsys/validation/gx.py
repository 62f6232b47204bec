"""Great Expectations 1.x plumbing shared by the suites: building a suite from JSON, a quiet
ephemeral context with a local Data Docs site, and the frame GX sees (widened dtypes, no
fingerprint of big frames). GX is imported lazily: importing it takes seconds."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
from include.recsys.validation.report import _GX_SEVERITY, ERROR

logger = logging.getLogger(__name__)


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
