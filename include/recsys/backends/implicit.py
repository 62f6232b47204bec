"""Train implicit's ALS (or an item-item family) on the training split; return a :class:`ModelBundle`.

``cfg.model_family`` picks the model: ``als`` (below) or the item-item families of
:mod:`include.recsys.backends.families` (implicit's item-kNN, EASE), fitted on the same matrix
and bundled with the same id maps, popularity, seen filter and segment fallback.

The matrix ALS sees is built by :mod:`include.recsys.backends.weighting`: event-type weights (or
ratings), an optional recency decay relative to the training cutoff, one summed entry per
(user, item) pair, an optional BM25 / TF-IDF re-weighting; implicit turns it into confidence
``c = 1 + alpha * value``. BLAS threads are limited to one while ALS runs its own threads
(implicit warns otherwise and runs slower).

Correctness checks made here, each failing with a :class:`TrainingError` that names the input:
no training event at or after the cutoff (no leak from the evaluation period), finite factors
after the fit, and the bundle's id-map hash (the factors cannot later be read through another
run's id maps).

Determinism: implicit's CPU ALS solves every user (item) row independently of the others,
so a fixed ``seed`` gives bit-identical factors whatever ``num_threads`` is, with the
conjugate-gradient solver and with Cholesky alike (measured: 3 fits of a 20k x 5k matrix with
400k non-zeros, 2 threads and 1 thread, CG and Cholesky, all identical). The BLAS product
``Y^T Y`` runs single-threaded (``threadpool_limits``), which keeps its summation order fixed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from include.recsys.backends.weighting import ConfidenceSpec, confidence_matrix
from include.recsys.config.settings import PipelineConfig
from include.recsys.core.ids import RERUN, IdMap, compact_codes, interaction_matrix
from include.recsys.data.split import check_no_leak, read_training_events
from include.recsys.errors import IdRouteError, TrainingError
from include.recsys.scoring.bundle import ModelBundle, id_maps_sha256
from include.recsys.scoring.recommend import Recommendations, recommend

log = logging.getLogger(__name__)


#: Config fields that describe the model (what tuning chooses and what a best config holds).
MODEL_FIELDS: tuple[str, ...] = (
    "factors",
    "regularization",
    "alpha",
    "iterations",
    "weighting",
    "bm25_k1",
    "bm25_b",
    "recency_half_life_days",
    "model_family",
    "knn_kind",
    "knn_k",
    "knn_bm25_k1",
    "knn_bm25_b",
    "ease_lambda",
)


@dataclass
class TrainStats:
    users: int
    items: int
    nnz: int
    fit_seconds: float
    total_seconds: float
    iterations: int = 0


def model_config(cfg: PipelineConfig) -> dict[str, object]:
    """The model-describing fields of a config (see :data:`MODEL_FIELDS`)."""
    return {k: getattr(cfg, k) for k in MODEL_FIELDS}


def check_finite(model_factors: dict[str, np.ndarray], cfg: PipelineConfig) -> None:
    """Raise :class:`TrainingError` if any factor is NaN or infinite (then every score is)."""
    for name, f in model_factors.items():
        bad = ~np.isfinite(f)
        if bad.any():
            raise TrainingError(
                f"ALS produced {int(bad.sum())} non-finite {name} value(s) (factors={cfg.factors}, "
                f"regularization={cfg.regularization}, alpha={cfg.alpha}, weighting={cfg.weighting}); "
                "scores would not be finite. Raise regularization or lower alpha."
            )


def build_als(cfg: PipelineConfig, iterations: int | None = None):
    """An unfitted implicit CPU ALS model for the config (fit it inside ``threadpool_limits``)."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):  # implicit checks BLAS threads when the model is built
        return AlternatingLeastSquares(
            factors=cfg.factors,
            regularization=cfg.regularization,
            alpha=cfg.alpha,
            iterations=iterations or cfg.iterations,
            random_state=cfg.seed,
            num_threads=cfg.num_threads,
            use_cg=cfg.use_cg,
        )


