"""Unit tests for ``include.recsys.gate.decide`` (the promotion gate)."""

from __future__ import annotations

import pytest

from include.recsys.config import load_config
from include.recsys.gate import FAIL, PASS, SKIPPED, GateFailed, decide


@pytest.fixture
def cfg(tmp_path):
    return load_config(
        {
            "data_dir": tmp_path,
            "gate_metric": "ndcg@10",
            "gate_min_metric": 0.05,
            "gate_min_lift_over_popularity": 0.10,
            "gate_max_regression": 0.05,
            "gate_min_users": 20,
        }
    )


def _m(value: float, users: int = 100) -> dict[str, float]:
    return {"ndcg@10": value, "ndcg@20": 0.0, "n_users_evaluated": users}


def _rules(result) -> dict[str, bool]:
    return {r.name: r.passed for r in result.rules}


def test_pass_without_champion_notes_it(cfg) -> None:
    res = decide(cfg, _m(0.20), _m(0.10), None)
    assert res.verdict == PASS and res.metric == "ndcg@10"
    assert _rules(res) == {"min_users": True, "floor": True, "beats_popularity": True, "no_regression": True}
    nr = res.rules[-1]
    assert nr.note == "no champion yet" and nr.bound is None
    text = res.explain()
    assert text.startswith("gate PASS on ndcg@10:")
    assert "no champion yet" in text and "FAIL" not in text


def test_pass_with_champion(cfg) -> None:
    res = decide(cfg, _m(0.20), _m(0.10), _m(0.19))
    assert res.verdict == PASS
    assert res.rules[-1].bound == pytest.approx(0.19 * 0.95)


def test_fail_on_floor(cfg) -> None:
    res = decide(cfg, _m(0.04), _m(0.01), None)
    assert res.verdict == FAIL
    assert _rules(res) == {"min_users": True, "floor": False, "beats_popularity": True, "no_regression": True}
    assert "[FAIL] floor: observed 0.0400, bound 0.0500" in res.explain()


def test_fail_on_not_beating_popularity(cfg) -> None:
    # 0.105 > popularity 0.10 but not by the required 10% lift (bound 0.11)
    res = decide(cfg, _m(0.105), _m(0.10), None)
    assert res.verdict == FAIL
    assert [r.name for r in res.rules if not r.passed] == ["beats_popularity"]
    rule = res.rules[2]
    assert rule.bound == pytest.approx(0.11)
    assert "[FAIL] beats_popularity" in res.explain()
    assert "popularity 0.1000, required lift +10%" in res.explain()


def test_equal_to_popularity_fails_with_zero_lift(tmp_path) -> None:
    cfg = load_config({"data_dir": tmp_path, "gate_min_lift_over_popularity": 0.0})
    res = decide(cfg, _m(0.10), _m(0.10), None)
    assert res.verdict == FAIL and not _rules(res)["beats_popularity"]  # strictly greater


def test_fail_on_regression_beyond_tolerance(cfg) -> None:
    # champion 0.30, tolerance 5% -> bound 0.285
    res = decide(cfg, _m(0.28), _m(0.10), _m(0.30))
    assert res.verdict == FAIL
    assert [r.name for r in res.rules if not r.passed] == ["no_regression"]
    assert res.rules[-1].bound == pytest.approx(0.285)
    assert "[FAIL] no_regression" in res.explain()
    assert "champion 0.3000, tolerance 5%" in res.explain()


def test_pass_on_regression_inside_tolerance(cfg) -> None:
    res = decide(cfg, _m(0.29), _m(0.10), _m(0.30))
    assert res.verdict == PASS
    assert res.rules[-1].passed and res.rules[-1].observed == 0.29


def test_skipped_when_too_few_users(cfg) -> None:
    # even a terrible candidate is SKIPPED, not FAIL, when the evidence is thin
    res = decide(cfg, _m(0.0, users=19), _m(0.5, users=19), _m(0.9, users=19))
    assert res.verdict == SKIPPED
    assert [r.name for r in res.rules] == ["min_users"]
    assert res.rules[0].observed == 19 and res.rules[0].bound == 20
    assert "gate SKIPPED" in res.explain() and "[FAIL] min_users" in res.explain()
    assert decide(cfg, _m(0.2, users=20), _m(0.1), None).verdict == PASS  # boundary


def test_missing_user_count_is_skipped(cfg) -> None:
    assert decide(cfg, {"ndcg@10": 0.9}, _m(0.1), None).verdict == SKIPPED


def test_several_failures_all_named_and_to_dict(cfg) -> None:
    res = decide(cfg, _m(0.01), _m(0.10), _m(0.30))
    assert res.verdict == FAIL
    assert [r.name for r in res.rules if not r.passed] == ["floor", "beats_popularity", "no_regression"]
    d = res.to_dict()
    assert d["verdict"] == FAIL and d["metric"] == "ndcg@10"
    assert [r["name"] for r in d["rules"]] == ["min_users", "floor", "beats_popularity", "no_regression"]
    err = GateFailed(res)
    assert err.result is res and "[FAIL] floor" in str(err)


def test_gate_uses_configured_metric(tmp_path) -> None:
    cfg = load_config({"data_dir": tmp_path, "gate_metric": "ndcg@20", "gate_min_users": 1})
    cand = {"ndcg@10": 0.0, "ndcg@20": 0.3, "n_users_evaluated": 5}
    pop = {"ndcg@10": 0.5, "ndcg@20": 0.1}
    res = decide(cfg, cand, pop, None)
    assert res.verdict == PASS and res.metric == "ndcg@20"
