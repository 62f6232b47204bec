"""The ``split`` stage: the snapshot cut in time into the training period and the gate's
holdout."""

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
    from include.recsys.data.split import time_split_file

    cutoff = pd.Timestamp(snap["window_end"]) - pd.Timedelta(days=cfg.holdout_days)
    paths = rc.paths(cfg)
    stats = time_split_file(snap["snapshot"], cutoff, paths.split_train, paths.split_holdout)
    return {
        "train": str(paths.split_train),
        "holdout": str(paths.split_holdout),
        # the id maps the files' user_idx / item_idx index (the snapshot's)
        "users": snap.get("users"),
        "items": snap.get("items"),
        "stats": asdict(stats),
    }
