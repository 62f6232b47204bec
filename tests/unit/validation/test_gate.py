"""Unit tests for the promotion gate: the YAML spec, every rule kind (PASS / FAIL / SKIP) on
hand-made evaluation reports, the bootstrap no-regression boundary, config overrides,
force_publish and the Slack rendering of the richer rule table."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from include.recsys.config.gate_spec import GateSpec, load_spec, parse_spec, read_spec
from include.recsys.config.settings import PROJECT_ROOT, load_config
from include.recsys.errors import GateFailed, GateSpecError
from include.recsys.validation.gate import (
    FAIL,
    PASS,
    SKIP,
    SKIPPED,
    GateResult,
    Rule,
    decide,
    force,
    mlflow_tags,
)

REPO_SPEC = PROJECT_ROOT / "include" / "config" / "gate.yaml"


def _metrics(ndcg: float, users: int = 100, **extra: float) -> dict:
    return {"ndcg@10": ndcg, "ndcg@20": ndcg * 1.2, "recall@10": ndcg * 2, "coverage@10": 0.3,
            "gini@10": 0.6, "n_users_evaluated": users, "n_users_no_holdout": 0, "n_users_no_recs": 0, **extra}


def _ci(mean: float, lo: float, hi: float, n: int = 100) -> dict:
    return {"mean_diff": mean, "lo": lo, "hi": hi, "n_users": n, "n_boot": 1000, "confidence": 0.95}


@pytest.fixture
def report() -> dict:
    """A report in the full (new) schema: champion, both baselines, slices, paired CIs, curve."""
    return {
        "ks": [10, 20],
        "n_users": 100,
        "n_catalog": 1000,
        "champion_version": "3",
        "metrics": {
            "candidate": _metrics(0.20),
            "champion": _metrics(0.20),
            "popularity": _metrics(0.10, **{"coverage@10": 0.01, "gini@10": 0.95}),
            "recent_popularity": _metrics(0.12, **{"coverage@10": 0.01, "gini@10": 0.95}),
        },
        "popularity_curve": {
            "candidate": {"shares": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
                          "items": [2, 5, 9, 14, 20, 30, 45, 70, 120, 300], "k": 10},
            "popularity": {"shares": [0.1, 0.5, 1.0], "items": [1, 3, 12], "k": 10},
        },
        "slices": {
            "candidate": {"activity=heavy": {"n_users": 60, "ndcg@10": 0.30},
                          "activity=cold": {"n_users": 5, "ndcg@10": 0.01},
                          "user=returning": {"n_users": 80, "ndcg@10": 0.22}},
            "champion": {"activity=heavy": {"n_users": 60, "ndcg@10": 0.30},
                         "activity=cold": {"n_users": 5, "ndcg@10": 0.20},
                         "user=returning": {"n_users": 80, "ndcg@10": 0.22}},
        },
        "paired": {
            "candidate_vs_champion": {"ndcg@10": _ci(0.0, -0.01, 0.01)},
            "candidate_vs_popularity": {"ndcg@10": _ci(0.10, 0.08, 0.12)},
            "candidate_vs_recent_popularity": {"ndcg@10": _ci(0.08, 0.06, 0.10)},
        },
        "per_user": "eval/per_user_metrics.parquet",
    }


def _spec(**kw) -> GateSpec:
    return parse_spec({"primary_metric": "ndcg@10", "min_users": 20, **kw})


def _by_name(res: GateResult) -> dict[str, Rule]:
    return {r.name: r for r in res.rules}


# --- the spec --------------------------------------------------------------------------------


def test_repo_spec_parses_and_covers_every_rule_kind() -> None:
    spec = read_spec(REPO_SPEC)
    assert spec.primary_metric == "ndcg@10" and spec.min_users >= 1
    assert spec.floors and spec.beat_baselines and spec.no_regression and spec.slices
    assert spec.guardrails and spec.popularity_bias
    assert {b.baseline for b in spec.beat_baselines} == {"popularity", "recent_popularity"}
    assert spec.no_regression[0].method == "bootstrap"


def test_repo_spec_on_a_full_report(report) -> None:
    res = decide(read_spec(REPO_SPEC), report)
    kinds = {r.kind for r in res.rules}
    assert kinds == {"min_users", "floor", "beats_baseline", "no_regression", "slice_drop", "guardrail", "popularity_bias"}
    assert res.verdict == PASS, res.explain()
    assert all(r.result == PASS for r in res.rules), res.explain()


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ({"min_userz": 3}, "min_userz"),  # typo'd top-level key
        ({"floors": [{"metric": "ndgc@10", "min": 0.1}]}, "floors.0.metric"),
        ({"floors": [{"metric": "ndcg@10", "minimum": 0.1}]}, "floors.0"),
        ({"beat_baselines": [{"baseline": "random"}]}, "beat_baselines.0.baseline"),
        ({"no_regression": [{"tolerance": 1.5}]}, "no_regression.0.tolerance"),
        ({"no_regression": [{"tolerance": 0.1, "method": "guess"}]}, "no_regression.0.method"),
        ({"slices": [{"slice": "heavy", "min": 0.1}]}, "slices.0.slice"),
        ({"slices": [{"slice": "activity=heavy"}]}, "slices.0"),
        ({"slices": [{"slice": "activity=heavy", "min": 0.1, "max_drop": 0.1}]}, "slices.0"),
        ({"guardrails": [{"metric": "gini@10"}]}, "guardrails.0"),
        ({"popularity_bias": [{"share": 1.5, "min_items": 3}]}, "popularity_bias.0.share"),
        ({"popularity_bias": [{"share": 0.5}]}, "popularity_bias.0"),
        ({"min_users": 0}, "min_users"),
        ({"primary_metric": "ndcg"}, "primary_metric"),
    ],
)
def test_broken_spec_names_the_bad_key(doc, where) -> None:
    with pytest.raises(GateSpecError) as exc:
        parse_spec(doc, "gate.yaml")
    assert where in str(exc.value) and "gate.yaml: invalid gate spec" in str(exc.value)


def test_broken_spec_files(tmp_path: Path) -> None:
    with pytest.raises(GateSpecError, match="does not exist"):
        read_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("floors: [\n")
    with pytest.raises(GateSpecError, match="not valid YAML"):
        read_spec(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(GateSpecError, match="must be a YAML mapping"):
        read_spec(bad)
    bad.write_text("floors:\n  - metric: ndcg@10\n    min: high\n")
    with pytest.raises(GateSpecError, match=r"floors\.0\.min"):
        read_spec(bad)


def test_config_points_at_the_spec_and_explicit_values_override(tmp_path, monkeypatch) -> None:
    for name in ("RECSYS_GATE_METRIC", "RECSYS_GATE_MIN_METRIC", "RECSYS_GATE_SPEC_PATH", "RECSYS_GATE_MIN_USERS",
                 "RECSYS_GATE_MAX_REGRESSION", "RECSYS_GATE_MIN_LIFT_OVER_POPULARITY"):
        monkeypatch.delenv(name, raising=False)
    cfg = load_config({"data_dir": tmp_path})
    assert cfg.gate_spec_path == REPO_SPEC and cfg.gate_metric == "ndcg@10"
    assert cfg.gate_min_metric is None and cfg.force_publish is False
    assert load_spec(cfg) == read_spec(REPO_SPEC)  # nothing explicit: the file as is

    cfg = load_config({"data_dir": tmp_path, "gate_min_metric": 0.5, "gate_min_users": 7,
                       "gate_max_regression": 0.2, "gate_min_lift_over_popularity": 0.3})
    spec = load_spec(cfg)
    assert spec.min_users == 7
    assert [f.min for f in spec.floors if spec.metric_of(f) == "ndcg@10"] == [0.5]
    assert [b.min_lift for b in spec.beat_baselines if b.baseline == "popularity"] == [0.3]
    assert spec.no_regression[0].tolerance == 0.2

    # the environment works as the e2e tests use it
    monkeypatch.setenv("RECSYS_GATE_MIN_METRIC", "0.99")
    assert load_spec(load_config({"data_dir": tmp_path})).floors[0].min == 0.99

    # another spec file: its primary metric becomes the config's gate_metric
    other = tmp_path / "gate.yaml"
    other.write_text("primary_metric: recall@20\nmin_users: 3\nfloors:\n  - min: 0.1\n")
    monkeypatch.setenv("RECSYS_GATE_SPEC_PATH", str(other))
    cfg = load_config({"data_dir": tmp_path})
    assert cfg.gate_metric == "recall@20" and load_spec(cfg).primary_metric == "recall@20"
    monkeypatch.setenv("RECSYS_GATE_METRIC", "ndcg@20")  # explicit beats the spec
    assert load_spec(load_config({"data_dir": tmp_path})).primary_metric == "ndcg@20"


def test_override_adds_a_rule_the_spec_lacks() -> None:
    cfg = load_config({"gate_min_metric": 0.2, "gate_max_regression": 0.1, "gate_min_lift_over_popularity": 0.5})
    spec = _spec().with_config(cfg)
    assert [(f.metric, f.min) for f in spec.floors] == [(None, 0.2)]
    assert spec.no_regression[0].tolerance == 0.1 and spec.beat_baselines[0].min_lift == 0.5


# --- rules -----------------------------------------------------------------------------------


def test_min_users_skips_and_judges_nothing_else(report) -> None:
    report["metrics"]["candidate"]["n_users_evaluated"] = 19
    report["metrics"]["candidate"]["ndcg@10"] = 0.0  # a terrible candidate is SKIPPED, not FAIL
    res = decide(_spec(floors=[{"min": 0.5}]), report)
    assert res.verdict == SKIPPED and [r.name for r in res.rules] == ["min_users"]
    assert (res.rules[0].observed, res.rules[0].bound, res.rules[0].result) == (19, 20, FAIL)
    report["metrics"]["candidate"]["n_users_evaluated"] = 20  # boundary: enough
    assert decide(_spec(), report).verdict == PASS
    del report["metrics"]["candidate"]["n_users_evaluated"]
    assert decide(_spec(), report).verdict == SKIPPED


def test_floor_on_any_metric(report) -> None:
    spec = _spec(floors=[{"min": 0.2}, {"metric": "recall@10", "min": 0.5}, {"metric": "map@10", "min": 0.1}])
    res = decide(spec, report)
    r = _by_name(res)
    assert r["floor"].result == PASS and r["floor"].bound == 0.2  # equal passes
    assert r["floor[recall@10]"].result == FAIL and r["floor[recall@10]"].observed == pytest.approx(0.4)
    assert r["floor[map@10]"].result == SKIP and "not in the report" in r["floor[map@10]"].note
    assert res.verdict == FAIL and [x.name for x in res.failed()] == ["floor[recall@10]"]


def test_beats_baseline_point_and_bootstrap(report) -> None:
    spec = _spec(beat_baselines=[
        {"baseline": "popularity", "min_lift": 1.0},  # 0.20 > 0.10 * 2 fails: strictly greater
        {"baseline": "recent_popularity", "min_lift": 0.5},  # 0.20 > 0.18 passes
        {"name": "pop_ci", "baseline": "popularity", "min_lift": 0.7, "method": "bootstrap"},  # lo 0.08 > 0.07
        {"name": "recent_ci", "baseline": "recent_popularity", "min_lift": 0.5, "method": "bootstrap"},  # 0.06 > 0.06? no
    ])
    r = _by_name(decide(spec, report))
    assert r["beats_popularity"].result == FAIL and r["beats_popularity"].bound == pytest.approx(0.2)
    assert "required lift +100%" in r["beats_popularity"].note
    assert r["beats_recent_popularity"].result == PASS
    assert r["pop_ci"].result == PASS and r["pop_ci"].observed == 0.08 and r["pop_ci"].bound == pytest.approx(0.07)
    assert r["recent_ci"].result == FAIL and r["recent_ci"].bound == pytest.approx(0.06)


def test_missing_baseline_is_not_evaluated(report) -> None:
    del report["metrics"]["recent_popularity"]
    del report["paired"]
    spec = _spec(beat_baselines=[{"baseline": "recent_popularity"}, {"baseline": "popularity", "method": "bootstrap"}])
    res = decide(spec, report)
    r = _by_name(res)
    assert r["beats_recent_popularity"].result == SKIP and r["beats_recent_popularity"].passed
    assert "no recent_popularity" in r["beats_recent_popularity"].note
    assert r["beats_popularity"].result == PASS and "point estimate" in r["beats_popularity"].note
    assert res.verdict == PASS


@pytest.mark.parametrize(
    ("hi", "expected"),
    [
        (-0.0100, PASS),  # exactly -tolerance * champion (0.05 * 0.20): not below, PASS
        (-0.0101, FAIL),  # the whole interval is below the tolerated drop: a real regression
        (0.004, PASS),  # could be no worse: noise is not a regression
    ],
)
def test_no_regression_bootstrap_boundary(report, hi, expected) -> None:
    report["metrics"]["candidate"]["ndcg@10"] = 0.17  # the point estimate alone would FAIL (< 0.19)
    report["paired"]["candidate_vs_champion"]["ndcg@10"] = _ci(-0.03, -0.05, hi)
    res = decide(_spec(no_regression=[{"tolerance": 0.05}]), report)
    rule = _by_name(res)["no_regression"]
    assert rule.kind == "no_regression" and rule.result == expected
    assert rule.observed == hi and rule.bound == pytest.approx(-0.01)
    assert "95% CI [-0.0500" in rule.note and "champion 0.2000, tolerance 5%" in rule.note
    assert res.verdict == expected


def test_no_regression_point_estimate_and_fallbacks(report) -> None:
    report["metrics"]["candidate"]["ndcg@10"] = 0.19  # champion 0.20, tolerance 5% -> 0.19 passes
    point = _spec(no_regression=[{"tolerance": 0.05, "method": "point"}])
    assert _by_name(decide(point, report))["no_regression"].bound == pytest.approx(0.19)
    assert decide(point, report).verdict == PASS
    report["metrics"]["candidate"]["ndcg@10"] = 0.1899
    assert decide(point, report).verdict == FAIL
    # bootstrap asked but no paired section (today's report): point estimate, said so
    del report["paired"]
    rule = _by_name(decide(_spec(no_regression=[{"tolerance": 0.05}]), report))["no_regression"]
    assert rule.result == FAIL and "no paired interval in the report: point estimate" in rule.note
    # no champion yet: not evaluated, never blocks
    del report["metrics"]["champion"]
    res = decide(_spec(no_regression=[{"tolerance": 0.05}]), report)
    assert _by_name(res)["no_regression"].result == SKIP and res.verdict == PASS
    assert _by_name(res)["no_regression"].note == "no champion yet"


def test_slice_rules(report) -> None:
    spec = _spec(slices=[
        {"slice": "activity=heavy", "max_drop": 0.10},
        {"slice": "user=returning", "min": 0.25},
        {"slice": "activity=cold", "max_drop": 0.10, "min_users": 20},  # 5 users: not judged
        {"slice": "items=tail", "min": 0.0},  # not in the report
    ])
    r = _by_name(decide(spec, report))
    assert r["slice_drop[activity=heavy]"].result == PASS and r["slice_drop[activity=heavy]"].bound == pytest.approx(0.27)
    assert r["slice_floor[user=returning]"].result == FAIL and r["slice_floor[user=returning]"].observed == 0.22
    assert r["slice_drop[activity=cold]"].result == SKIP and "5 users < 20" in r["slice_drop[activity=cold]"].note
    assert r["slice_floor[items=tail]"].result == SKIP
    report["slices"]["candidate"]["activity=heavy"]["ndcg@10"] = 0.26  # dropped more than 10%
    assert _by_name(decide(spec, report))["slice_drop[activity=heavy]"].result == FAIL
    del report["slices"]
    res = decide(spec, report)
    assert all(r.result == SKIP and r.note == "no slices in the report" for r in res.rules[1:])


def test_guardrails_and_popularity_bias(report) -> None:
    spec = _spec(
        guardrails=[{"metric": "coverage@10", "min": 0.2}, {"metric": "gini@10", "max": 0.5},
                    {"metric": "novelty@10", "min": 1.0}],
        popularity_bias=[{"share": 0.5, "min_items": 20}, {"share": 0.1, "min_fraction": 0.005},
                         {"share": 0.25, "min_items": 1}],
    )
    res = decide(spec, report)
    r = _by_name(res)
    assert r["guardrail[coverage@10]"].result == PASS
    assert r["guardrail[gini@10]"].result == FAIL and r["guardrail[gini@10]"].bound == 0.5
    assert r["guardrail[novelty@10]"].result == SKIP
    assert r["popularity_bias[0.5]"].result == PASS and r["popularity_bias[0.5]"].observed == 20
    # 2 items make 10% of all recommendations; 0.5% of a 1000-item catalog = 5 required
    assert r["popularity_bias[0.1]"].result == FAIL and r["popularity_bias[0.1]"].bound == 5
    assert r["popularity_bias[0.25]"].result == SKIP  # no such point on the curve
    assert [x.name for x in res.failed()] == ["guardrail[gini@10]", "popularity_bias[0.1]"]


def test_todays_report_never_crashes() -> None:
    """The report before slices / paired / curves / recent popularity existed."""
    old = {"ks": [10, 20], "n_users": 50, "n_catalog": 100, "champion_version": None,
           "metrics": {"candidate": {"ndcg@10": 0.2, "coverage@10": 0.5, "n_users_evaluated": 50},
                       "popularity": {"ndcg@10": 0.1, "n_users_evaluated": 50}}}
    res = decide(read_spec(REPO_SPEC), old)
    assert res.verdict == PASS, res.explain()
    skipped = {r.name for r in res.rules if r.result == SKIP}
    assert {"beats_recent_popularity", "no_regression", "popularity_bias[0.5]", "guardrail[gini@10]"} <= skipped


def test_missing_primary_metric_is_an_error(report) -> None:
    with pytest.raises(ValueError, match="primary metric 'ndcg@50'"):
        decide(_spec(primary_metric="ndcg@50"), report)


def test_explain_to_dict_and_mlflow_tags(report) -> None:
    report["metrics"]["candidate"]["ndcg@10"] = 0.01
    res = decide(_spec(floors=[{"min": 0.05}], beat_baselines=[{"baseline": "popularity"}]), report)
    assert res.verdict == FAIL
    text = res.explain()
    assert text.startswith("gate FAIL on ndcg@10:") and "[FAIL] floor: observed 0.0100, bound 0.0500" in text
    d = res.to_dict()
    assert d["verdict"] == FAIL and d["forced"] is False and d["n_users"] == 100
    assert [r["result"] for r in d["rules"]] == [PASS, FAIL, FAIL]
    assert {"name", "kind", "observed", "bound", "passed", "result", "note"} <= set(d["rules"][0])
    assert d["spec"]["primary_metric"] == "ndcg@10"
    json.dumps(d)  # JSON-able
    tags = mlflow_tags(res)
    assert tags["gate_verdict"] == FAIL and tags["gate_forced"] == "false"
    assert tags["gate_rule.floor"].startswith("FAIL: observed 0.0100")
    slice_res = decide(_spec(slices=[{"slice": "activity=heavy", "min": 0.1}]), report)
    assert "gate_rule.slice_floor_activity_heavy_" in mlflow_tags(slice_res)  # MLflow-safe key
    err = GateFailed(res)
    assert err.result is res and "[FAIL] floor" in str(err)


# --- force_publish ---------------------------------------------------------------------------


def test_force_keeps_the_verdict_and_marks_it(report) -> None:
    report["metrics"]["candidate"]["ndcg@10"] = 0.01
    res = force(decide(_spec(floors=[{"min": 0.05}]), report))
    assert res.verdict == FAIL and res.forced is True
    assert "FORCED" in res.explain() and res.to_dict()["forced"] is True
    assert mlflow_tags(res)["gate_forced"] == "true"
    ok = force(decide(_spec(), copy.deepcopy(report) | {"metrics": {"candidate": _metrics(0.2)}}))
    assert ok.verdict == PASS and ok.forced is False  # nothing to force
    report["metrics"]["candidate"]["n_users_evaluated"] = 1
    skipped = force(decide(_spec(), report))
    assert skipped.verdict == SKIPPED and skipped.forced is True


def test_forced_slack_message_is_a_warning_with_the_run_card(monkeypatch) -> None:
    from include.recsys.notify.callbacks import send_gate_verdict

    sent = []
    monkeypatch.setattr("include.recsys.notify.callbacks.send_slack", lambda payload, conn_id, timeout=5.0: sent.append(payload) or True)
    verdict = {
        "verdict": FAIL, "metric": "ndcg@10", "forced": True, "path": "/w/gate.json", "run_card": "/w/run_card.html",
        "rules": [{"name": "floor", "observed": 0.01, "bound": 0.05, "passed": False, "result": FAIL},
                  {"name": "no_regression", "observed": 0.2, "bound": None, "passed": True, "result": SKIP}],
    }
    assert send_gate_verdict(verdict, dag_id="recsys_nightly_retrain", run_id="r1") is True
    msg = sent[0]
    assert msg["text"].startswith(":warning: Gate FAIL FORCED") and "force_publish" in msg["text"]
    body = json.dumps(msg)
    assert "/w/run_card.html" in body and "Run card" in body
    table = [b for b in msg["blocks"] if b["type"] == "section" and "text" in b][0]["text"]["text"]
    rows = table.strip("`").splitlines()
    assert rows[2].split()[-1] == "FAIL" and rows[3].split()[-1] == "SKIP"


def test_gate_fail_callback_renders_result_column() -> None:
    from include.recsys.notify.callbacks import _domain_payload

    res = GateResult(FAIL, "ndcg@10", [Rule("floor", 0.01, 0.05, False, kind="floor"),
                                      Rule("no_regression", 0.2, None, True, "no champion yet", kind="no_regression", result=SKIP)])
    err = GateFailed(res)
    err.report_path = "/w/run_card.html"
    payload = _domain_payload(err, "d", "r")
    body = json.dumps(payload)
    assert "Gate FAIL" in payload["text"] and "SKIP" in body and "/w/run_card.html" in body


def test_relative_guardrails_follow_the_baselines(report) -> None:
    """Bounds relative to a baseline scale with it; a missing reference model is a SKIP."""
    rep = copy.deepcopy(report)
    pop = rep["metrics"]["popularity"]
    pop["gini@10"], pop["coverage@10"] = 0.9, 0.05
    rep["metrics"]["candidate"]["gini@10"], rep["metrics"]["candidate"]["coverage@10"] = 0.95, 0.2
    rep["popularity_curve"]["popularity"] = {"shares": [0.5, 1.0], "items": [4, 10], "k": 10}
    rep["popularity_curve"]["candidate"] = {"shares": [0.5, 1.0], "items": [9, 40], "k": 10}
    spec = _spec(
        guardrails=[
            {"metric": "gini@10", "max": 1.0, "relative_to": "popularity"},
            {"metric": "coverage@10", "min": 2.0, "relative_to": "popularity"},
            {"name": "cov_vs_champion", "metric": "coverage@10", "min": 0.5, "relative_to": "champion"},
        ],
        popularity_bias=[{"share": 0.5, "min_ratio_to_popularity": 2.0},
                         {"name": "pb3", "share": 0.5, "min_ratio_to_popularity": 3.0}],
    )
    rep["metrics"].pop("champion", None)
    res = decide(spec, rep)
    r = {x.name: x for x in res.rules}
    assert r["guardrail[gini@10]"].result == FAIL and r["guardrail[gini@10]"].bound == pytest.approx(0.9)
    assert r["guardrail[coverage@10]"].result == PASS and r["guardrail[coverage@10]"].bound == pytest.approx(0.1)
    assert r["cov_vs_champion"].result == SKIP
    assert r["popularity_bias[0.5]"].result == PASS and r["popularity_bias[0.5]"].bound == 8.0
    assert r["pb3"].result == FAIL and r["pb3"].bound == 12.0
    with pytest.raises(GateSpecError, match="min_ratio_to_popularity"):
        _spec(popularity_bias=[{"share": 0.5, "min_items": 3, "min_ratio_to_popularity": 2.0}])


# --- fair champion comparison (issue 16) -------------------------------------------------------


def test_champion_trained_on_the_holdout_is_not_judged_against(report) -> None:
    """An older run (holdout from Nov 14) judged against a champion trained up to Nov 17: the
    champion scores far better on data it trained on; every champion rule is a SKIP saying
    why, never a false regression, while the rules that do not need the champion still judge."""
    from include.recsys.validation.gate import champion_comparison

    report["metrics"]["champion"] = _metrics(0.40)  # leakage makes the champion look great
    report["slices"]["champion"]["activity=heavy"]["ndcg@10"] = 0.60
    report["paired"]["candidate_vs_champion"]["ndcg@10"] = _ci(-0.2, -0.25, -0.15)
    spec = read_spec(REPO_SPEC)
    assert decide(spec, report).verdict == FAIL  # what the gate said before: a "regression"
    comp = champion_comparison(
        "3", {"train_data_end": "2026-11-17T00:00:00+00:00", "data_window_end": "2026-11-24T00:00:00+00:00"},
        "2026-11-14T00:00:00+00:00",
    )
    assert comp["fair"] is False and comp["basis"] == "train_data_end"
    assert "champion version 3 trained on data up to 2026-11-17T00:00:00+00:00" in comp["reason"]
    assert "after this holdout's start 2026-11-14T00:00:00+00:00" in comp["reason"]
    report["champion_comparison"] = comp
    res = decide(spec, report)
    assert res.verdict == PASS, res.explain()
    rules = _by_name(res)
    for name in ("no_regression", "slice_drop[activity=heavy]", "slice_drop[user=returning]", "coverage_vs_champion"):
        assert rules[name].result == SKIP and rules[name].note == comp["reason"], name
    assert rules["beats_popularity"].result == PASS and rules["floor"].result == PASS
    # a real regression against a fair champion still fails
    report["champion_comparison"] = champion_comparison(
        "3", {"train_data_end": "2026-11-14T00:00:00+00:00"}, "2026-11-14T00:00:00+00:00")
    assert report["champion_comparison"]["fair"] is True  # trained strictly before the holdout
    assert _by_name(decide(spec, report))["no_regression"].result == FAIL


def test_champion_comparison_without_a_training_end() -> None:
    from include.recsys.validation.gate import champion_comparison

    # a champion registered before the tags: its data window's end is the (upper) bound
    comp = champion_comparison("1", {"data_window_end": "2026-11-21T00:00:00Z"}, "2026-11-14T00:00:00Z")
    assert comp["fair"] is False and comp["basis"] == "data_window_end" and "training end unknown" in comp["reason"]
    assert champion_comparison("1", {"data_window_end": "2026-11-14"}, "2026-11-14T00:00:00Z")["fair"] is True
    unknown = champion_comparison("1", {}, "2026-11-14T00:00:00Z")
    assert unknown["fair"] is True and unknown["basis"] == "unknown"
