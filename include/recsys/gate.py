"""The promotion gate: PASS / FAIL / SKIPPED with a reason for every rule.

Rules, all on the configured gate metric (e.g. ``ndcg@10``):

1. ``min_users``: at least ``gate_min_users`` users were evaluated; otherwise the evidence is
   too thin to judge and the verdict is SKIPPED (nothing is published).
2. ``floor``: candidate >= ``gate_min_metric``.
3. ``beats_popularity``: candidate > popularity x (1 + ``gate_min_lift_over_popularity``).
4. ``no_regression``: candidate >= champion x (1 - ``gate_max_regression``) when a champion
   exists; with none this rule passes with the note "no champion yet".

PASS needs every rule to pass. FAIL means nothing is published and the champion stays.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from include.recsys.config import PipelineConfig

PASS, FAIL, SKIPPED = "PASS", "FAIL", "SKIPPED"


class GateFailed(RuntimeError):
    """The candidate did not pass the gate; carries the :class:`GateResult`."""

    def __init__(self, result: GateResult) -> None:
        self.result = result
        super().__init__(result.explain())


@dataclass
class Rule:
    name: str
    observed: float | None
    bound: float | None
    passed: bool
    note: str = ""


@dataclass
class GateResult:
    verdict: str
    metric: str
    rules: list[Rule] = field(default_factory=list)

    def explain(self) -> str:
        lines = [f"gate {self.verdict} on {self.metric}:"]
        for r in self.rules:
            mark = "ok  " if r.passed else "FAIL"
            obs = "n/a" if r.observed is None else f"{r.observed:.4f}"
            bound = "n/a" if r.bound is None else f"{r.bound:.4f}"
            lines.append(f"  [{mark}] {r.name}: observed {obs}, bound {bound}. {r.note}".rstrip())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "metric": self.metric, "rules": [asdict(r) for r in self.rules]}


def decide(
    cfg: PipelineConfig,
    candidate: dict[str, float],
    popularity: dict[str, float],
    champion: dict[str, float] | None,
) -> GateResult:
    """Apply the rules to summaries of the same holdout (see the module docstring)."""
    m = cfg.gate_metric
    cand = candidate[m]
    n_users = int(candidate.get("n_users_evaluated", 0))
    rules = [
        Rule(
            "min_users", n_users, cfg.gate_min_users, n_users >= cfg.gate_min_users,
            f"{n_users} users evaluated",
        )
    ]
    if not rules[0].passed:
        return GateResult(SKIPPED, m, rules)
    rules.append(Rule("floor", cand, cfg.gate_min_metric, cand >= cfg.gate_min_metric))
    pop_bound = popularity[m] * (1 + cfg.gate_min_lift_over_popularity)
    rules.append(
        Rule(
            "beats_popularity", cand, pop_bound, cand > pop_bound,
            f"popularity {popularity[m]:.4f}, required lift {cfg.gate_min_lift_over_popularity:+.0%}",
        )
    )
    if champion is None:
        rules.append(Rule("no_regression", cand, None, True, "no champion yet"))
    else:
        bound = champion[m] * (1 - cfg.gate_max_regression)
        rules.append(
            Rule(
                "no_regression", cand, bound, cand >= bound,
                f"champion {champion[m]:.4f}, tolerance {cfg.gate_max_regression:.0%}",
            )
        )
    return GateResult(PASS if all(r.passed for r in rules) else FAIL, m, rules)
