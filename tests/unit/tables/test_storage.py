"""Publishing and reading through fsspec on ``memory://``: the object-store code path of
``include.recsys.tables.versions`` / ``reader`` (no rename: manifest last, CURRENT one object written
last, one ``_log/<seq>.json`` commit per move created with a conditional write), with the same
guarantees and errors as on local disk."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import fsspec
import pandas as pd
import pytest

from include.recsys.cli.read import main
from include.recsys.config.settings import PipelineConfig
from include.recsys.core.uri import is_remote, normalize
from include.recsys.errors import PublishConflict, PublishError
from include.recsys.tables.current import history, point_current, read_current, rollback
from include.recsys.tables.layout import LOG_DIR, MANIFEST
from include.recsys.tables.manifest import read_manifest
from include.recsys.tables.reader import RecommendationStore
from include.recsys.tables.retention import cleanup
from include.recsys.tables.storage import OPTIONS_ENV, ObjectStore, storage_options
from include.recsys.tables.versions import (
    discard_staged,
    finalize_version,
    list_versions,
    read_version_table,
    write_part,
    write_version,
)
from tests.unit.tables.test_publish import _fallback, _table


@pytest.fixture
def root():
    """A fresh ``memory://`` root (the memory filesystem is process-global), removed after."""
    name = f"recs-{uuid.uuid4().hex[:8]}"
    yield f"memory://{name}/recommendations"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{name}"):
        fs.rm(f"/{name}", recursive=True)


def _objects(root: str) -> list[str]:
    store = ObjectStore.open(root)
    return sorted(p[len(store.path) + 1 :] for p in store.fs.find(store.path))


def _write(root, version: str):
    return write_version(root, version, _table(version), _fallback(version), {"model_version": version})


def _publish(root, version: str) -> bool:
    _write(root, version)
    return point_current(root, version)


# --- roots ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given, expected",
    [
        ("s3://bucket/prefix/", "s3://bucket/prefix"),
        (Path("s3://bucket/prefix"), "s3://bucket/prefix"),  # an URL someone wrapped in Path()
        ("memory://x", "memory://x"),
        ("file:///srv/recs", Path("/srv/recs")),
        ("/srv/recs", Path("/srv/recs")),
        ("data/recommendations", Path("data/recommendations")),
    ],
)
def test_normalize(given, expected) -> None:
    assert normalize(given) == expected
    assert is_remote(given) is isinstance(expected, str)


def test_config_root_is_url_or_path(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("RECSYS_DATA_DIR", str(tmp_path))
    assert PipelineConfig(recommendations_dir="s3://b/recs/").recommendations_root == "s3://b/recs"
    assert PipelineConfig(recommendations_dir=str(tmp_path / "r")).recommendations_root == tmp_path / "r"


def test_storage_options_from_env(monkeypatch) -> None:
    monkeypatch.setenv(OPTIONS_ENV, '{"endpoint_url": "http://127.0.0.1:9000"}')
    assert storage_options() == {"endpoint_url": "http://127.0.0.1:9000"}
    monkeypatch.setenv(OPTIONS_ENV, "{not json")
    with pytest.raises(ValueError, match="RECSYS_STORAGE_OPTIONS is not valid JSON"):
        storage_options()
    monkeypatch.setenv(OPTIONS_ENV, "[1]")
    with pytest.raises(ValueError, match="must be a JSON object"):
        storage_options()


def test_unknown_scheme_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="cannot open recommendations root 'nosuchproto://x'"):
        read_current("nosuchproto://x")


# --- the whole cycle ------------------------------------------------------------------------------


