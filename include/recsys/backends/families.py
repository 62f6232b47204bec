"""Item-item model families beside ALS: implicit's item-kNN and EASE (Steck 2019).

Both score a user as ``history @ S``: the user's row of the training matrix (the same
weighted, summed matrix ALS is fitted on, see :mod:`include.recsys.backends.weighting`) times an
item x item matrix ``S``. The bundle carries ``S`` and the training rows
(:class:`include.recsys.scoring.bundle.ModelBundle` ``kind`` / ``item_item`` / ``user_items``)
and :func:`include.recsys.scoring.recommend.recommend` scores them blocked, through the same
seen filter, popularity fallback and ``allowed`` mask as ALS.

item_knn
    implicit's ``BM25Recommender`` / ``CosineRecommender`` / ``TFIDFRecommender``: ``S`` keeps
    the ``knn_k`` most similar items of every item (sparse CSR, ``n_items x knn_k`` entries).
    Its scores are implicit's own ``recommend`` scores (``tests/unit/backends/test_families.py``).
ease
    The closed form ``P = (XᵀX + λI)⁻¹``, ``B = I - P / diag(P)`` (so ``diag(B) = 0``): a dense
    ``n_items²`` matrix. The Gram matrix and the solve run in float64 (a float32 inverse of a
    badly conditioned Gram matrix loses digits where λ is small), ``B`` is stored in float32.
    Cost: O(n_items³) time and one dense n_items² float64 buffer worked in place (Gram ->
    Cholesky -> inverse -> ``B``) plus the float32 result: 1.5-1.75 x n² x 8 bytes at the peak,
    measured. The family is refused above ``ease_max_items`` items (the time budget, measured on
    2 cores: see :data:`EASE_MEASURED`) with a :class:`FamilyTooLarge` that says why.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import scipy.sparse as sp

from include.recsys.errors import FamilyTooLarge, TrainingError

log = logging.getLogger(__name__)


FAMILIES: tuple[str, ...] = ("als", "item_knn", "ease")

ITEM_ITEM_FAMILIES: tuple[str, ...] = ("item_knn", "ease")

#: measured inverse for EASE on this project's 2-core machine (random Gram, λ=50): items ->
#: (float64 Cholesky seconds, float32 LU seconds, peak GiB of that probe, which held copies).
#: float32 was not faster (19.1 s vs 11.2 s at 8k) and differs from float64 by ~1e-7 relative
#: in ``B``: float64 it is. The whole in-place :func:`fit_ease` (tracemalloc peak; machine
#: shared, load 3): 4k items 5.1 s / 1.74 x n² float64, 8k items 21.5 s / 1.52 x n² float64.
#: Time grows as n³: ~1.5-3 min at 16k, ~10-20 min at 30k; the default ``ease_max_items``
#: (16000) keeps a nightly fit to a few minutes and ~4 GiB (:func:`ease_peak_bytes`).
EASE_MEASURED: dict[int, tuple[float, float, float]] = {
    2000: (0.52, 0.40, 0.27),
    4000: (2.48, 2.71, 0.98),
    8000: (11.18, 19.13, 3.51),
}


def ease_peak_bytes(n_items: int) -> int:
    """Peak memory of an EASE fit (:func:`fit_ease`): the float64 work buffer, the float32
    result and the sparse Gram product while it is built (measured 1.5-1.75 x n² float64)."""
    return int(2 * n_items * n_items * 8)


def check_ease_budget(n_items: int, max_items: int) -> None:
    """Raise :class:`FamilyTooLarge` when EASE on ``n_items`` items is beyond the budget."""
    if n_items > max_items:
        raise FamilyTooLarge(
            f"EASE needs a dense {n_items} x {n_items} inverse (~{ease_peak_bytes(n_items) / 2**30:.1f} GiB "
            f"at the peak, O(n³) time): over ease_max_items={max_items}. Use model_family=als "
            "or item_knn for this catalog, or raise ease_max_items where the machine has the memory."
        )


def fit_ease(user_items: sp.csr_matrix, lam: float, max_items: int) -> np.ndarray:
    """EASE's item x item weights ``B`` (float32, zero diagonal) of a users x items CSR.

    Memory: one dense float64 n² buffer is worked in place (Gram matrix -> Cholesky factor ->
    inverse -> ``B``), plus the float32 result and the sparse Gram product while it is built."""
    from threadpoolctl import threadpool_limits

    n = user_items.shape[1]
    check_ease_budget(n, max_items)
    if lam <= 0:
        raise ValueError(f"ease_lambda must be > 0, got {lam}")
    x = sp.csr_matrix(user_items, dtype=np.float64)
    gram = (x.T @ x).toarray(order="F")
    gram[np.diag_indices(n)] += lam
    with threadpool_limits(None, "blas"):  # the inverse is the whole cost: every core
        p = _spd_inverse_inplace(gram)
    d = np.diag(p).copy()
    p /= -d[None, :]  # B_ij = -P_ij / P_jj
    p[np.diag_indices(n)] = 0.0
    out = np.empty((n, n), dtype=np.float32)
    out[...] = p
    del p, gram
    if not np.isfinite(out).all():
        raise TrainingError(f"EASE produced non-finite weights (ease_lambda={lam}); raise ease_lambda")
    return out


def _spd_inverse_inplace(a: np.ndarray, block: int = 1024) -> np.ndarray:
    """Inverse of a symmetric positive definite Fortran-ordered matrix, in its own buffer
    (LAPACK Cholesky ``dpotrf`` + ``dpotri`` on the lower triangle, then mirrored)."""
    from scipy.linalg import lapack

    c, info = lapack.dpotrf(a, lower=1, overwrite_a=1, clean=0)
    if info != 0:
        raise TrainingError(f"EASE: the regularised Gram matrix is not positive definite (info={info})")
    inv, info = lapack.dpotri(c, lower=1, overwrite_c=1)
    if info != 0:
        raise TrainingError(f"EASE: inverting the Gram matrix failed (info={info})")
    n = inv.shape[0]
    for r0 in range(0, n, block):  # upper = lower.T, one block of rows at a time
        r1 = min(r0 + block, n)
        inv[r0:r1, r1:] = inv[r1:, r0:r1].T
        tile = inv[r0:r1, r0:r1]
        low = np.tril(tile)
        tile[...] = low + np.tril(low, -1).T
    return inv


def build_knn(kind: str, k: int, k1: float, b: float, num_threads: int = 0):
    """An unfitted implicit item-kNN model of the kind (bm25 | cosine | tfidf)."""
    from implicit.nearest_neighbours import BM25Recommender, CosineRecommender, TFIDFRecommender

    if kind == "bm25":
        return BM25Recommender(K=k, K1=k1, B=b, num_threads=num_threads)
    if kind == "cosine":
        return CosineRecommender(K=k, num_threads=num_threads)
    if kind == "tfidf":
        return TFIDFRecommender(K=k, num_threads=num_threads)
    raise ValueError(f"knn_kind must be bm25, cosine or tfidf, got {kind!r}")


def fit_knn(user_items: sp.csr_matrix, kind: str, k: int, k1: float, b: float, num_threads: int = 0) -> sp.csr_matrix:
    """implicit item-kNN's similarity (items x items CSR, the ``k`` best per row)."""
    import warnings

    from implicit.utils import ParameterWarning

    model = build_knn(kind, k, k1, b, num_threads)
    with warnings.catch_warnings():  # cosine / tfidf hand their own COO re-weighting on (harmless)
        warnings.simplefilter("ignore", ParameterWarning)
        model.fit(sp.csr_matrix(user_items, dtype=np.float32), show_progress=False)
    s = sp.csr_matrix(model.similarity)
    s.sort_indices()
    if s.nnz and not np.isfinite(s.data).all():
        raise TrainingError(f"item-kNN ({kind}, K={k}) produced non-finite similarities")
    return s


