"""The promotion gate: a declarative spec -> PASS / FAIL / SKIPPED with a row for every rule.

The spec is YAML (``include/config/gate.yaml``, or ``$RECSYS_GATE_SPEC_PATH``), validated by
:class:`GateSpec` (unknown or mistyped keys are refused with the key's path). :func:`decide`
applies it to the evaluation report (``eval/report.json``) of a run. Rule kinds:

``min_users``
    at least ``min_users`` candidate users were evaluated (users with holdout items); otherwise
    the evidence is too thin to judge and the verdict is SKIPPED (no other rule is judged).
``floor``
    candidate ``metric`` >= ``min`` (an absolute floor, any metric).
``beats_baseline``
    candidate > baseline x (1 + ``min_lift``) (``method: point``), or the lower end of the
    paired bootstrap interval of candidate - baseline > ``min_lift`` x baseline
    (``method: bootstrap``). Baselines: ``popularity``, ``recent_popularity``.
``no_regression``
    vs the champion, with ``tolerance`` relative to the champion's value ``c``. ``bootstrap``
    (default): with ``[lo, hi]`` the paired bootstrap interval of candidate - champion over the
    same users, FAIL only when ``hi < -tolerance * c``: the candidate is worse by more than
    the tolerance with the interval's confidence; noise alone never fails a run. The observed
    value is ``hi``, the bound ``-tolerance * c``. Without a paired interval in the report, or
    with ``method: point``: candidate >= ``c * (1 - tolerance)``. No champion yet: SKIP. A
    champion trained on data at or after the holdout start (report ``champion_comparison``,
    see :func:`champion_comparison`): every rule against the champion is a SKIP saying so.
``slice_floor`` / ``slice_drop``
    on one slice (``activity=heavy``, ``user=new``, ``items=tail``, ...): candidate >= ``min``,
    or candidate >= champion's same slice x (1 - ``max_drop``). Slices with fewer than
    ``min_users`` users are not judged (SKIP).
``guardrail``
    beyond-accuracy bounds on the candidate: ``min`` <= metric <= ``max`` (coverage, gini,
    novelty, intra-list diversity); with ``relative_to`` (a baseline or the champion) the bounds
    multiply that model's value (no such model in the report: SKIP).
``popularity_bias``
    the number of distinct items making the first ``share`` of all the candidate's
    recommendations (the popularity-bias curve) >= ``min_items``, ``min_fraction`` x catalog,
    or ``min_ratio_to_popularity`` x the popularity baseline's number at the same share.

Each rule yields ``PASS``, ``FAIL`` or ``SKIP`` (not evaluated: the report lacks what the rule
needs, e.g. no champion yet, no slices, no recent-popularity baseline; a SKIP never blocks and
its note says why). Verdict: SKIPPED when ``min_users`` fails, else FAIL when any rule FAILs,
else PASS. FAIL means nothing is published and the champion stays, unless the run was
triggered with ``force_publish`` (see :func:`force`).

Explicit ``gate_*`` config values (``RECSYS_GATE_*`` or run overrides) win over the spec's:
``gate_metric`` is the primary metric, ``gate_min_metric`` the primary metric's floor,
``gate_min_lift_over_popularity`` the popularity lift, ``gate_max_regression`` the primary
metric's no-regression tolerance, ``gate_min_users`` the minimum (:func:`load_spec`).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from include.recsys.config.gate_spec import GateSpec
from include.recsys.core.fmt import as_number, fmt_num
from include.recsys.core.metric_key import metric_key_order

PASS, FAIL, SKIPPED = "PASS", "FAIL", "SKIPPED"

SKIP = "SKIP"  # one rule not evaluated


@dataclass
class Rule:
    """One row of the gate table."""

    name: str
    observed: float | None
    bound: float | None
    passed: bool
    note: str = ""
    kind: str = ""
    result: str = ""  # PASS / FAIL / SKIP; derived from ``passed`` when empty

    def __post_init__(self) -> None:
        if not self.result:
            self.result = PASS if self.passed else FAIL


@dataclass
class GateResult:
    verdict: str
    metric: str
    rules: list[Rule] = field(default_factory=list)
    forced: bool = False
    n_users: int | None = None
    spec: dict[str, Any] | None = None

    def explain(self) -> str:
        head = f"gate {self.verdict} on {self.metric}"
        if self.forced:
            head += " (FORCED: published anyway by force_publish)"
        lines = [head + ":"]
        marks = {PASS: "ok  ", FAIL: "FAIL", SKIP: "skip"}
        for r in self.rules:
            # as floats: an int observation (min_users) reads 20.0000 like every other figure
            obs, bound = (fmt_num(None if x is None else float(x)) for x in (r.observed, r.bound))
            lines.append(f"  [{marks.get(r.result, r.result)}] {r.name}: observed {obs}, bound {bound}. {r.note}".rstrip())
        return "\n".join(lines)

    def failed(self) -> list[Rule]:
        return [r for r in self.rules if r.result == FAIL]

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "metric": self.metric,
            "forced": self.forced,
            "n_users": self.n_users,
            "rules": [asdict(r) for r in self.rules],
            **({"spec": self.spec} if self.spec is not None else {}),
        }


def force(result: GateResult) -> GateResult:
    """Mark a FAIL / SKIPPED result as overridden by ``force_publish``: the verdict is kept, the
    run publishes anyway (output validation still applies). PASS is returned unchanged."""
    if result.verdict != PASS:
        result.forced = True
    return result


def champion_comparison(version: str, data: dict[str, Any], holdout_start: Any) -> dict[str, Any]:
    """Whether the champion can be scored fairly on a holdout starting at ``holdout_start``.

    ``data``: the champion's ``train_data_end`` / ``data_window_end`` (timestamps or ISO
    strings; :func:`include.recsys.tracking.registry.model_data`). A champion trained on events at or
    after the holdout start (an older run judged against a newer champion, a backfill) has
    seen the holdout: its score there is leakage, so every champion rule is SKIPPED with the
    returned ``reason`` instead of reporting a false regression. Without a training end the
    data window's end stands in (an upper bound: events in the window but after the training
    end are the champion's own holdout). Both unknown: compared as before (``basis`` unknown).
    """
    import pandas as pd

    def ts(x: Any) -> Any:
        if x is None or x == "":
            return None
        t = pd.Timestamp(x)
        return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")

    start = ts(holdout_start)
    end, basis = ts(data.get("train_data_end")), "train_data_end"
    if end is None:
        end, basis = ts(data.get("data_window_end")), "data_window_end"
    out: dict[str, Any] = {
        "champion_version": str(version), "basis": basis if end is not None else "unknown",
        "champion_train_end": end.isoformat() if end is not None else None,
        "holdout_start": start.isoformat() if start is not None else None, "fair": True, "reason": None,
    }
    if end is None or start is None or end <= start:
        return out
    what = "trained on data up to" if basis == "train_data_end" else "has a data window (training end unknown) up to"
    out["fair"] = False
    out["reason"] = (
        f"not compared: champion version {version} {what} {end.isoformat()}, after this holdout's "
        f"start {start.isoformat()}; it has seen the holdout, so its score would be leakage"
    )
    return out


@dataclass
class _Ctx:
    """What every rule kind reads from one evaluation report (see :func:`decide`)."""

    spec: GateSpec
    report: dict[str, Any]
    metrics: dict[str, Any]  # model -> metric -> value
    cand: dict[str, Any]
    champ: dict[str, Any] | None
    unfair: str | None  # why the champion is not judged against (it trained on this holdout)
    paired: dict[str, Any]
    slices: dict[str, Any]
    curves: dict[str, Any]

    @classmethod
    def of(cls, spec: GateSpec, report: dict[str, Any]) -> _Ctx:
        metrics = report.get("metrics") or {}
        champ = metrics.get("champion")
        return cls(
            spec=spec, report=report, metrics=metrics, cand=metrics.get("candidate") or {}, champ=champ,
            unfair=(report.get("champion_comparison") or {}).get("reason") if champ is not None else None,
            paired=report.get("paired") or {}, slices=report.get("slices") or {},
            curves=report.get("popularity_curve") or {},
        )

    def cand_value(self, metric: str) -> float | None:
        return as_number(self.cand.get(metric))

    def name(self, rule: Any, default: str, metric: str | None = None) -> str:
        """The rule's own name, else ``default`` with ``[metric]`` unless it is the primary one."""
        suffix = "" if metric is None or metric == self.spec.primary_metric else f"[{metric}]"
        return rule.name or default + suffix