def test_publish_read_rollback_retention_cycle(root) -> None:
    assert read_current(root) is None and history(root) == [] and list_versions(root) == []
    folder = _write(root, "v1")
    assert str(folder) == f"{root}/version=v1" and (folder / MANIFEST).exists()
    assert read_current(root) is None  # written, not served
    assert point_current(root, "v1") is True
    assert point_current(root, "v1") is False  # idempotent
    assert read_current(root) == "v1"
    assert _objects(root) == [
        "CURRENT", "_log/00000000000000000001.json",
        "version=v1/_fallback.parquet", "version=v1/_manifest.json", "version=v1/part-00000.parquet",
    ]
    for v in ("v2", "v3", "v4"):
        assert _publish(root, v)
    h = history(root)
    assert [(e["version"], e["previous"]) for e in h] == [("v1", None), ("v2", "v1"), ("v3", "v2"), ("v4", "v3")]
    assert all(e["reason"] == "publish" and e["model_version"] == e["version"] for e in h)
    assert [v["version"] for v in list_versions(root)] == ["v1", "v2", "v3", "v4"]
    assert [v["current"] for v in list_versions(root)] == [False, False, False, True]

    store = RecommendationStore(root, refresh_s=0)
    r = store.recommend("u1", n=2)
    assert (r.version, r.source, r.items) == ("v4", "model", ["v4:item1", "v4:item2"])
    assert store.recommend("stranger", n=2).items == ["v4:pop1", "v4:pop2"]
    assert store.manifest()["version"] == "v4" and store.manifest()["files"][0]["path"] == "part-00000.parquet"
    assert len(store.table()) == 12 and store.recommend_many(["u1", "u2"], n=1)["item_id"].tolist() == ["v4:item1"] * 2

    assert rollback(root) == "v3"  # to the previous one
    assert store.recommend("u1", n=1).items == ["v3:item1"]  # the reader reopened
    assert history(root)[-1] | {"at": None} == {
        "at": None, "seq": 5, "parent": 4, "version": "v3", "previous": "v4", "reason": "rollback",
        "model_version": "v3", "data_window": None,
    }
    assert rollback(root, "v1") == "v1"
    # retention keeps the newest `keep`, CURRENT and the version served before it
    removed = cleanup(root, keep=1)
    assert removed == ["version=v2"]  # v4 is the newest
    assert [v["version"] for v in list_versions(root)] == ["v1", "v3", "v4"]
    assert not [o for o in _objects(root) if o.startswith("version=v2")]
    assert rollback(root) == "v3"


def test_sharded_parts_then_finalize(root) -> None:
    """The DAG's path: mapped shards each write a part, one task finalizes."""
    t = _table("v1").sort_values(["user_id", "rank"])
    parts = [
        write_part(root, "v1", 1, t[t.user_id == "u3"]),
        write_part(root, "v1", 0, t[t.user_id != "u3"]),
        write_part(root, "v1", 7, t[t.user_id == "u1"]),  # a stray from an earlier attempt
    ]
    assert list_versions(root) == []  # parts without manifest: incomplete, not listed
    with pytest.raises(PublishError, match="no manifest"):
        point_current(root, "v1")
    with pytest.raises(PublishError, match="part-00009.parquet of version v1 is missing"):
        finalize_version(root, "v1", parts[:2] + [{**parts[0], "path": "part-00009.parquet"}], _fallback("v1"), {})
    finalize_version(root, "v1", parts[:2], _fallback("v1"), {"model_version": "7"})
    m = read_manifest(root, "v1")
    assert [f["path"] for f in m["files"]] == ["part-00000.parquet", "part-00001.parquet"]
    assert (m["rows"], m["users"], m["model_version"]) == (12, 3, "7")
    assert "version=v1/part-00007.parquet" not in _objects(root)
    assert point_current(root, "v1")
    df = RecommendationStore(root).table()
    assert df["user_id"].tolist() == sorted(df["user_id"]) and len(df) == 12


def test_rewrite_of_unserved_version_drops_its_manifest_first(root) -> None:
    _publish(root, "v1")
    _write(root, "v2")
    discard_staged(root, "v2")  # a fresh plan of v2 (plan_shards)
    assert not [o for o in _objects(root) if o.startswith("version=v2")]
    write_part(root, "v2", 0, _table("v2"))
    assert "version=v2/_manifest.json" not in _objects(root)  # incomplete until finalized
    discard_staged(root, "v1")  # the served version is never touched
    assert "version=v1/_manifest.json" in _objects(root)
    with pytest.raises(PublishError, match="served by CURRENT"):
        write_version(root, "v1", _table("v1"), _fallback("v1"), {})
    with pytest.raises(PublishError, match="served by CURRENT"):
        write_part(root, "v1", 0, _table("v1"))
    assert RecommendationStore(root).recommend("u1", 1).items == ["v1:item1"]


