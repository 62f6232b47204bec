"""A/B variants and a holdout: which list each user is served, decided by a salted hash.

Configured with ``RECSYS_AB_VARIANTS`` (JSON list), ``RECSYS_AB_HOLDOUT_SHARE`` and
``RECSYS_AB_SALT``::

    RECSYS_AB_VARIANTS='[{"name": "champion", "model": "alias:champion", "share": 0.49},
                         {"name": "challenger", "model": "candidate", "share": 0.49}]'
    RECSYS_AB_HOLDOUT_SHARE=0.02
    RECSYS_AB_SALT=exp-2026-12-homepage

``model`` names what scores a variant's users: ``candidate`` (the model this run trained and
registered as ``challenger``), ``alias:<alias>`` (a registered model alias, e.g.
``alias:champion``) or ``version:<n>`` (a registered model version). Shares plus the holdout
share sum to 1.

**Assignment**: ``u = first 8 bytes of blake2b(salt + "\\x1f" + str(user_id)) / 2**64`` in
[0, 1); ``u < holdout_share`` is the holdout, then each variant takes the next ``share`` of
[0, 1) in the configured order. A user keeps their arm every night while the salt (and the
shares) stay; a new salt reshuffles everyone (a new experiment). Services can compute the arm
of a user the table does not hold with :func:`assign` and the salt/shares of the manifest.

**Holdout** users get the non-personalised baseline: the popularity fallback lists (segment or
global, seen items and business rules applied), ``source == "fallback"``.

The table gains a ``variant`` column only when variants are configured (with none, the
default, nothing changes for existing readers); the manifest records salt, shares, the model
version behind each variant and the users per variant; output validation checks the realised
shares against the configured ones within a binomial tolerance (:func:`share_check`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd

from include.recsys.config.variants import HOLDOUT, VariantPlan, assign
from include.recsys.core.ids import translate_codes

COLUMN = "variant"

#: binomial tolerance of the realised shares: |p_hat - p| <= Z * sqrt(p (1 - p) / n) + 1 / n.
#: 4.5 sigma: a false alarm about once in 150 000 checks per arm, while a broken assignment
#: (an arm off by a few points on 10k+ users) is far outside it
Z = 4.5


def tolerance(p: float, n: int) -> float:
    """Largest allowed |realised - configured| share for an arm of share ``p`` over ``n`` users."""
    return Z * math.sqrt(p * (1 - p) / max(n, 1)) + 1.0 / max(n, 1)


def share_check(counts: dict[str, int], plan: VariantPlan) -> list[tuple[str, float, float, float, bool]]:
    """(arm, configured, realised, tolerance, ok) per configured arm; arms not configured
    count as failures (configured 0)."""
    n = int(sum(counts.values()))
    out = []
    shares = plan.shares()
    for arm in list(shares) + [a for a in counts if a not in shares]:
        p = shares.get(arm, 0.0)
        got = counts.get(arm, 0) / n if n else 0.0
        tol = tolerance(p, n)
        out.append((arm, p, got, tol, abs(got - p) <= tol and arm in shares))
    return out


def _seen_rows(seen: Any, rows: np.ndarray, items: pd.Index, bundle: Any) -> Any:
    """The seen pairs of the ``rows`` users for ``bundle``: a DataFrame as is (recommend maps
    it), a CSR sliced and, for a bundle with other items, its columns remapped (vectorised)."""
    import scipy.sparse as sp

    if not sp.issparse(seen):
        return seen
    sub = sp.csr_matrix(seen)[np.flatnonzero(rows)]
    if bundle.item_ids.equals(items):
        return sub
    coo = sub.tocoo()
    cols = translate_codes(coo.col, items, bundle.item_ids)  # -1: an item the bundle does not know
    keep = cols >= 0
    return sp.csr_matrix((coo.data[keep], (coo.row[keep], cols[keep])), shape=(sub.shape[0], len(bundle.item_ids)))


def baseline(bundle: Any) -> Any:
    """The bundle as the non-personalised baseline: it knows no user, so every user gets the
    popularity fallback (segment or global, seen items and rules applied)."""
    return dataclasses.replace(bundle, user_ids=bundle.user_ids[:0], user_factors=bundle.user_factors[:0],
                               seen=None, id_maps_hash=None)


def score(
    bundles: dict[str, tuple[Any, str]], plan: VariantPlan, users: pd.Index, seen: Any, n: int, *,
    model_name: str, baseline_of: Any, allowed_of: Any = None, **kw: Any,
) -> tuple[pd.DataFrame, dict[str, int], int]:
    """The lists of ``users`` with the ``variant`` column: each arm scored by its own bundle.

    ``bundles``: variant name -> (ModelBundle, model version); ``baseline_of``: the bundle whose
    popularity the holdout gets; ``seen``: (user_id, item_id) pairs as a DataFrame, or a CSR
    (rows = ``users``, columns = the baseline bundle's items: remapped for a bundle with other
    items); ``allowed_of(bundle)``: the rules' mask of a bundle's items.
    Returns (table, users per arm, users scored by a model).
    """
    from include.recsys.scoring.recommend import recommend

    users = pd.Index(users)
    arms = assign(users, plan)
    frames, counts, by_model = [], {}, 0
    for arm in plan.names + [HOLDOUT]:
        rows = arms == arm
        counts[arm] = int(rows.sum())
        if not rows.any():
            continue
        bundle, version = (baseline(baseline_of[0]), baseline_of[1]) if arm == HOLDOUT else bundles[arm]
        allowed = allowed_of(bundle) if allowed_of is not None else None
        recs = recommend(bundle, users[rows], _seen_rows(seen, rows, baseline_of[0].item_ids, bundle), n,
                         allowed=allowed, **kw)
        by_model += int(recs.from_model.sum())
        frames.append(recs.to_frame(bundle, model_name=model_name, model_version=str(version), **{COLUMN: arm}))
    if plan.holdout_share == 0:
        counts.pop(HOLDOUT)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return table, counts, by_model