def _skip(name: str, kind: str, note: str, observed: float | None = None, bound: float | None = None) -> Rule:
    return Rule(name, observed, bound, True, note, kind=kind, result=SKIP)


def _judge_floors(ctx: _Ctx) -> list[Rule]:
    rules = []
    for r in ctx.spec.floors:
        m = ctx.spec.metric_of(r)
        name = ctx.name(r, "floor", m)
        v = ctx.cand_value(m)
        if v is None:
            rules.append(_skip(name, "floor", f"{m} not in the report", bound=r.min))
            continue
        rules.append(Rule(name, v, r.min, v >= r.min, f"candidate {m} >= {r.min:g}", kind="floor"))
    return rules


def _judge_beat_baselines(ctx: _Ctx) -> list[Rule]:
    rules = []
    for r in ctx.spec.beat_baselines:
        m = ctx.spec.metric_of(r)
        name = ctx.name(r, f"beats_{r.baseline}", m)
        base = as_number((ctx.metrics.get(r.baseline) or {}).get(m))
        v = ctx.cand_value(m)
        if base is None or v is None:
            rules.append(_skip(name, "beats_baseline", f"no {r.baseline} {m} in the report", observed=v))
            continue
        note = f"{r.baseline} {base:.4f}, required lift {r.min_lift:+.0%}"
        ci = (ctx.paired.get(f"candidate_vs_{r.baseline}") or {}).get(m) or {}
        lo = as_number(ci.get("lo"))
        if r.method == "bootstrap" and lo is not None:
            bound = r.min_lift * base
            rules.append(Rule(
                name, lo, bound, lo > bound,
                f"{note}; lower end of the {ci.get('confidence', 0.95):.0%} CI of candidate - "
                f"{r.baseline} (diff {fmt_num(as_number(ci.get('mean_diff')))}) must exceed the bound",
                kind="beats_baseline",
            ))
            continue
        if r.method == "bootstrap":
            note += "; no paired interval in the report: point estimate"
        bound = base * (1 + r.min_lift)
        rules.append(Rule(name, v, bound, v > bound, note, kind="beats_baseline"))
    return rules


