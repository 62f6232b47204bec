"""The A/B plan (RECSYS_AB_VARIANTS): arms, shares, the holdout and the salted hash that puts
each user in one arm. Parsed with the config, so a bad plan fails before any stage runs; the
scoring of each arm lives in ``scoring.variants``."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

HOLDOUT = "holdout"


@dataclass(frozen=True)
class Variant:
    name: str
    model: str  # "candidate" | "alias:<alias>" | "version:<n>"
    share: float


@dataclass(frozen=True)
class VariantPlan:
    variants: tuple[Variant, ...]
    holdout_share: float
    salt: str

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variants]

    def shares(self) -> dict[str, float]:
        """Configured share of every arm, holdout included (when > 0)."""
        out = {v.name: v.share for v in self.variants}
        if self.holdout_share > 0:
            out[HOLDOUT] = self.holdout_share
        return out

    def assign(self, user_ids: Any) -> np.ndarray:
        return assign(user_ids, self)

    def to_dict(self) -> dict[str, Any]:
        return {"salt": self.salt, "holdout_share": self.holdout_share,
                "variants": [dataclasses.asdict(v) for v in self.variants]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VariantPlan:
        return parse(d["variants"], d.get("holdout_share", 0.0), d["salt"])


def parse(variants: list[dict[str, Any]], holdout_share: float, salt: str) -> VariantPlan | None:
    """The plan of a config's ``ab_variants`` / ``ab_holdout_share`` / ``ab_salt``; None when
    no variants are configured (the default). Raises ValueError naming what is wrong."""
    if not variants:
        if holdout_share:
            raise ValueError("ab_holdout_share is set but ab_variants is empty: name the variant(s) "
                             'the other users get, e.g. [{"name": "main", "model": "candidate", "share": 0.98}]')
        return None
    out = []
    for i, v in enumerate(variants):
        missing = {"name", "model", "share"} - set(v)
        if missing:
            raise ValueError(f"ab_variants[{i}] lacks {sorted(missing)}: each needs name, model, share")
        name, model, share = str(v["name"]), str(v["model"]), float(v["share"])
        if not name or name == HOLDOUT:
            raise ValueError(f"ab_variants[{i}]: name {name!r} is empty or reserved for the holdout")
        if not (model == "candidate" or model.startswith(("alias:", "version:"))):
            raise ValueError(f"ab_variants[{i}] ({name}): model {model!r} must be candidate, alias:<alias> or version:<n>")
        if not 0 < share <= 1:
            raise ValueError(f"ab_variants[{i}] ({name}): share {share} must be in (0, 1]")
        out.append(Variant(name, model, share))
    if len({v.name for v in out}) != len(out):
        raise ValueError(f"ab_variants: names must be unique, got {[v.name for v in out]}")
    if not 0 <= holdout_share < 1:
        raise ValueError(f"ab_holdout_share {holdout_share} must be in [0, 1)")
    total = sum(v.share for v in out) + holdout_share
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"ab_variants shares ({[v.share for v in out]}) plus ab_holdout_share ({holdout_share}) "
                         f"sum to {total:.6f}, not 1")
    if not salt:
        raise ValueError("ab_salt is empty: set RECSYS_AB_SALT (one salt per experiment; keep it to keep "
                         "every user in their arm across nights)")
    return VariantPlan(tuple(out), float(holdout_share), salt)


def unit_hash(user_ids: Any, salt: str) -> np.ndarray:
    """A uniform number in [0, 1) per user id: blake2b(salt, id), first 8 bytes."""
    key = salt.encode() + b"\x1f"
    out = np.empty(len(user_ids), dtype=np.float64)
    for i, u in enumerate(np.asarray(user_ids, dtype=object)):
        h = hashlib.blake2b(key + str(u).encode(), digest_size=8).digest()
        out[i] = int.from_bytes(h, "big") / 2.0**64
    return out


def assign(user_ids: Any, plan: VariantPlan) -> np.ndarray:
    """The arm (variant name or ``holdout``) of each user id: object array."""
    u = unit_hash(user_ids, plan.salt)
    names = [HOLDOUT] + plan.names
    edges = np.cumsum([plan.holdout_share] + [v.share for v in plan.variants])
    idx = np.minimum(np.searchsorted(edges, u, side="right"), len(names) - 1)
    return np.asarray(names, dtype=object)[idx]