def fit_als(
    user_items,
    cfg: PipelineConfig,
    *,
    iterations: int | None = None,
    callback: Callable[[int, float, float | None], None] | None = None,
    model=None,
):
    """Fit implicit's CPU ALS on a CSR user-item confidence matrix; returns the model.

    ``callback(iteration, seconds, loss)`` is implicit's per-sweep fit callback (0.7.3:
    ``fit(user_items, show_progress=True, callback=None)``), used for early stopping; pass
    ``model`` (from :func:`build_als`) when the callback needs to read its factors.
    """
    from threadpoolctl import threadpool_limits

    model = model if model is not None else build_als(cfg, iterations)
    with threadpool_limits(1, "blas"):
        model.fit(user_items, show_progress=False, callback=callback)
    return model


def _index(df: pd.DataFrame, name: str, id_map: IdMap) -> tuple[IdMap, np.ndarray]:
    """The ids of ``id_map`` (the snapshot's sorted map) that ``df``'s ``<name>_idx`` codes use,
    and every row's index into that subset: the model knows the ids it trained on only."""
    col = f"{name}_idx"
    if col not in df.columns:
        raise IdRouteError(f"training events have no {col} codes into the {name} id map: {RERUN}")
    codes = df[col].to_numpy()
    if len(codes) and int(codes.max()) >= len(id_map):
        raise TrainingError(
            f"{col} holds {int(codes.max())}, beyond the {len(id_map)} ids of the {name} id map: "
            "the split and the id maps come from different snapshots"
        )
    present, codes = compact_codes(codes, len(id_map), np.int64)
    return IdMap(id_map.ids if present.all() else id_map.ids[present]), codes


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
    train_df: pd.DataFrame,
    cfg: PipelineConfig,
    segments: pd.Series | None = None,
    *,
    id_maps: tuple[IdMap, IdMap],
    cutoff: pd.Timestamp | None = None,
) -> tuple[ModelBundle, TrainStats]:
    """Build the confidence matrix from the training events, fit ALS, bundle factors + id maps.

    ``cutoff`` is the end of the training period: events at or after it are refused (leak
    check) and the recency decay counts ages from it (default: the newest training event).
    With ``segments`` (a user attribute by user_id) the bundle also carries per-segment item
    popularity for the cold-start fallback. ``train_df`` carries ``user_idx`` / ``item_idx``
    codes into ``id_maps`` (the snapshot's user and item maps; :func:`include.recsys.core.ids.encode`
    makes both for a frame of string ids).
    """
    t0 = time.perf_counter()
    check_no_leak(train_df, cutoff)
    # the sorted id maps of the trained ids and every row's index, from the snapshot's codes
    users, u = _index(train_df, "user", id_maps[0])
    items, i = _index(train_df, "item", id_maps[1])
    # seen-filter and popularity come from the plain summed matrix; ALS gets the confidence
    seen = interaction_matrix(train_df, users, items, value="weight", codes=(u, i))
    spec = ConfidenceSpec.from_config(cfg)
    ui = (
        confidence_matrix(train_df, users, items, spec, cutoff, codes=(u, i))
        if _needs_own_matrix(spec)
        else seen
    )
    del u, i
    # distinct users per item: entries per column of the canonical CSR (no CSC copy)
    popularity = np.bincount(seen.indices, minlength=len(items)).astype(np.int64)
    if cfg.model_family != "als":
        return _train_item_item(ui, seen, popularity, users, items, cfg, segments, t0)
    t1 = time.perf_counter()
    model = fit_als(ui, cfg)
    fit_s = time.perf_counter() - t1
    uf = np.ascontiguousarray(model.user_factors, dtype=np.float32)
    vf = np.ascontiguousarray(model.item_factors, dtype=np.float32)
    check_finite({"user factor": uf, "item factor": vf}, cfg)
    bundle = ModelBundle(
        user_ids=users.ids,
        item_ids=items.ids,
        user_factors=uf,
        item_factors=vf,
        item_popularity=popularity,
        seen=seen,
        id_maps_hash=id_maps_sha256(users.ids, items.ids),  # binds the factors to these id maps
    )
    if segments is not None:
        bundle.segment_ids, bundle.segment_popularity = segment_popularity(seen, users, segments)
    stats = TrainStats(
        len(users), len(items), int(ui.nnz), fit_s, time.perf_counter() - t0, cfg.iterations
    )
    log.info(
        "ALS fit: %d users x %d items, %d non-zeros, factors=%d, iterations=%d, weighting=%s, "
        "recency half-life=%s d, in %.2fs (%.0f nnz-iterations/s); total with data preparation "
        "%.2fs; id maps %s",
        stats.users, stats.items, stats.nnz, cfg.factors, cfg.iterations, cfg.weighting,
        cfg.recency_half_life_days or "off", fit_s, stats.nnz * cfg.iterations / max(fit_s, 1e-9),
        stats.total_seconds, bundle.id_maps_hash[:12],
    )
    return bundle, stats


