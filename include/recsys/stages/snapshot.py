"""The ``snapshot`` stage: the source's window ending at the data interval end, frozen with
integer codes into its sorted id maps, for every later stage to read."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from include.recsys.config.settings import PipelineConfig
from include.recsys.core.run import RunContext

log = logging.getLogger(__name__)


def snapshot(cfg: PipelineConfig, rc: RunContext) -> dict[str, Any]:
    """Window of the source ending at the interval end -> snapshot Parquet + id maps."""
    from include.recsys.core.io import file_sha256, write_parquet
    from include.recsys.data.snapshot import (
        build_indexed_snapshot,
        write_snapshot_parquet,
    )
    from include.recsys.data.source import Window

    window = Window.ending_at(rc.end, cfg.window_days)
    snap = build_indexed_snapshot(cfg, window)
    stats = snap.stats
    paths = rc.paths(cfg)
    # the rows carry int32 user_idx / item_idx into the sorted id maps written beside them, so
    # later stages join, group and build matrices on integers instead of string ids
    path = write_snapshot_parquet(snap.frame, paths.snapshot)
    write_parquet(snap.users.to_frame("user"), paths.snapshot_users)
    write_parquet(snap.items.to_frame("item"), paths.snapshot_items)
    return {
        "snapshot": str(path),
        "users": str(paths.snapshot_users),
        "items": str(paths.snapshot_items),
        "window_start": window.start.isoformat(),
        "window_end": window.end.isoformat(),
        "sha256": file_sha256(path),
        "stats": asdict(stats),
    }
