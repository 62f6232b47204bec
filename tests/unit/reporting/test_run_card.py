"""The run card (include/recsys/reporting/card_html.py) on a hand-made work folder: sections, embedded plots,
no external references, the gate table, lineage, history with and without earlier runs."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from include.recsys.config.gate_spec import parse_spec
from include.recsys.reporting.card_data import DATA_NAME, load_history
from include.recsys.reporting.card_html import HTML_NAME, write_run_card
from include.recsys.validation.gate import decide, force

DAG = "recsys_nightly_retrain"


class _Page(HTMLParser):
    """Collects element ids, <img> sources, every href/src and the rows of each table by id."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.imgs: list[str] = []
        self.refs: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        for key in ("href", "src"):
            if key in a:
                self.refs.append(a[key])
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag == "table":
            self._table = a.get("id", f"t{len(self.tables)}")
            self.tables[self._table] = []
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._table and self._row is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _parse(path: Path) -> _Page:
    p = _Page()
    p.feed(path.read_text())
    return p


def _eval_report() -> dict:
    def m(x: float) -> dict:
        return {**{f"{n}@{k}": x * f for k in (10, 20) for n, f in (("ndcg", 1.0), ("recall", 2.0), ("precision", 0.5),
                                                                        ("coverage", 1.5), ("gini", 2.0))},
                "n_users_evaluated": 120, "n_users_no_holdout": 3, "n_users_no_recs": 1}

    ci = {"mean_diff": 0.01, "lo": -0.002, "hi": 0.022, "n_users": 120, "n_boot": 1000, "confidence": 0.95}
    return {
        "ks": [10, 20], "n_users": 123, "n_catalog": 500, "champion_version": "4",
        "metrics": {"candidate": m(0.21), "champion": m(0.20), "popularity": m(0.10), "recent_popularity": m(0.12)},
        "popularity_curve": {
            name: {"shares": [round(0.1 * i, 1) for i in range(1, 11)], "items": [i * f for i in range(1, 11)], "k": 10}
            for name, f in (("candidate", 5), ("champion", 4), ("popularity", 1))
        },
        "slices": {
            "candidate": {"activity=heavy": {"n_users": 40, "ndcg@10": 0.3}, "user=new": {"n_users": 10, "ndcg@10": 0.1}},
            "champion": {"activity=heavy": {"n_users": 40, "ndcg@10": 0.28}, "user=new": {"n_users": 10, "ndcg@10": 0.12}},
        },
        "paired": {f"candidate_vs_{o}": {"ndcg@10": ci} for o in ("champion", "popularity", "recent_popularity")},
        "per_user": "eval/per_user_metrics.parquet",
    }


SPEC = {
    "primary_metric": "ndcg@10", "min_users": 20, "floors": [{"min": 0.5}],
    "beat_baselines": [{"baseline": "popularity"}], "no_regression": [{"tolerance": 0.05}],
    "slices": [{"slice": "activity=heavy", "max_drop": 0.1}], "guardrails": [{"metric": "coverage@10", "min": 0.1}],
    "popularity_bias": [{"share": 0.5, "min_items": 5}],
}


def _work(runs: Path, interval: str, run_id: str, *, forced: bool = False) -> Path:
    work = runs / interval / run_id
    (work / "eval").mkdir(parents=True)
    (work / "validation").mkdir()
    ev = _eval_report()
    (work / "eval" / "report.json").write_text(json.dumps(ev))
    res = decide(parse_spec(SPEC), ev)  # the floor 0.5 fails
    if forced:
        force(res)
    (work / "gate.json").write_text(json.dumps({**res.to_dict(), "spec_path": "include/config/gate.yaml",
                                                "spec_sha256": "ab" * 32}))
    (work / "validation" / "input_report.json").write_text(json.dumps({
        "success": True, "n_rows": 5000, "window_start": "2026-10-01", "window_end": "2026-11-20",
        "counts": {"checks": 20, "passed": 19, "failed": 0, "warned": 1, "skipped": 0},
        "results": [{"check": "drift_rows", "column": None, "severity": "warning", "success": False,
                     "observed_value": 0.4, "message": "rows moved 40% vs the median <b>history</b>"}],
        "notes": [], "data_docs": "/w/validation/data_docs/input/index.html",
    }))
    return work


