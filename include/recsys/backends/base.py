"""The compute seam: what a training and scoring engine gives the stages.

A backend fits a model on the training split's integer codes and scores every user against
it; whatever engine does the work, its output is a :class:`ModelBundle` (factors + the
snapshot's id maps + training popularity) and :class:`Recommendations` in the bundle's item
space, so evaluation, the gate, the registry, the table and its readers never know which
engine ran. ``implicit`` (CPU ALS and the item-item families, on this machine) and ``spark``
(MLlib ALS, scoring per partition on a cluster) implement the same three methods and register
their import paths in :data:`BACKENDS`."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    from include.recsys.core.ids import IdMap
    from include.recsys.scoring.bundle import ModelBundle
    from include.recsys.scoring.recommend import Recommendations

#: backend name -> "module:attribute" of its instance (imported on first use only)
BACKENDS = {
    "implicit": "include.recsys.backends.implicit:BACKEND",
    "spark": "include.recsys.backends.spark:BACKEND",
}


class Backend(Protocol):
    """Read the training split, fit, score every user; the stages call nothing else of an engine."""

    name: str

    def read_training(self, cfg: Any, path: str, *, cutoff: pd.Timestamp | None = None) -> Any:
        """The training split's events (``user_idx``/``item_idx``, ``weight``, ``event_ts``) in the
        engine's own frame (pandas for implicit, a Spark DataFrame for spark), read from its
        Parquet file; events at or after ``cutoff`` fail the leak check (``TrainingError``)."""
        ...

    def fit(
        self,
        train_df: pd.DataFrame,
        cfg: Any,
        segments: pd.Series | None = None,
        *,
        id_maps: tuple[IdMap, IdMap],
        cutoff: pd.Timestamp | None = None,
    ) -> tuple[ModelBundle, Any]:
        """The model of the training events (``user_idx``/``item_idx`` codes into ``id_maps``,
        ``weight``, ``event_ts``) and the fit's statistics (users, items, nnz, seconds)."""
        ...

    def score(
        self,
        bundle: ModelBundle,
        users: pd.Index,
        seen: sp.spmatrix,
        n: int,
        *,
        block_size: int = 1024,
        user_segments: pd.Series | None = None,
        allowed: np.ndarray | None = None,
        cfg: Any = None,
    ) -> Recommendations:
        """Top-``n`` of every user in ``users`` with ``seen`` items filtered and the popularity
        fallback for users the model does not know; ``allowed`` masks items out (rules);
        ``cfg`` tells an engine where it runs (spark: the master and its settings)."""
        ...


def get(name: str) -> Backend:
    """The backend called ``name`` (``cfg.backend``); an unknown name is a config error."""
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r} is not one of {sorted(BACKENDS)}")
    module, attr = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), attr)