def _judge_no_regression(ctx: _Ctx) -> list[Rule]:
    rules = []
    for r in ctx.spec.no_regression:
        m = ctx.spec.metric_of(r)
        name = ctx.name(r, "no_regression", m)
        v = ctx.cand_value(m)
        if ctx.champ is None or ctx.unfair:
            rules.append(_skip(name, "no_regression", ctx.unfair or "no champion yet", observed=v))
            continue
        c = as_number(ctx.champ.get(m))
        if c is None or v is None:
            rules.append(_skip(name, "no_regression", f"no champion {m} in the report", observed=v))
            continue
        note = f"champion {c:.4f}, tolerance {r.tolerance:.0%}"
        ci = (ctx.paired.get("candidate_vs_champion") or {}).get(m) or {}
        lo, hi = as_number(ci.get("lo")), as_number(ci.get("hi"))
        if r.method == "bootstrap" and hi is not None and lo is not None:
            bound = -r.tolerance * c
            rules.append(Rule(
                name, hi, bound, hi >= bound,
                f"{note}; candidate - champion {fmt_num(as_number(ci.get('mean_diff')))}, "
                f"{ci.get('confidence', 0.95):.0%} CI [{lo:+.4f}, {hi:+.4f}] over "
                f"{ci.get('n_users', '?')} users; FAIL when the upper end < -tolerance x champion",
                kind="no_regression",
            ))
            continue
        if r.method == "bootstrap":
            note += "; no paired interval in the report: point estimate"
        bound = c * (1 - r.tolerance)
        rules.append(Rule(name, v, bound, v >= bound, note, kind="no_regression"))
    return rules


