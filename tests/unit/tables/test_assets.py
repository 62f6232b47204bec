"""The recommendations Asset without Airflow running: URI derivation, event metadata, no event
for a version that is not served, and the example consumer's counts."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd

from include.recsys.tables.assets import (
    event_version,
    move_event_extra,
    summarize_version,
    table_uri,
)
from include.recsys.tables.current import point_current, rollback
from include.recsys.tables.versions import write_version


def _publish(root, tag: str, model_version: str) -> None:
    table = pd.DataFrame(
        [{"user_id": u, "rank": r, "item_id": f"i{r}", "score": 1.0 / r, "source": "model" if u != "u3" else "fallback",
          "model_name": "recsys_als", "model_version": model_version} for u in ("u1", "u2", "u3") for r in (1, 2)]
    )
    fallback = pd.DataFrame({"rank": [1, 2], "item_id": ["p1", "p2"], "score": [1.0, 0.5]})
    manifest = {"top_n": 2, "model_name": "recsys_als", "model_version": model_version,
                "gate": {"verdict": "PASS", "metric": "ndcg@10", "forced": False},
                "data_interval": {"start": "2026-11-20T00:00:00+00:00", "end": "2026-11-21T00:00:00+00:00"}}
    write_version(root, tag, table, fallback, manifest)


def test_uri_is_derived_from_the_root(tmp_path):
    assert table_uri(tmp_path / "recommendations") == (tmp_path / "recommendations").resolve().as_uri()
    assert table_uri("s3://bucket/lake/recommendations/") == "s3://bucket/lake/recommendations"


def test_event_metadata_and_no_event_when_current_did_not_move(tmp_path):
    _publish(tmp_path, "v1", "1")
    assert move_event_extra(tmp_path, "v1", reason="publish") is None  # staged, not served
    point_current(tmp_path, "v1")
    _publish(tmp_path, "v2", "2")
    point_current(tmp_path, "v2")
    extra = move_event_extra(tmp_path, "v2", reason="publish", interval_start="a", interval_end="b", run_id="r")
    assert extra["version"] == "v2" and extra["previous_version"] == "v1" and extra["model_version"] == "2"
    assert (extra["rows"], extra["users"], extra["gate_verdict"]) == (6, 3, "PASS")
    assert (extra["data_interval_start"], extra["data_interval_end"]) == ("a", "b")
    json.dumps(extra)  # plain JSON: Airflow stores it as the event's extra
    rollback(tmp_path)
    back = move_event_extra(tmp_path, "v1", reason="rollback", note="bad model")
    assert back["previous_version"] == "v2" and back["note"] == "bad model"
    assert back["data_interval_end"] == "2026-11-21T00:00:00+00:00"  # the served version's own interval
    assert move_event_extra(tmp_path, "v2", reason="publish") is None


def test_event_version_takes_the_newest_event():
    events = [SimpleNamespace(extra={"version": "v1"}, timestamp="2026-11-21T01:00:00"),
              SimpleNamespace(extra={"version": "v3"}, timestamp="2026-11-21T03:00:00"),
              {"extra": {"version": "v2"}, "timestamp": "2026-11-21T02:00:00"},
              SimpleNamespace(extra={}, timestamp="2026-11-21T04:00:00")]
    assert event_version(events) == "v3"
    assert event_version([]) is None


def test_consumer_counts_the_announced_version_not_current(tmp_path):
    root = tmp_path / "recs"
    _publish(root, "v1", "1")
    point_current(root, "v1")
    _publish(root, "v2", "2")
    point_current(root, "v2")
    out = summarize_version(root, "v1", tmp_path / "out")
    assert out["version"] == "v1" and out["model_version"] == "1"
    written = json.loads((tmp_path / "out" / "version=v1.json").read_text())
    assert written["counts"] == [{"source": "fallback", "rows": 2, "users": 1}, {"source": "model", "rows": 4, "users": 2}]