def fit_item_item(user_items: sp.csr_matrix, cfg) -> tuple[np.ndarray | sp.csr_matrix, float]:
    """(item x item matrix, fit seconds) of ``cfg.model_family`` (item_knn or ease)."""
    t0 = time.perf_counter()
    if cfg.model_family == "ease":
        s = fit_ease(user_items, cfg.ease_lambda, cfg.ease_max_items)
    elif cfg.model_family == "item_knn":
        s = fit_knn(user_items, cfg.knn_kind, cfg.knn_k, cfg.knn_bm25_k1, cfg.knn_bm25_b, cfg.num_threads)
    else:
        raise ValueError(f"{cfg.model_family!r} is not an item-item family {ITEM_ITEM_FAMILIES}")
    return s, time.perf_counter() - t0


def describe(cfg) -> str:
    """One line naming the family and its hyperparameters (logs, run card)."""
    if cfg.model_family == "ease":
        return f"ease(lambda={cfg.ease_lambda:g})"
    if cfg.model_family == "item_knn":
        extra = f", K1={cfg.knn_bm25_k1:g}, B={cfg.knn_bm25_b:g}" if cfg.knn_kind == "bm25" else ""
        return f"item_knn({cfg.knn_kind}, K={cfg.knn_k}{extra})"
    return f"als(factors={cfg.factors}, regularization={cfg.regularization:g}, alpha={cfg.alpha:g})"


#: the fields each family's defaults trial sets (the shared matrix fields: no weighting, no decay)
_FAMILY_FIELDS = {
    "als": ("factors", "regularization", "alpha", "weighting", "bm25_k1", "bm25_b", "recency_half_life_days"),
    "item_knn": ("knn_kind", "knn_k", "knn_bm25_k1", "knn_bm25_b", "weighting", "recency_half_life_days"),
    "ease": ("ease_lambda", "weighting", "recency_half_life_days"),
}


def family_defaults(family: str) -> dict[str, Any]:
    """``family`` with the config defaults of its fields (PipelineConfig's field defaults)."""
    from include.recsys.config.settings import PipelineConfig

    fields = PipelineConfig.model_fields
    return {"model_family": family, **{k: fields[k].default for k in _FAMILY_FIELDS[family]}}


def eligible_families(
    requested: tuple[str, ...] | list[str], n_items: int, ease_max_items: int, backend: str = "implicit"
) -> tuple[tuple[str, ...], dict[str, str]]:
    """(families to search, {family left out: why}): EASE only within its item budget, the
    item-item families only where the backend trains them (implicit)."""
    keep, skipped = [], {}
    for f in requested:
        if f != "als" and backend != "implicit":
            skipped[f] = f"backend={backend} trains ALS only"
        elif f == "ease" and n_items > ease_max_items:
            skipped[f] = f"{n_items} items > ease_max_items={ease_max_items} (dense n² inverse)"
        elif f not in keep:
            keep.append(f)
    for f, why in skipped.items():
        log.info("tuning leaves model family %s out: %s", f, why)
    return tuple(keep) or ("als",), skipped