def _judge_slices(ctx: _Ctx) -> list[Rule]:
    rules = []
    for r in ctx.spec.slices:
        m = ctx.spec.metric_of(r)
        kind = "slice_floor" if r.min is not None else "slice_drop"
        name = ctx.name(r, f"{kind}[{r.slice}]", m)
        cs = (ctx.slices.get("candidate") or {}).get(r.slice)
        if not ctx.slices:
            rules.append(_skip(name, kind, "no slices in the report"))
            continue
        if not cs or as_number(cs.get(m)) is None:
            rules.append(_skip(name, kind, f"slice {r.slice} ({m}) not in the report"))
            continue
        v, n = float(cs[m]), int(cs.get("n_users") or 0)
        if n < r.min_users:
            rules.append(_skip(name, kind, f"slice {r.slice}: {n} users < {r.min_users}, not judged", observed=v))
            continue
        if r.min is not None:
            rules.append(Rule(name, v, r.min, v >= r.min, f"slice {r.slice} ({n} users) {m} >= {r.min:g}", kind=kind))
            continue
        c = as_number(((ctx.slices.get("champion") or {}).get(r.slice) or {}).get(m))
        if ctx.unfair:
            rules.append(_skip(name, kind, ctx.unfair, observed=v))
            continue
        if ctx.champ is None or c is None:
            why = "no champion yet" if ctx.champ is None else f"no champion value for slice {r.slice}"
            rules.append(_skip(name, kind, why, observed=v))
            continue
        bound = c * (1 - r.max_drop)  # type: ignore[operator]
        rules.append(Rule(
            name, v, bound, v >= bound,
            f"slice {r.slice} ({n} users): champion {c:.4f}, max drop {r.max_drop:.0%}", kind=kind,
        ))
    return rules


def _judge_guardrails(ctx: _Ctx) -> list[Rule]:
    rules = []
    for r in ctx.spec.guardrails:
        m = r.metric
        name = ctx.name(r, f"guardrail[{m}]")
        v = ctx.cand_value(m)
        if v is None:
            rules.append(_skip(name, "guardrail", f"{m} not in the report"))
            continue
        lo, hi, ref_note = r.min, r.max, ""
        if r.relative_to == "champion" and ctx.unfair:
            rules.append(_skip(name, "guardrail", ctx.unfair, observed=v))
            continue
        if r.relative_to is not None:
            ref = as_number((ctx.metrics.get(r.relative_to) or {}).get(m))
            if ref is None:
                rules.append(_skip(name, "guardrail", f"no {r.relative_to} value of {m} in the report", observed=v))
                continue
            lo = None if r.min is None else r.min * ref
            hi = None if r.max is None else r.max * ref
            ref_note = f" ({r.relative_to} {ref:.4f} x " + "/".join(
                f"{x:g}" for x in (r.min, r.max) if x is not None) + ")"
        ok_min = lo is None or v >= lo
        ok_max = hi is None or v <= hi
        bound = lo if not ok_min or hi is None else hi
        parts = ([f">= {lo:.4g}"] if lo is not None else []) + ([f"<= {hi:.4g}"] if hi is not None else [])
        rules.append(Rule(
            name, v, bound, ok_min and ok_max, f"candidate {m} {' and '.join(parts)}{ref_note}", kind="guardrail",
        ))
    return rules


def _at_share(curve: dict[str, Any], share: float) -> list[Any]:
    """The curve's item counts at ``share`` (empty when the curve was not read there)."""
    return [i for s, i in zip(curve.get("shares") or [], curve.get("items") or []) if abs(float(s) - share) < 1e-9]