SNAP = {"window_start": "2026-10-01T00:00:00+00:00", "window_end": "2026-11-20T00:00:00+00:00",
        "sha256": "f" * 64, "stats": {"rows_read": 5100, "duplicates_dropped": 100, "inactive_rows_dropped": 0,
                                      "rows": 5000, "users": 300, "items": 500}}
PARTS = {"stats": {"cutoff": "2026-11-13", "train_rows": 4000, "holdout_rows": 1000, "holdout_users_warm": 120,
                   "holdout_users_cold": 7}}


def _card(work: Path, runs: Path, **kw) -> Path:
    return write_run_card(
        work, runs, dag_id=DAG, run_id=work.name, interval_start="2026-11-20", interval_end="2026-11-21",
        mlflow_run_id="abc123", mlflow_experiment="recsys-nightly", model_name="recsys_als", **kw,
    )


def test_run_card_sections_plots_and_no_external_references(tmp_path) -> None:
    runs = tmp_path / "runs"
    work = _work(runs, "20261121T000000Z", "manual__1")
    path = _card(work, runs, snap=SNAP, parts=PARTS, code_version="deadbeef")
    assert path == work / HTML_NAME and (work / DATA_NAME).exists()
    text = path.read_text()
    page = _parse(path)
    assert {"data", "validation", "metrics", "slices", "plots", "gate", "lineage"} <= page.ids
    # self-contained: every reference is an inline image, nothing points outside the page
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert page.refs and all(r.startswith("data:image/png;base64,") for r in page.refs)
    assert len(page.imgs) == 3  # metric@k, popularity-bias curve, history
    for src in page.imgs:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # metrics with deltas vs champion and both baselines, with the bootstrap interval
    metrics = page.tables["metrics-table"]
    assert metrics[0][:5] == ["metric", "candidate", "champion", "popularity", "recent_popularity"]
    assert metrics[0][5:] == ["Δ vs champion", "Δ vs popularity", "Δ vs recent_popularity"]
    ndcg10 = next(r for r in metrics if r[0] == "ndcg@10")
    assert ndcg10[1] == "0.2100" and ndcg10[5].startswith("+0.0100 (+5.0%)") and "[-0.0020, +0.0220]" in ndcg10[5]
    # slices
    slices = page.tables["slices-table"]
    assert [r[0] for r in slices[1:]] == ["activity=heavy", "user=new"] and slices[1][1] == "40"
    # the gate table: one row per rule, with kind / observed / bound / result / note
    gate = json.loads((work / "gate.json").read_text())
    rows = page.tables["gate-table"]
    assert rows[0] == ["rule", "kind", "observed", "bound", "result", "note"]
    assert [r[0] for r in rows[1:]] == [r["name"] for r in gate["rules"]]
    floor = next(r for r in rows if r[0] == "floor")
    assert floor[1:5] == ["floor", "0.2100", "0.5000", "FAIL"]
    assert "gate FAIL" in text
    # data summary, validation, lineage
    data = dict(tuple(r) for r in page.tables["data-table"])
    assert data["snapshot rows / users / items"] == "5,000 / 300 / 500"
    assert data["train rows / holdout rows"] == "4,000 / 1,000"
    assert "&lt;b&gt;history&lt;/b&gt;" in text  # escaped, never raw HTML from a report
    lineage = dict(tuple(r) for r in page.tables["lineage-table"])
    assert lineage["snapshot sha256"] == "f" * 64 and "abc123" in lineage["MLflow experiment / run"]
    assert lineage["Airflow DAG / run"] == f"{DAG} / manual__1" and lineage["code version"] == "deadbeef"
    assert lineage["model / version"] == "recsys_als / not registered"
    assert lineage["published table version"] == "not published"
    assert "no earlier runs" in text


def test_refresh_after_publish_keeps_earlier_data(tmp_path) -> None:
    runs = tmp_path / "runs"
    work = _work(runs, "20261121T000000Z", "manual__1", forced=True)
    _card(work, runs, snap=SNAP, parts=PARTS)
    # publish refreshes the card without the snapshot dict: what the gate stage knew stays
    path = _card(work, runs, model_version="7", published={"version": "20261121T000000Z-abc", "rows": 6000, "users": 300})
    page = _parse(path)
    lineage = dict(tuple(r) for r in page.tables["lineage-table"])
    assert lineage["model / version"] == "recsys_als / 7"
    assert lineage["published table version"] == "20261121T000000Z-abc"
    assert lineage["table rows / users"] == "6,000 / 300"
    assert lineage["snapshot sha256"] == "f" * 64
    text = path.read_text()
    assert "FORCED" in text and "force_publish" in text


