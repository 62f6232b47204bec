"""TODO docstring."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import pandas as pd

from include.recsys.config.settings import PipelineConfig
from include.recsys.core.run import RunContext

log = logging.getLogger(__name__)


def split(cfg: PipelineConfig, rc: RunContext, snap: dict[str, Any]) -> dict[str, Any]:
    """Time-based holdout of the snapshot -> ``split/train.parquet`` + ``split/holdout.parquet``
    (streamed row group by row group: the snapshot frame is never held whole)."""
    from include.recsys.core.memory import release_memory
    from include.recsys.data.split import time_split_file

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
