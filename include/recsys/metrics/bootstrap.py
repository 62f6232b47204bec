"""Paired bootstrap intervals of ``mean(candidate - other)`` over the same users; one set of
resamples serves every comparison of an evaluation (definition: the package docstring)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


_BOOT_CHUNK = 1 << 22  # resampled indices drawn per bootstrap chunk (bounds memory)


@dataclass(frozen=True)
class BootstrapCI:
    """Paired bootstrap of ``mean(a - b)``: the observed mean, the percentile CI, the sizes."""

    mean_diff: float
    lo: float
    hi: float
    n_users: int
    n_boot: int
    confidence: float

    def to_dict(self) -> dict[str, float | int]:
        """Plain dict (JSON / report friendly)."""
        return asdict(self)


def _check_boot_args(n_boot: int, confidence: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")


def _bootstrap_means(diff: np.ndarray, n_boot: int, seed: int | None) -> np.ndarray:
    """``(n_boot, m)`` means of ``diff`` (``(n, m)``) over resamples of its rows.

    :func:`_bootstrap_means_many` of one matrix.
    """
    return _bootstrap_means_many([diff], n_boot, seed)[0]


def _bootstrap_means_many(
    diffs: Sequence[np.ndarray], n_boot: int, seed: int | None
) -> list[np.ndarray]:
    """``(n_boot, m_j)`` means of each ``diffs[j]`` (``(n, m_j)``, same ``n``) over the same
    resamples of the rows.

    Each resample draws ``n`` row indices with replacement (``Generator.integers``). With
    more than two columns the draws of a chunk of resamples become per-row counts (one
    ``bincount``), so the means of all ``m`` columns are one matrix product; otherwise the
    values are gathered directly. The chunk size depends on ``n`` only, so the
    draws (and the result) depend on ``(n, n_boot, seed)`` only, not on ``m``. The draws and
    the counts are made once for all matrices (the expensive part); each matrix then gets the
    very product it would get on its own, so the result for ``diffs[j]`` is bit-identical to
    ``_bootstrap_means_many([diffs[j]], ...)`` (same seed, same CI).
    """
    if not diffs:
        return []
    n = diffs[0].shape[0]
    if any(d.ndim != 2 or d.shape[0] != n for d in diffs):
        raise ValueError(f"every diff must be 2-d with {n} rows, got {[d.shape for d in diffs]}")
    rng = np.random.default_rng(seed)
    outs = [np.empty((n_boot, d.shape[1]), dtype=np.float64) for d in diffs]
    narrow = [j for j, d in enumerate(diffs) if d.shape[1] <= 2]  # few columns: gather
    wide = [j for j, d in enumerate(diffs) if d.shape[1] > 2]  # counts @ diff
    per_chunk = max(1, min(n_boot, _BOOT_CHUNK // max(n, 1)))
    for lo in range(0, n_boot, per_chunk):
        rows = min(per_chunk, n_boot - lo)
        idx = rng.integers(0, n, size=(rows, n), dtype=np.int64)
        for j in narrow:
            outs[j][lo : lo + rows] = diffs[j][idx].mean(axis=1)
        if not wide:
            continue
        idx += (np.arange(rows, dtype=np.int64) * n)[:, None]
        weights = np.bincount(idx.ravel(), minlength=rows * n).reshape(rows, n)
        del idx
        weights = weights.astype(np.float64)
        for j in wide:
            outs[j][lo : lo + rows] = (weights @ diffs[j]) / n
    return outs


def _ci(diff: np.ndarray, means: np.ndarray, n_boot: int, confidence: float) -> BootstrapCI:
    alpha = (1.0 - float(confidence)) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return BootstrapCI(
        mean_diff=float(diff.mean()),
        lo=float(lo),
        hi=float(hi),
        n_users=int(diff.size),
        n_boot=int(n_boot),
        confidence=float(confidence),
    )


def _empty_ci(n_boot: int, confidence: float) -> BootstrapCI:
    nan = float("nan")
    return BootstrapCI(nan, nan, nan, 0, int(n_boot), float(confidence))


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int | None = 0,
) -> BootstrapCI:
    """Paired bootstrap CI of ``mean(a - b)`` over the same users (``a[u]``, ``b[u]``).

    ``n_boot`` resamples of the users with replacement; the interval is the percentile
    interval of the resampled mean differences at ``confidence``. Pairs with a NaN on either
    side are dropped first. Deterministic for a given ``seed``; vectorised (see
    :func:`_bootstrap_means`). With no pair left, every figure is NaN and ``n_users`` is 0.

    Raises:
        ValueError: if ``a`` and ``b`` differ in length or are not 1-d, or on a bad
            ``n_boot`` / ``confidence``.
    """
    _check_boot_args(n_boot, confidence)
    a_arr = np.asarray(a, dtype=np.float64)
    b_arr = np.asarray(b, dtype=np.float64)
    if a_arr.ndim != 1 or a_arr.shape != b_arr.shape:
        raise ValueError(
            f"a and b must be 1-d per-user vectors of the same users, got shapes "
            f"{a_arr.shape} and {b_arr.shape}"
        )
    diff = a_arr - b_arr
    diff = diff[~np.isnan(diff)]
    if diff.size == 0:
        return _empty_ci(n_boot, confidence)
    means = _bootstrap_means(diff[:, None], n_boot, seed)[:, 0]
    return _ci(diff, means, n_boot, confidence)


def paired_bootstrap_table(
    a: pd.DataFrame,
    b: pd.DataFrame,
    columns: Sequence[str],
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int | None = 0,
) -> dict[str, BootstrapCI]:
    """:func:`paired_bootstrap` for several per-user columns of two aligned frames at once.

    Rows are users (row ``i`` of ``a`` and of ``b`` is the same user). All NaN-free columns
    share the same resamples (one bootstrap pass, one matrix product); a column with NaN is
    bootstrapped on its own after dropping those pairs. The result of a NaN-free column matches
    ``paired_bootstrap(a[c], b[c], n_boot, confidence, seed)`` (same resamples; equal up to
    floating-point summation order).
    """
    return paired_bootstrap_tables(a, {"b": b}, columns, n_boot, confidence, seed)["b"]


def paired_bootstrap_tables(
    a: pd.DataFrame,
    others: Mapping[str, pd.DataFrame],
    columns: Sequence[str],
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int | None = 0,
) -> dict[str, dict[str, BootstrapCI]]:
    """:func:`paired_bootstrap_table` of ``a`` against each frame of ``others`` (name -> frame).

    Every comparison gets exactly what ``paired_bootstrap_table(a, other, ...)`` gives (the
    same seed means the same resamples, so the CIs are bit-identical), but the resamples are
    drawn and counted once for all comparisons (:func:`_bootstrap_means_many`): with three
    other models that is a third of the work.
    """
    _check_boot_args(n_boot, confidence)
    cols = list(columns)
    missing = [c for c in cols if c not in a.columns]
    for name, b in others.items():
        if len(a) != len(b):
            raise ValueError(
                f"a and {name} must have the same users (rows), got {len(a)} and {len(b)}"
            )
        missing += [c for c in cols if c not in b.columns and c not in missing]
    if missing:
        raise ValueError(f"columns missing from a or b: {missing}")
    out: dict[str, dict[str, BootstrapCI]] = {name: {} for name in others}
    if not cols:
        return out
    a_values = a[cols].to_numpy(dtype=np.float64)
    diffs: dict[str, np.ndarray] = {}
    clean: dict[str, np.ndarray] = {}
    for name, b in others.items():
        diff = a_values - b[cols].to_numpy(dtype=np.float64)
        clean[name] = ~np.isnan(diff).any(axis=0)
        if len(a) and clean[name].any():
            diffs[name] = diff[:, clean[name]]
    means = dict(zip(diffs, _bootstrap_means_many(list(diffs.values()), n_boot, seed), strict=True))
    for name, b in others.items():
        got = out[name]
        if name in diffs:
            for j, c in enumerate(np.asarray(cols, dtype=object)[clean[name]]):
                got[c] = _ci(diffs[name][:, j], means[name][:, j], n_boot, confidence)
        for c in cols:
            if c not in got:
                got[c] = paired_bootstrap(a[c], b[c], n_boot, confidence, seed)
        out[name] = {c: got[c] for c in cols}
    return out