def test_failed_write_leaves_no_version(root, monkeypatch) -> None:
    """A write that fails after its parts are stored removes them (a SIGKILLed one leaves an
    incomplete folder: never listed nor served, removed by cleanup)."""

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("include.recsys.tables.versions._finalize_remote", disk_full)
    with pytest.raises(OSError, match="No space left"):
        _write(root, "v1")
    assert not [o for o in _objects(root) if o.startswith("version=v1")]
    monkeypatch.undo()
    write_part(root, "v2", 0, _table("v2"))  # a killed (or a live) writer's part
    assert list_versions(root) == []
    assert cleanup(root, keep=5) == []  # written just now: maybe a live run's, kept
    assert cleanup(root, keep=5, staging_grace_s=0) == ["version=v2"]  # abandoned
    assert _objects(root) == []


# --- compare-and-swap ------------------------------------------------------------------------------


def test_compare_and_swap(root) -> None:
    _write(root, "v1")
    _write(root, "v2")
    assert point_current(root, "v1", expected_previous=None)
    with pytest.raises(PublishConflict, match="CURRENT is 'v1', expected None"):
        point_current(root, "v2", expected_previous=None)
    assert point_current(root, "v2", expected_previous="v1")
    assert read_current(root) == "v2"


def test_concurrent_first_publish_has_one_winner(root) -> None:
    versions = [f"v{i}" for i in range(6)]
    for v in versions:
        _write(root, v)
    results: dict[str, object] = {}
    barrier = threading.Barrier(len(versions))

    def go(v: str) -> None:
        barrier.wait()
        try:
            results[v] = point_current(root, v, expected_previous=None)
        except PublishConflict as exc:
            results[v] = exc

    threads = [threading.Thread(target=go, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [v for v, r in results.items() if r is True]
    assert len(winners) == 1 and read_current(root) == winners[0]
    assert [e["version"] for e in history(root)] == winners


def test_log_moved_between_read_and_commit_is_a_conflict(root, monkeypatch) -> None:
    """Another publisher commits after this one read the log: its create of the same entry
    number must lose (compare-and-swap: PublishConflict); without an expectation it commits
    after the winner, as the local lock would order them."""
    from include.recsys.tables import commitlog

    for v in ("v1", "v2", "v3", "v4"):
        _write(root, v)
    point_current(root, "v1")
    real = commitlog.tip

    def read_then_someone_else_publishes(r):
        got = real(r)
        monkeypatch.setattr(commitlog, "tip", real)
        point_current(root, "v3")
        return got

    monkeypatch.setattr(commitlog, "tip", read_then_someone_else_publishes)
    with pytest.raises(PublishConflict, match="another publish committed first"):
        point_current(root, "v2", expected_previous="v1")
    assert read_current(root) == "v3"
    assert [e["version"] for e in history(root)] == ["v1", "v3"]
    other = iter(["v2"])

    def read_then_v2_is_published(r):
        got = real(r)
        monkeypatch.setattr(commitlog, "tip", real)
        point_current(root, next(other))
        return got

    monkeypatch.setattr(commitlog, "tip", read_then_v2_is_published)
    assert point_current(root, "v4") is True  # lost entry 3 to v2, committed as 4
    assert [(e["version"], e["previous"], e["parent"]) for e in history(root)] == [
        ("v1", None, None), ("v3", "v1", 1), ("v2", "v3", 2), ("v4", "v2", 3),
    ]
    assert read_current(root) == "v4"


# --- bad input: the same clear errors as on local disk ------------------------------------------


def test_missing_current(root, capsys) -> None:
    store = RecommendationStore(root)
    with pytest.raises(LookupError, match="nothing is published under memory://.* yet"):
        store.recommend("u1")
    assert main(["--root", root, "user", "u1"]) == 1
    assert "error: nothing is published" in capsys.readouterr().err


def test_corrupt_current(root, capsys) -> None:
    _publish(root, "v1")
    store = ObjectStore.open(root)
    store.write_bytes("CURRENT", b"\x00garbage\xff\n")
    # the log is the truth: the reader serves its newest commit and repairs CURRENT
    assert RecommendationStore(root).recommend("u1").version == "v1"
    assert store.read_bytes("CURRENT") == b"v1\n"
    # without a log (a CURRENT written by hand) a corrupt CURRENT is a clear error
    store.delete(LOG_DIR, recursive=True)
    store.write_bytes("CURRENT", b"\x00garbage\xff\n")
    with pytest.raises(LookupError, match="CURRENT under memory://.* is corrupt"):
        RecommendationStore(root).recommend("u1")
    assert main(["--root", root, "user", "u1", "--json"]) == 1
    err = capsys.readouterr().err
    assert "is corrupt" in err and "Traceback" not in err


def test_version_without_manifest(root, capsys) -> None:
    _publish(root, "v1")
    store = ObjectStore.open(root)
    store.delete("version=v1/_manifest.json")
    with pytest.raises(PublishError, match="version v1 has no manifest"):
        RecommendationStore(root).recommend("u1")
    assert list_versions(root) == []
    assert main(["--root", root, "manifest"]) == 1
    assert "has no manifest" in capsys.readouterr().err
    store.write_bytes("version=v1/_manifest.json", b"{truncated")
    with pytest.raises(PublishError, match="manifest of version v1 is corrupt"):
        read_manifest(root, "v1")


def test_reader_refresh_interval(root) -> None:
    """On an object store CURRENT is re-read at most every refresh_s seconds."""
    _publish(root, "v1")
    _write(root, "v2")
    now = [1000.0]  # a clock the test steps: independent of how long the machine has been up
    lazy = RecommendationStore(root, refresh_s=3600, clock=lambda: now[0])
    eager = RecommendationStore(root, refresh_s=0)
    assert lazy.recommend("u1", 1).version == eager.recommend("u1", 1).version == "v1"
    point_current(root, "v2")
    assert eager.recommend("u1", 1).version == "v2"
    assert lazy.recommend("u1", 1).version == "v1"  # within its refresh interval
    now[0] += 3599.0
    assert lazy.recommend("u1", 1).version == "v1"  # one second short of the interval
    now[0] += 1.0  # the interval elapsed
    assert lazy.recommend("u1", 1).version == "v2"


def test_cli_versions_and_rollback(root, capsys) -> None:
    _publish(root, "v1")
    _publish(root, "v2")
    assert main(["--root", root, "versions", "--json"]) == 0
    assert '"version": "v2"' in capsys.readouterr().out
    assert main(["--root", root, "rollback"]) == 0
    assert capsys.readouterr().out.strip() == "CURRENT -> v1"
    assert read_current(root) == "v1"


def test_http_endpoint_on_object_store(root) -> None:
    from fastapi.testclient import TestClient

    from include.recsys.tables.serve import create_app

    client = TestClient(create_app(root, no_auth=True))
    assert client.get("/health").status_code == 503
    _publish(root, "v1")
    assert client.get("/health").json() == {"status": "ok", "version": "v1"}
    body = client.get("/recommendations/u2", params={"n": 2}).json()
    assert body["version"] == "v1" and [i["item_id"] for i in body["items"]] == ["v1:item1", "v1:item2"]


def test_read_version_table_local_and_remote(root, tmp_path) -> None:
    local = write_version(tmp_path / "recs", "v1", _table("v1"), _fallback("v1"), {})
    remote = _write(root, "v1")
    a = read_version_table(local)
    b = read_version_table(str(remote))
    pd.testing.assert_frame_equal(
        a.sort_values(["user_id", "rank"], ignore_index=True), b.sort_values(["user_id", "rank"], ignore_index=True)
    )


def test_freshness_reads_the_log_on_an_object_store(root) -> None:
    import json
    from datetime import datetime, timedelta, timezone

    from include.recsys.stages.freshness_check import _should_alert
    from include.recsys.tables import freshness

    _publish(root, "v1")
    store = ObjectStore.open(root)
    name = f"{LOG_DIR}/{1:020d}.json"
    entry = json.loads(store.read_bytes(name))
    now = datetime(2026, 11, 23, 7, 0, tzinfo=timezone.utc)
    entry["at"] = (now - timedelta(hours=50)).isoformat()
    store.write_bytes(name, json.dumps(entry).encode())  # backdated (a commit is never edited in production)
    s = freshness.FreshnessSettings(max_age_hours=30, deadline_utc=None, realert_hours=6)
    res = freshness.check(root, s, now)
    assert res.current == "v1" and res.codes == ["too_old"] and 49.9 < res.age_hours < 50.1
    assert _should_alert(root, res, s) is True  # the alert state lives beside the table
    assert store.exists(freshness.STATE_FILE)
    assert _should_alert(root, res, s) is False  # once, not every hour