def _judge_popularity_bias(ctx: _Ctx) -> list[Rule]:
    rules = []
    curve = ctx.curves.get("candidate") or {}
    for r in ctx.spec.popularity_bias:
        name = ctx.name(r, f"popularity_bias[{r.share:g}]")
        hit = _at_share(curve, r.share)
        if not hit:
            rules.append(_skip(name, "popularity_bias", f"no popularity curve at share {r.share:g} in the report"))
            continue
        n_catalog = int(ctx.report.get("n_catalog") or 0)
        if r.min_ratio_to_popularity is not None:
            ref = _at_share(ctx.curves.get("popularity") or {}, r.share)
            if not ref:
                rules.append(_skip(name, "popularity_bias", f"no popularity-baseline curve at share {r.share:g}"))
                continue
            bound = float(r.min_ratio_to_popularity * float(ref[0]))
        elif r.min_items is not None:
            bound = float(r.min_items)
        elif n_catalog:
            bound = float(math.ceil(r.min_fraction * n_catalog))  # type: ignore[operator]
        else:
            rules.append(_skip(name, "popularity_bias", "catalog size unknown"))
            continue
        v = float(hit[0])
        rules.append(Rule(
            name, v, bound, v >= bound,
            f"distinct items making {r.share:.0%} of the candidate's top-{curve.get('k', '?')} "
            f"recommendations (catalog {n_catalog})",
            kind="popularity_bias",
        ))
    return rules


_JUDGES = (
    _judge_floors, _judge_beat_baselines, _judge_no_regression, _judge_slices, _judge_guardrails,
    _judge_popularity_bias,
)


def decide(spec: GateSpec, report: dict[str, Any]) -> GateResult:
    """Apply ``spec`` to an evaluation report (the ``eval/report.json`` dict).

    The report needs ``metrics.candidate`` (with ``n_users_evaluated`` and the primary metric);
    ``metrics.popularity`` / ``recent_popularity`` / ``champion``, ``paired``, ``slices`` and
    ``popularity_curve`` are used when present, and the rules that need a missing one are
    SKIPs with a note. Raises ValueError when the candidate lacks the primary metric.
    """
    primary = spec.primary_metric
    ctx = _Ctx.of(spec, report)
    n_users = int(ctx.cand.get("n_users_evaluated") or 0)
    if ctx.cand_value(primary) is None and n_users > 0:
        raise ValueError(
            f"the report has no candidate value for the gate's primary metric {primary!r} "
            f"(metrics: {metric_key_order(ctx.cand)}); is its k in the config's ks?"
        )
    spec_dict = spec.model_dump(mode="json")
    min_rule = Rule(
        "min_users", n_users, spec.min_users, n_users >= spec.min_users,
        f"{n_users} users evaluated", kind="min_users",
    )
    if not min_rule.passed:
        min_rule.note += f"; fewer than {spec.min_users}: not judged"
        return GateResult(SKIPPED, primary, [min_rule], n_users=n_users, spec=spec_dict)
    rules = [min_rule]
    for judge in _JUDGES:
        rules += judge(ctx)
    verdict = FAIL if any(r.result == FAIL for r in rules) else PASS
    return GateResult(verdict, primary, rules, n_users=n_users, spec=spec_dict)


def mlflow_tags(result: GateResult | dict[str, Any]) -> dict[str, str]:
    """``gate_verdict``, ``gate_forced``, ``gate_metric`` and one ``gate_rule.<name>`` tag per rule
    (MLflow tag keys allow only ``[A-Za-z0-9_.-/ ]``, so other characters become ``_``)."""
    d = result.to_dict() if isinstance(result, GateResult) else result
    tags = {
        "gate_verdict": str(d["verdict"]),
        "gate_forced": str(bool(d.get("forced"))).lower(),
        "gate_metric": str(d.get("metric")),
    }
    for r in d.get("rules", []):
        key = "gate_rule." + re.sub(r"[^A-Za-z0-9_.\-/ ]", "_", str(r["name"]))
        observed, bound = (fmt_num(as_number(r.get(x))) for x in ("observed", "bound"))
        tags[key] = f"{r.get('result') or ('PASS' if r['passed'] else 'FAIL')}: observed {observed}, bound {bound}"
    return tags
