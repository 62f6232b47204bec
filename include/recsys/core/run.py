"""Who is running: the DAG run, its data interval, and the work folder keyed by both.

Every stage writes under ``<runs_root>/<interval>/<run>/``: a rerun of the same run overwrites
its own outputs (idempotent), another run of the same interval gets its own folder."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

import pandas as pd

from include.recsys.core.paths import RunPaths


class HasRunsRoot(Protocol):
    """Anything that knows where run folders live (a ``PipelineConfig``)."""

    @property
    def runs_root(self) -> Path: ...


@dataclass(frozen=True)
class RunContext:
    """Who is running: the DAG run and the data interval it is keyed by."""

    dag_id: str
    run_id: str
    interval_start: datetime
    interval_end: datetime
    try_number: int = 1

    @property
    def end(self) -> pd.Timestamp:
        ts = pd.Timestamp(self.interval_end)
        return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")

    @property
    def interval_key(self) -> str:
        return self.end.strftime("%Y%m%dT%H%M%SZ")

    @property
    def run_key(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.run_id)

    @property
    def version(self) -> str:
        """The table version this run may publish: sortable by interval, unique per run."""
        return f"{self.interval_key}-{hashlib.sha1(self.run_id.encode()).hexdigest()[:8]}"

    def work_dir(self, cfg: HasRunsRoot) -> Path:
        d = cfg.runs_root / self.interval_key / self.run_key
        d.mkdir(parents=True, exist_ok=True)
        return d

    def paths(self, cfg: HasRunsRoot) -> RunPaths:
        """This run's work folder layout (created on first use)."""
        return RunPaths(self.work_dir(cfg))

    def data_interval(self) -> dict[str, str]:
        """The run's data interval as UTC ISO strings (``start``, ``end``)."""
        start = pd.Timestamp(self.interval_start)
        start = start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")
        return {"start": start.isoformat(), "end": self.end.isoformat()}

    def mlflow_tags(self) -> dict[str, str]:
        return {
            "dag_id": self.dag_id,
            "airflow_run_id": self.run_id,
            "data_interval_start": str(self.interval_start),
            "data_interval_end": str(self.interval_end),
            "airflow_try_number": str(self.try_number),
        }
