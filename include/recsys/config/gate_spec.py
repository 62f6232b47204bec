"""The gate spec's schema: pydantic models of every rule kind, reading and validating the YAML.

What the rules mean is :mod:`include.recsys.validation.gate`'s docstring; this module only makes
sure a spec names known metrics, slices and baselines (a bad key is refused with its path)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from include.recsys.core.metric_key import parse_metric
from include.recsys.errors import GateSpecError

#: Metric names a rule may name (``<name>@<k>``).
METRIC_NAMES = ("precision", "recall", "ndcg", "map", "mrr", "hit_rate", "coverage", "gini", "novelty", "ild")

_SLICE_RE = re.compile(r"^[a-z_]+=[A-Za-z0-9_.-]+$")

BASELINES = ("popularity", "recent_popularity")


def _check_metric(v: str | None) -> str | None:
    if v is None:
        return v
    try:
        name, _ = parse_metric(v)
    except ValueError:
        name = ""
    if name not in METRIC_NAMES:
        raise ValueError(f"{v!r} is not '<metric>@<k>' with metric one of {', '.join(METRIC_NAMES)}")
    return v


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(default=None, description="Row name in the gate table (default derived).")
    metric: str | None = Field(default=None, description="'<metric>@<k>'; default: primary_metric.")

    @field_validator("metric")
    @classmethod
    def _metric_name(cls, v: str | None) -> str | None:
        return _check_metric(v)


class Floor(_Rule):
    min: float = Field(description="The candidate's metric must be >= min.")


class BeatBaseline(_Rule):
    baseline: Literal["popularity", "recent_popularity"]
    min_lift: float = Field(default=0.0, ge=-1.0, description="Relative lift over the baseline.")
    method: Literal["point", "bootstrap"] = "point"


class NoRegression(_Rule):
    tolerance: float = Field(ge=0.0, le=1.0, description="Tolerated drop, relative to the champion.")
    method: Literal["point", "bootstrap"] = "bootstrap"


class SliceRule(_Rule):
    slice: str = Field(description="'<dimension>=<value>', e.g. 'activity=heavy'.")
    min: float | None = Field(default=None, description="Absolute floor on the slice.")
    max_drop: float | None = Field(default=None, ge=0.0, le=1.0, description="Relative drop vs champion.")
    min_users: int = Field(default=20, ge=1, description="Smaller slices are not judged.")

    @field_validator("slice")
    @classmethod
    def _slice_name(cls, v: str) -> str:
        if not _SLICE_RE.match(v):
            raise ValueError(f"{v!r} is not '<dimension>=<value>' (e.g. 'activity=heavy')")
        return v

    @model_validator(mode="after")
    def _one_bound(self) -> SliceRule:
        if (self.min is None) == (self.max_drop is None):
            raise ValueError(f"slice {self.slice!r}: give exactly one of 'min' or 'max_drop'")
        return self


class Guardrail(_Rule):
    metric: str = Field(description="'<metric>@<k>', e.g. 'coverage@10'.")  # type: ignore[assignment]
    min: float | None = None
    max: float | None = None
    relative_to: Literal["popularity", "recent_popularity", "champion"] | None = Field(
        default=None,
        description="min/max are multipliers of this model's value of the metric (e.g. gini@10 "
        "max 1.0 relative_to popularity: no more concentrated than the popularity baseline).",
    )

    @model_validator(mode="after")
    def _some_bound(self) -> Guardrail:
        if self.min is None and self.max is None:
            raise ValueError(f"guardrail {self.metric!r}: give 'min' and/or 'max'")
        return self


class PopularityBias(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    share: float = Field(gt=0.0, le=1.0, description="Share of all recommendations, e.g. 0.5.")
    min_items: int | None = Field(default=None, ge=1)
    min_fraction: float | None = Field(default=None, gt=0.0, le=1.0, description="Of the catalog.")
    min_ratio_to_popularity: float | None = Field(
        default=None, gt=0.0,
        description="At least this many times the items the popularity baseline needs for the share.",
    )

    @model_validator(mode="after")
    def _one_bound(self) -> PopularityBias:
        given = [x for x in (self.min_items, self.min_fraction, self.min_ratio_to_popularity) if x is not None]
        if len(given) != 1:
            raise ValueError(
                f"popularity_bias share {self.share}: give exactly one of 'min_items', "
                "'min_fraction' or 'min_ratio_to_popularity'"
            )
        return self


class GateSpec(BaseModel):
    """The whole gate spec (see the module docstring and ``include/config/gate.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    primary_metric: str = "ndcg@10"
    min_users: int = Field(default=20, ge=1)
    floors: list[Floor] = Field(default_factory=list)
    beat_baselines: list[BeatBaseline] = Field(default_factory=list)
    no_regression: list[NoRegression] = Field(default_factory=list)
    slices: list[SliceRule] = Field(default_factory=list)
    guardrails: list[Guardrail] = Field(default_factory=list)
    popularity_bias: list[PopularityBias] = Field(default_factory=list)

    @field_validator("primary_metric")
    @classmethod
    def _primary(cls, v: str) -> str:
        return _check_metric(v)  # type: ignore[return-value]

    def metric_of(self, rule: _Rule) -> str:
        return rule.metric or self.primary_metric

    def with_config(self, cfg: Any) -> GateSpec:  # a PipelineConfig (settings imports this module)
        """The spec with the explicit ``gate_*`` config values applied (they win)."""
        primary = cfg.gate_metric or self.primary_metric
        # rules that followed the old primary metric implicitly keep following the new one
        data = self.model_dump()
        data["primary_metric"] = primary
        if cfg.gate_min_users is not None:
            data["min_users"] = cfg.gate_min_users

        def on_primary(rule: dict[str, Any]) -> bool:
            return (rule.get("metric") or primary) == primary

        if cfg.gate_min_metric is not None:
            hit = [r for r in data["floors"] if on_primary(r)]
            for r in hit:
                r["min"] = cfg.gate_min_metric
            if not hit:
                data["floors"].insert(0, {"metric": None, "min": cfg.gate_min_metric})
        if cfg.gate_min_lift_over_popularity is not None:
            hit = [r for r in data["beat_baselines"] if r["baseline"] == "popularity" and on_primary(r)]
            for r in hit:
                r["min_lift"] = cfg.gate_min_lift_over_popularity
            if not hit:
                data["beat_baselines"].insert(
                    0, {"baseline": "popularity", "min_lift": cfg.gate_min_lift_over_popularity}
                )
        if cfg.gate_max_regression is not None:
            hit = [r for r in data["no_regression"] if on_primary(r)]
            for r in hit:
                r["tolerance"] = cfg.gate_max_regression
            if not hit:
                data["no_regression"].insert(0, {"tolerance": cfg.gate_max_regression})
        return GateSpec.model_validate(data)


def parse_spec(data: Any, source: str = "gate spec") -> GateSpec:
    """Validate a parsed YAML document; :class:`GateSpecError` names every bad key."""
    if not isinstance(data, dict):
        raise GateSpecError(f"{source}: the gate spec must be a YAML mapping, got {type(data).__name__}")
    try:
        return GateSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise GateSpecError(f"{source}: invalid gate spec: {problems}") from exc


def read_spec(path: str | Path) -> GateSpec:
    """Read and validate a gate spec YAML file."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise GateSpecError(f"gate spec {p} does not exist (set RECSYS_GATE_SPEC_PATH)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise GateSpecError(f"{p}: not valid YAML: {exc}") from exc
    return parse_spec(data, str(p))


def load_spec(cfg: Any) -> GateSpec:  # a PipelineConfig
    """The spec at ``cfg.gate_spec_path`` with the explicit ``gate_*`` config values applied."""
    return read_spec(cfg.gate_spec_path).with_config(cfg)


def spec_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def primary_metric_of(path: str | Path, default: str = "ndcg@10") -> str:
    """``primary_metric`` of the spec file, or ``default`` when it cannot be read (the config's
    default for ``gate_metric``; the gate stage itself reports a broken spec loudly)."""
    try:
        return read_spec(path).primary_metric
    except Exception:
        return default