def _train_item_item(ui, seen, popularity: np.ndarray, users: IdMap, items: IdMap, cfg: PipelineConfig,
                     segments: pd.Series | None, t0: float) -> tuple[ModelBundle, TrainStats]:
    """The item-item family's bundle: zero-width factors, the item x item matrix and the
    training rows it multiplies (see :mod:`include.recsys.scoring.bundle`)."""
    from include.recsys.backends.families import describe, fit_item_item

    item_item, fit_s = fit_item_item(ui, cfg)
    bundle = ModelBundle(
        user_ids=users.ids,
        item_ids=items.ids,
        user_factors=np.zeros((len(users), 0), np.float32),
        item_factors=np.zeros((len(items), 0), np.float32),
        item_popularity=popularity,
        seen=seen,
        id_maps_hash=id_maps_sha256(users.ids, items.ids),
        kind=cfg.model_family,
        item_item=item_item,
        user_items=ui.astype(np.float32, copy=False),
    )
    if segments is not None:
        bundle.segment_ids, bundle.segment_popularity = segment_popularity(seen, users, segments)
    stats = TrainStats(len(users), len(items), int(ui.nnz), fit_s, time.perf_counter() - t0, 0)
    log.info(
        "%s fit: %d users x %d items, %d non-zeros, weighting=%s, recency half-life=%s d, in %.2fs "
        "(item-item matrix: %s, %.1f MiB); total with data preparation %.2fs; id maps %s",
        describe(cfg), stats.users, stats.items, stats.nnz, cfg.weighting, cfg.recency_half_life_days or "off",
        fit_s, "sparse" if hasattr(item_item, "nnz") else "dense", _nbytes(item_item) / 2**20,
        stats.total_seconds, bundle.id_maps_hash[:12],
    )
    return bundle, stats


def _nbytes(m) -> int:
    return int(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes) if hasattr(m, "nnz") else int(m.nbytes)


def _needs_own_matrix(spec: ConfidenceSpec) -> bool:
    return spec.weighting != "none" or spec.recency_half_life_days > 0


class ImplicitBackend:
    """The implicit (CPU ALS) backend: :func:`train` to fit, the blocked numpy/numba scorer of
    :mod:`include.recsys.scoring.recommend` to score."""

    name = "implicit"

    @staticmethod
    def read_training(cfg: PipelineConfig, path: str, *, cutoff: pd.Timestamp | None = None) -> pd.DataFrame:
        """The training split's codes, weights (and event times for a recency decay), leak-checked."""
        return read_training_events(path, cutoff=cutoff, need_times=cfg.recency_half_life_days > 0)

    @staticmethod
    def fit(train_df: pd.DataFrame, cfg: PipelineConfig, segments: pd.Series | None = None, *,
            id_maps: tuple[IdMap, IdMap], cutoff: pd.Timestamp | None = None) -> tuple[ModelBundle, TrainStats]:
        return train(train_df, cfg, segments, id_maps=id_maps, cutoff=cutoff)

    @staticmethod
    def score(bundle: ModelBundle, users: pd.Index, seen, n: int, *, cfg: PipelineConfig | None = None,
              **kw) -> Recommendations:
        return recommend(bundle, users, seen, n, **kw)  # in this process: nothing in cfg to use


BACKEND = ImplicitBackend()