def test_history_from_earlier_run_cards(tmp_path) -> None:
    runs = tmp_path / "runs"
    for day in (18, 19, 20):
        _card(_work(runs, f"202611{day}T000000Z", f"scheduled__{day}"), runs)
    other = _work(runs, "20261117T000000Z", "other_dag_run")
    write_run_card(other, runs, dag_id="another_dag", run_id="other_dag_run")
    work = _work(runs, "20261121T000000Z", "manual__1")
    points = load_history(runs, DAG, "manual__1", "ndcg@10")
    assert [p["run_id"] for p in points] == ["scheduled__18", "scheduled__19", "scheduled__20"]
    assert points[0]["candidate"] == pytest.approx(0.21) and points[0]["verdict"] == "FAIL"
    text = _card(work, runs).read_text()
    assert "no earlier runs" not in text
    assert len(_parse(work / HTML_NAME).imgs) == 3
    assert len(load_history(runs, DAG, "x", "ndcg@10", limit=2)) == 2


def test_card_for_a_bare_work_folder(tmp_path) -> None:
    """A run that stopped early (no eval, no gate): the card still renders, saying what is missing."""
    runs = tmp_path / "runs"
    work = runs / "20261121T000000Z" / "r"
    work.mkdir(parents=True)
    text = write_run_card(work, runs, dag_id=DAG, run_id="r").read_text()
    assert "no evaluation report" in text and "the gate has not run" in text and "not run" in text
    assert "<img" not in text


def test_pipeline_gate_writes_card_and_raises_after(tmp_path, monkeypatch) -> None:
    """pipeline.gate writes gate.json and the card before GateFailed; force_publish goes on."""
    from datetime import datetime, timezone

    from include.recsys.config.settings import load_config
    from include.recsys.core.run import RunContext
    from include.recsys.errors import GateFailed
    from include.recsys.reporting.run_card import RUN_CARD
    from include.recsys.stages import gate as gate_mod
    from tests._stages import summary_text

    logged: list[dict] = []
    monkeypatch.setattr("include.recsys.tracking.runs.log_to_run", lambda cfg, run_id, **kw: logged.append(kw))
    spec = tmp_path / "gate.yaml"
    spec.write_text("primary_metric: ndcg@10\nmin_users: 20\nfloors:\n  - min: 0.5\n")
    rc = RunContext(DAG, "manual__x", datetime(2026, 11, 20, tzinfo=timezone.utc),
                             datetime(2026, 11, 21, tzinfo=timezone.utc))
    cfg = load_config({"data_dir": tmp_path, "gate_spec_path": spec})
    work = rc.work_dir(cfg)
    (work / "eval").mkdir()
    (work / "eval" / "report.json").write_text(json.dumps(_eval_report()))
    ev = {"report": str(work / "eval" / "report.json"), "metrics": _eval_report()["metrics"]}
    with pytest.raises(GateFailed) as exc:
        gate_mod.gate(cfg, rc, ev, {"mlflow_run_id": "abc"}, SNAP, PARTS)
    assert exc.value.report_path == str(work / RUN_CARD) and (work / RUN_CARD).exists()
    assert logged[-1]["tags"]["gate_verdict"] == "FAIL" and logged[-1]["tags"]["gate_forced"] == "false"
    assert set(logged[-1]["artifacts"]) == {"gate", "run_card"}

    forced = gate_mod.gate(cfg.with_overrides({"force_publish": True}), rc, ev, {"mlflow_run_id": "abc"})
    assert forced["verdict"] == "FAIL" and forced["forced"] is True
    assert forced["run_card"] == str(work / RUN_CARD)
    assert logged[-1]["tags"]["gate_forced"] == "true"
    assert json.loads((work / "gate.json").read_text())["forced"] is True
    assert "FORCED" in (work / RUN_CARD).read_text()
    (work / RUN_CARD).unlink()
    skipped = gate_mod.gate(cfg.with_overrides({"gate_min_users": 1000}), rc, ev, {"mlflow_run_id": "abc"})
    assert skipped["verdict"] == "SKIPPED" and not skipped["forced"]  # the DAG skips downstream
    assert (work / RUN_CARD).exists() and "gate SKIPPED" in (work / RUN_CARD).read_text()
    (work / "gate.json").write_text(json.dumps(forced))
    summary = summary_text({"run_id": rc.run_id, "gate": json.loads((work / "gate.json").read_text()),
                                       "run_card": str(work / RUN_CARD)})
    assert "FORCED by force_publish" in summary and "FAIL floor" in summary and "run card" in summary


