"""Train implicit's ALS on the training split and return a :class:`ModelBundle`.

The user-item matrix holds the summed confidence weights of each pair (event-type weights or
ratings); implicit turns it into confidence ``c = 1 + alpha * r``. BLAS threads are limited
to one while ALS runs its own threads (implicit warns otherwise and runs slower).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from include.recsys.config import PipelineConfig
from include.recsys.data import IdMap, interaction_matrix
from include.recsys.recommend import ModelBundle

log = logging.getLogger(__name__)


@dataclass
class TrainStats:
    users: int
    items: int
    nnz: int
    fit_seconds: float
    total_seconds: float


def fit_als(user_items, cfg: PipelineConfig):
    """Fit implicit's CPU ALS on a CSR user-item confidence matrix; returns the model."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):  # implicit checks BLAS threads when the model is built
        model = AlternatingLeastSquares(
            factors=cfg.factors,
            regularization=cfg.regularization,
            alpha=cfg.alpha,
            iterations=cfg.iterations,
            random_state=cfg.seed,
            num_threads=cfg.num_threads,
        )
        model.fit(user_items, show_progress=False)
    return model


def segment_popularity(ui, users: IdMap, segments: pd.Series) -> tuple[pd.Index, np.ndarray]:
    """Distinct users per item within each segment: (segment ids, (n_segments, n_items))."""
    import scipy.sparse as sp

    seg = segments.reindex(users.ids)
    known = seg.notna().to_numpy()
    seg_ids = pd.Index(pd.unique(seg[known])).sort_values()
    codes = seg_ids.get_indexer(seg[known])
    member = sp.csr_matrix(
        (np.ones(len(codes), np.float32), (codes, np.flatnonzero(known))),
        shape=(len(seg_ids), ui.shape[0]),
    )
    binary = ui.copy()
    binary.data[:] = 1.0
    return seg_ids, np.asarray((member @ binary).todense(), dtype=np.int64)


def train(
    train_df: pd.DataFrame, cfg: PipelineConfig, segments: pd.Series | None = None
) -> tuple[ModelBundle, TrainStats]:
    """Build the matrix from the training events, fit ALS, bundle factors with the id maps.

    With ``segments`` (a user attribute by user_id) the bundle also carries per-segment item
    popularity for the cold-start fallback.
    """
    t0 = time.perf_counter()
    users = IdMap.from_values(train_df["user_id"])
    items = IdMap.from_values(train_df["item_id"])
    ui = interaction_matrix(train_df, users, items, value="weight")
    popularity = np.diff(ui.tocsc().indptr).astype(np.int64)  # distinct users per item
    t1 = time.perf_counter()
    model = fit_als(ui, cfg)
    fit_s = time.perf_counter() - t1
    bundle = ModelBundle(
        user_ids=users.ids,
        item_ids=items.ids,
        user_factors=np.ascontiguousarray(model.user_factors, dtype=np.float32),
        item_factors=np.ascontiguousarray(model.item_factors, dtype=np.float32),
        item_popularity=popularity,
        seen=ui,
    )
    if segments is not None:
        bundle.segment_ids, bundle.segment_popularity = segment_popularity(ui, users, segments)
    stats = TrainStats(len(users), len(items), int(ui.nnz), fit_s, time.perf_counter() - t0)
    log.info(
        "ALS fit: %d users x %d items, %d non-zeros, factors=%d, iterations=%d, in %.2fs "
        "(%.0f nnz-iterations/s); total with data preparation %.2fs",
        stats.users, stats.items, stats.nnz, cfg.factors, cfg.iterations, fit_s,
        stats.nnz * cfg.iterations / max(fit_s, 1e-9), stats.total_seconds,
    )
    return bundle, stats