def test_card_of_an_older_run_that_served_nothing(tmp_path) -> None:
    """Issue 16: a run whose data is older than the served table's succeeds without serving;
    its card says so at the top and in the lineage, escaped. Older data served by
    allow_older_data gets its own banner."""
    runs = tmp_path / "runs"
    work = _work(runs, "20261118T000000Z", "manual__old")
    _card(work, runs, snap=SNAP, parts=PARTS)
    reason = ("stale: serving data up to 2026-11-21T00:00:00+00:00, this run's data ends at "
              "2026-11-18T00:00:00+00:00; not served")
    path = _card(work, runs, model_version="8",
                 published={"version": None, "not_served": reason, "unserved_version": "20261118T000000Z-ab<c"})
    text = path.read_text()
    import html

    assert f'<p class="banner" id="not-served">NOT SERVED: {html.escape(reason)}</p>' in text
    assert "published: <b>nothing</b>" in text
    lineage = dict(tuple(r) for r in _parse(path).tables["lineage-table"])
    assert lineage["published table version"] == "not published"
    assert lineage["not served"] == f"{reason} (version 20261118T000000Z-ab<c kept unserved)"
    assert "ab&lt;c" in text  # escaped
    older = _card(_work(runs, "20261117T000000Z", "manual__backfill"), runs,
                  published={"version": "v1", "older_data": "OLDER DATA allowed by allow_older_data: x"})
    assert '<p class="banner" id="older-data">OLDER DATA allowed by allow_older_data: x</p>' in older.read_text()


def test_the_card_names_the_chosen_family_and_the_families_compared(tmp_path) -> None:
    runs = tmp_path / "runs"
    work = _work(runs, "20261121T000000Z", "manual__1")
    tuning = work / "tuning"
    tuning.mkdir()
    (tuning / "plan.json").write_text(json.dumps({
        "tune": True, "families": ["als", "item_knn"],
        "families_skipped": {"ease": "40000 items > ease_max_items=16000 (dense n² inverse)"}}))
    trials = [("als", True, 0.11), ("als", True, 0.12), ("item_knn", True, 0.15), ("item_knn", False, 0.9)]
    for i, (fam, ok, metric) in enumerate(trials):
        (tuning / f"trial-{i:03d}.json").write_text(json.dumps(
            {"trial": i, "ok": ok, "best_metric": metric, "params": {"model_family": fam}}))
    (tuning / "best.json").write_text(json.dumps(
        {"config": {"model_family": "item_knn", "knn_kind": "bm25", "knn_k": 50}, "source": "tuned"}))
    page = _parse(_card(work, runs, snap=SNAP, parts=PARTS))
    lineage = dict(tuple(r) for r in page.tables["lineage-table"])
    assert lineage["model family"] == (
        "item_knn (tuned configuration); validation ndcg@10 by family: als 0.1200, item_knn 0.1500; "
        "ease left out: 40000 items > ease_max_items=16000 (dense n² inverse)"
    )
    data = json.loads((work / DATA_NAME).read_text())
    assert data["model"]["family"] == "item_knn" and data["model"]["config"]["knn_k"] == 50


def test_without_tuning_files_the_bundle_names_the_family(tmp_path) -> None:
    runs = tmp_path / "runs"
    work = _work(runs, "20261121T000000Z", "manual__1")
    (work / "model" / "bundle").mkdir(parents=True)
    (work / "model" / "bundle" / "bundle.json").write_text(json.dumps({"format": 1, "kind": "ease"}))
    page = _parse(_card(work, runs, snap=SNAP, parts=PARTS))
    assert dict(tuple(r) for r in page.tables["lineage-table"])["model family"] == "ease"
