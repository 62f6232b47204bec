"""Unit tests for ``include.recsys.tables.versions``: versions, manifest, CURRENT, cleanup, rollback."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

import numpy as np
import pandas as pd
import pytest

from include.recsys.core.io import file_sha256
from include.recsys.errors import PublishError, StaleData
from include.recsys.tables.current import history, point_current, read_current, rollback
from include.recsys.tables.layout import (
    LOG_DIR,
    SCHEMA_VERSION,
    STAGING_GRACE_S,
    TABLE_COLUMNS,
    version_dir,
)
from include.recsys.tables.manifest import read_manifest, verify_version
from include.recsys.tables.reader import RecommendationStore
from include.recsys.tables.retention import cleanup
from include.recsys.tables.versions import list_versions, write_version

USERS = ["u1", "u2", "u3"]
TOP_N = 4


def _table(tag: str, users=USERS, n: int = TOP_N) -> pd.DataFrame:
    """n rows per user; every item id carries the version tag so a read can tell its version."""
    rows = [
        (u, r, f"{tag}:item{r}", float(n - r), "model", "recsys_als", tag)
        for u in users
        for r in range(1, n + 1)
    ]
    df = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    df["rank"] = df["rank"].astype(np.int16)
    df["score"] = df["score"].astype(np.float32)
    return df.sample(frac=1.0, random_state=0)  # write_version must sort it


def _fallback(tag: str, n: int = 3) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rank": np.arange(1, n + 1, dtype=np.int16),
            "item_id": [f"{tag}:pop{r}" for r in range(1, n + 1)],
            "score": np.linspace(1.0, 0.5, n).astype(np.float32),
        }
    )


def _write(root, version: str, **kw):
    return write_version(
        root, version, _table(version), _fallback(version), {"model_version": version, **kw}
    )


def _publish(root, version: str) -> bool:
    _write(root, version)
    return point_current(root, version)


def _age(folder, seconds: float) -> None:
    """Backdate a folder and its files by ``seconds`` (mtime), as if last written then."""
    t = time.time() - seconds
    for p in [folder, *folder.iterdir()]:
        os.utime(p, (t, t))


# --- write_version / point_current / read_current ------------------------------------------


def test_write_point_read(tmp_path) -> None:
    root = tmp_path / "recs"
    assert read_current(root) is None
    folder = _write(root, "v1", model_name="recsys_als", extra={"a": 1})
    assert folder == version_dir(root, "v1") and folder.name == "version=v1"
    assert read_current(root) is None  # written, not served
    assert point_current(root, "v1") is True
    assert read_current(root) == "v1"
    assert (root / "CURRENT").read_text() == "v1\n"
    assert not list(root.glob(".CURRENT*")) and not list(root.glob(".staging-*"))
    h = history(root)
    assert len(h) == 1
    assert h[0]["version"] == "v1" and h[0]["previous"] is None
    assert h[0]["reason"] == "publish" and h[0]["model_version"] == "v1"

    # one file read on its own (a list of paths would make pyarrow add a hive "version" column)
    table = pd.concat([pd.read_parquet(f) for f in sorted(folder.glob("part-*.parquet"))])
    assert list(table.columns) == TABLE_COLUMNS
    assert list(zip(table["user_id"], table["rank"])) == [(u, r) for u in USERS for r in range(1, TOP_N + 1)]
    fb = pd.read_parquet(folder / "_fallback.parquet")
    assert fb["item_id"].tolist() == ["v1:pop1", "v1:pop2", "v1:pop3"]


def test_manifest_written(tmp_path) -> None:
    root = tmp_path / "recs"
    folder = write_version(
        root, "v1", _table("v1"), _fallback("v1"), {"model_version": "7", "extra": {"a": 1}},
        rows_per_part=5, row_group_rows=2,
    )
    m = read_manifest(root, "v1")
    assert m == json.loads((folder / "_manifest.json").read_text())
    assert m["version"] == "v1" and m["schema_version"] == SCHEMA_VERSION
    assert m["model_version"] == "7" and m["extra"] == {"a": 1}
    assert m["columns"] == TABLE_COLUMNS
    assert m["rows"] == 12 and m["users"] == 3
    assert pd.Timestamp(m["created_at"]).tzinfo is not None
    # 12 rows (3 users x 4) in parts of ~5 rows, cut at user boundaries: a user never spans
    # two part files -> parts of 8 and 4 rows; checksums match the files
    assert [f["path"] for f in m["files"]] == ["part-00000.parquet", "part-00001.parquet"]
    assert [f["rows"] for f in m["files"]] == [8, 4]
    users_per_part = [set(pd.read_parquet(folder / f["path"])["user_id"]) for f in m["files"]]
    assert not set.intersection(*users_per_part)
    for f in m["files"]:
        assert f["sha256"] == file_sha256(folder / f["path"])
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["_manifest.json", "_fallback.parquet", *[f["path"] for f in m["files"]]]
    )


def test_write_version_rejects_missing_columns(tmp_path) -> None:
    with pytest.raises(PublishError, match="model_version"):
        write_version(tmp_path, "v1", _table("v1").drop(columns="model_version"), _fallback("v1"), {})
    assert not version_dir(tmp_path, "v1").exists()


def test_rewrite_of_served_version_refused(tmp_path) -> None:
    _publish(tmp_path, "v1")
    before = read_manifest(tmp_path, "v1")
    with pytest.raises(PublishError, match="served"):
        write_version(tmp_path, "v1", _table("other"), _fallback("other"), {})
    assert read_manifest(tmp_path, "v1") == before
    assert not list(tmp_path.glob(".staging-*"))


def test_rewrite_of_unserved_version_replaces_it(tmp_path) -> None:
    _write(tmp_path, "v1")
    write_version(tmp_path, "v1", _table("retry", users=["u9"]), _fallback("retry"), {"model_version": "r"})
    m = read_manifest(tmp_path, "v1")
    assert m["model_version"] == "r" and m["users"] == 1
    assert len(list(tmp_path.glob("version=*"))) == 1


def test_point_current_refuses_incomplete_version(tmp_path) -> None:
    _publish(tmp_path, "v1")
    broken = version_dir(tmp_path, "v2")
    broken.mkdir()
    _table("v2").to_parquet(broken / "part-00000.parquet")  # data but no manifest
    with pytest.raises(PublishError, match="no manifest"):
        point_current(tmp_path, "v2")
    with pytest.raises(PublishError):
        point_current(tmp_path, "never-written")
    assert read_current(tmp_path) == "v1"
    assert len(history(tmp_path)) == 1


def test_second_point_current_is_a_no_op(tmp_path) -> None:
    _write(tmp_path, "v1")
    assert point_current(tmp_path, "v1") is True
    mtime = (tmp_path / "CURRENT").stat().st_mtime_ns
    assert point_current(tmp_path, "v1") is False
    assert len(history(tmp_path)) == 1
    assert (tmp_path / "CURRENT").stat().st_mtime_ns == mtime


def test_list_versions_oldest_first_with_current_flag(tmp_path) -> None:
    for v in ("b", "a", "c"):  # creation order differs from name order
        _write(tmp_path, v)
    point_current(tmp_path, "a")
    version_dir(tmp_path, "zz-incomplete").mkdir()
    vs = list_versions(tmp_path)
    assert [v["version"] for v in vs] == ["b", "a", "c"]
    assert [v["current"] for v in vs] == [False, True, False]
    assert vs[0]["rows"] == 12 and vs[0]["users"] == 3 and vs[0]["model_version"] == "b"


# --- cleanup --------------------------------------------------------------------------------


def test_cleanup(tmp_path) -> None:
    _publish(tmp_path, "v1")
    _publish(tmp_path, "v2")  # CURRENT v2, predecessor v1: both old, both protected
    for v in ("v3", "v4", "v5", "v6"):
        _write(tmp_path, v)
    (tmp_path / ".staging-v7-999").mkdir()
    (tmp_path / ".staging-v7-999" / "part-00000.parquet").write_bytes(b"half")
    _age(tmp_path / ".staging-v7-999", STAGING_GRACE_S + 60)  # abandoned a day ago
    (tmp_path / ".staging-v8").mkdir()  # a live run's: written to just now
    (tmp_path / ".staging-v8" / "part-00000.parquet").write_bytes(b"being written")
    incomplete = version_dir(tmp_path, "v0")
    incomplete.mkdir()
    (incomplete / "part-00000.parquet").write_bytes(b"half")

    removed = cleanup(tmp_path, keep=2)
    assert sorted(removed) == sorted([".staging-v7-999", "version=v0", "version=v3", "version=v4"])
    left = sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and p.name != LOG_DIR)
    assert left == [".staging-v8", "version=v1", "version=v2", "version=v5", "version=v6"]
    assert cleanup(tmp_path, keep=2, staging_grace_s=0) == [".staging-v8"]
    assert read_current(tmp_path) == "v2"
    assert cleanup(tmp_path, keep=2) == []  # idempotent


def test_cleanup_keep_one_still_keeps_current_and_predecessor(tmp_path) -> None:
    for v in ("v1", "v2", "v3"):
        _publish(tmp_path, v)
    assert cleanup(tmp_path, keep=1) == ["version=v1"]
    assert [v["version"] for v in list_versions(tmp_path)] == ["v2", "v3"]
    # after a rollback to v2 the newest (v3) is the predecessor: still protected
    rollback(tmp_path)
    _write(tmp_path, "v4")
    assert cleanup(tmp_path, keep=1) == []
    assert [v["version"] for v in list_versions(tmp_path)] == ["v2", "v3", "v4"]


# --- rollback -------------------------------------------------------------------------------


def test_rollback_moves_current_back_and_records_it(tmp_path) -> None:
    for v in ("v1", "v2", "v3"):
        _publish(tmp_path, v)
    assert rollback(tmp_path) == "v2"
    assert read_current(tmp_path) == "v2"
    last = history(tmp_path)[-1]
    assert (last["version"], last["previous"], last["reason"]) == ("v2", "v3", "rollback")
    assert len(history(tmp_path)) == 4
    assert rollback(tmp_path, to="v1") == "v1"
    assert read_current(tmp_path) == "v1"
    assert history(tmp_path)[-1]["previous"] == "v2"


def test_rollback_without_previous_refused(tmp_path) -> None:
    with pytest.raises(PublishError, match="no previous version"):
        rollback(tmp_path)
    _publish(tmp_path, "v1")
    with pytest.raises(PublishError, match="no previous version"):
        rollback(tmp_path)
    assert read_current(tmp_path) == "v1"


def test_rollback_to_incomplete_version_refused(tmp_path) -> None:
    _publish(tmp_path, "v1")
    with pytest.raises(PublishError):
        rollback(tmp_path, to="gone")
    assert read_current(tmp_path) == "v1"


# --- readers during publishes ---------------------------------------------------------------


def test_reader_sees_exactly_one_version_per_read_during_publishes(tmp_path) -> None:
    root = tmp_path / "recs"
    store = RecommendationStore(root)
    n_publishes = 20
    _publish(root, "v000")
    done = threading.Event()
    errors: list[BaseException] = []
    seen_versions: list[str] = []

    def reader() -> None:
        try:
            while not done.is_set():
                rows = store.for_user("u2")
                tags = {i.split(":")[0] for i in rows["item_id"]}
                assert len(tags) == 1, tags
                assert rows["rank"].tolist() == list(range(1, TOP_N + 1))
                assert set(rows["source"]) == {"model"}
                fb = store.for_user("nobody")
                assert len({i.split(":")[0] for i in fb["item_id"]}) == 1
                assert set(fb["source"]) == {"fallback"}
                table = store.table()
                assert table["model_version"].nunique() == 1 and len(table) == len(USERS) * TOP_N
                seen_versions.append(tags.pop())
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        for j in range(1, n_publishes + 1):
            assert _publish(root, f"v{j:03d}")
            time.sleep(0.003)
    finally:
        done.set()
        t.join(timeout=30)
    assert not t.is_alive()
    assert not errors, repr(errors[0])
    assert seen_versions, "the reader never completed a read"
    assert seen_versions == sorted(seen_versions)  # CURRENT only moves forward
    assert read_current(root) == f"v{n_publishes:03d}"
    assert len(history(root)) == n_publishes + 1


def test_parts_are_sorted_by_user_then_rank_whatever_order_they_come_in() -> None:
    from include.recsys.tables.versions import _sorted_by_user_rank

    ordered = pd.DataFrame({"user_id": ["a", "a", "b", "c", "c"], "rank": [1, 2, 1, 1, 2], "x": range(5)})
    pd.testing.assert_frame_equal(_sorted_by_user_rank(ordered), ordered)
    shuffled = ordered.iloc[[4, 2, 0, 3, 1]]
    pd.testing.assert_frame_equal(_sorted_by_user_rank(shuffled), ordered)
    ranks_swapped = ordered.iloc[[1, 0, 2, 3, 4]]  # users in order, ranks not
    pd.testing.assert_frame_equal(_sorted_by_user_rank(ranks_swapped), ordered)


# --- the commit log, verification, data order ----------------------------------------------


def _write_window(root, version: str, end: str | None):
    extra = {"data_window": {"start": "2026-10-01T00:00:00+00:00", "end": end}} if end else {}
    return write_version(root, version, _table(version), _fallback(version), {"model_version": version, **extra})


def test_log_entries_are_numbered_immutable_and_chained(tmp_path) -> None:
    from include.recsys.errors import WriteConflict
    from include.recsys.tables import commitlog

    _write_window(tmp_path, "v1", "2026-11-20T00:00:00+00:00")
    _write_window(tmp_path, "v2", "2026-11-21T00:00:00+00:00")
    point_current(tmp_path, "v1")
    point_current(tmp_path, "v2", reason="publish by run-2")
    names = sorted(p.name for p in (tmp_path / LOG_DIR).iterdir())
    assert names == ["00000000000000000001.json", "00000000000000000002.json"]
    e1, e2 = history(tmp_path)
    assert (e1["seq"], e1["parent"], e1["version"], e1["previous"]) == (1, None, "v1", None)
    assert (e2["seq"], e2["parent"], e2["version"], e2["previous"]) == (2, 1, "v2", "v1")
    assert e2["reason"] == "publish by run-2" and e2["model_version"] == "v2"
    assert e2["data_window"]["end"] == "2026-11-21T00:00:00+00:00" and "override" not in e2
    with pytest.raises(WriteConflict):  # a number is taken once, by one writer
        commitlog.append(tmp_path, {**e2, "version": "v1"})
    assert history(tmp_path)[-1] == e2 and read_current(tmp_path) == "v2"


def test_verify_version_names_the_missing_or_changed_file(tmp_path) -> None:
    folder = _write(tmp_path, "v1")
    m = verify_version(tmp_path, "v1", checksum=True)
    assert all(f["size"] == (folder / f["path"]).stat().st_size for f in m["files"])
    assert m["fallback"]["path"] == "_fallback.parquet" and m["fallback"]["size"] > 0
    part = folder / m["files"][0]["path"]
    data = part.read_bytes()
    part.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, other content
    verify_version(tmp_path, "v1")  # sizes only: not seen
    with pytest.raises(PublishError, match="v1 does not verify: the sha256 of part-00000.parquet"):
        verify_version(tmp_path, "v1", checksum=True)
    with pytest.raises(PublishError, match="the sha256 of part-00000.parquet"):  # locally a commit checks it
        point_current(tmp_path, "v1")
    part.write_bytes(data[:100])
    with pytest.raises(PublishError, match=rf"part-00000.parquet has 100 bytes, its manifest says {len(data)}"):
        point_current(tmp_path, "v1")
    part.write_bytes(data)
    (folder / "_fallback.parquet").unlink()
    with pytest.raises(PublishError, match="v1 does not verify: _fallback.parquet is missing"):
        point_current(tmp_path, "v1")
    assert read_current(tmp_path) is None and history(tmp_path) == []


def test_rollback_refuses_a_version_that_does_not_verify(tmp_path) -> None:
    _publish(tmp_path, "v1")
    _publish(tmp_path, "v2")
    (version_dir(tmp_path, "v1") / "part-00000.parquet").unlink()
    with pytest.raises(PublishError, match="v1 does not verify: part-00000.parquet is missing"):
        rollback(tmp_path)
    assert read_current(tmp_path) == "v2" and len(history(tmp_path)) == 2


def test_older_data_is_not_served_unless_overridden_and_rollback_is_exempt(tmp_path) -> None:
    _write_window(tmp_path, "new", "2026-11-21T00:00:00+00:00")
    _write_window(tmp_path, "old", "2026-11-18T00:00:00+00:00")
    _write_window(tmp_path, "same", "2026-11-21T00:00:00Z")  # the same end, another spelling
    _write_window(tmp_path, "nowindow", None)
    point_current(tmp_path, "new")
    with pytest.raises(StaleData) as info:
        point_current(tmp_path, "old")
    assert str(info.value) == (
        "stale: serving data up to 2026-11-21T00:00:00+00:00, this run's data ends at "
        "2026-11-18T00:00:00+00:00; not served"
    )
    assert (info.value.served_end, info.value.run_end) == ("2026-11-21T00:00:00+00:00", "2026-11-18T00:00:00+00:00")
    assert isinstance(info.value, PublishError)
    assert read_current(tmp_path) == "new" and len(history(tmp_path)) == 1

    assert point_current(tmp_path, "old", allow_older_data=True) is True
    assert history(tmp_path)[-1]["override"] == "allow_older_data"
    assert point_current(tmp_path, "new") is True  # newer data: no override needed
    assert "override" not in history(tmp_path)[-1]
    assert rollback(tmp_path) == "old"  # a rollback is the normal way back: exempt
    assert "override" not in history(tmp_path)[-1]
    point_current(tmp_path, "same")  # not older
    point_current(tmp_path, "nowindow")  # nothing to compare
    point_current(tmp_path, "old")  # the served one has no window: nothing to compare
    assert read_current(tmp_path) == "old"


def test_current_behind_the_log_is_rolled_forward_by_a_reader(tmp_path) -> None:
    """A publish died after its log entry, before CURRENT: the commit stands."""
    from include.recsys.tables import commitlog

    _publish(tmp_path, "v1")
    _write(tmp_path, "v2")
    store = RecommendationStore(tmp_path)
    assert store.recommend("u1").version == "v1"
    commitlog.append(tmp_path, {"seq": 2, "parent": 1, "version": "v2", "previous": "v1", "reason": "publish"})
    assert (tmp_path / "CURRENT").read_text() == "v1\n"
    assert store.recommend("u1").version == "v2"  # the reader noticed the new log entry
    assert (tmp_path / "CURRENT").read_text() == "v2\n"  # and rolled CURRENT forward
    assert point_current(tmp_path, "v2") is False  # the rerun: nothing left to do
    assert [e["version"] for e in history(tmp_path)] == ["v1", "v2"]
    assert rollback(tmp_path) == "v1"


def test_a_commit_whose_version_does_not_verify_is_superseded(tmp_path) -> None:
    from include.recsys.tables import commitlog

    _publish(tmp_path, "v1")
    _write(tmp_path, "v2")
    _write(tmp_path, "v3")
    commitlog.append(tmp_path, {"seq": 2, "parent": 1, "version": "v2", "previous": "v1", "reason": "publish"})
    (version_dir(tmp_path, "v2") / "part-00000.parquet").unlink()  # then its files went away
    assert read_current(tmp_path) == "v1"  # readers get the last version that verifies
    assert (tmp_path / "CURRENT").read_text() == "v1\n"
    assert point_current(tmp_path, "v3") is True  # the next writer records the repair first
    repair, last = history(tmp_path)[-2:]
    assert (repair["seq"], repair["version"], repair["previous"]) == (3, "v1", "v2")
    assert repair["reason"].startswith("repair: version v2 does not verify: part-00000.parquet is missing")
    assert (last["seq"], last["parent"], last["version"], last["previous"]) == (4, 3, "v3", "v1")
    assert rollback(tmp_path) == "v1"


def test_temp_files_of_killed_publishes_are_removed_by_the_next_publish(tmp_path) -> None:
    _publish(tmp_path, "v1")
    (tmp_path / ".CURRENT.4242.tmp").write_text("v9\n")
    (tmp_path / LOG_DIR / ".00000000000000000002.json.4242.ab.tmp").write_text("{")
    _write(tmp_path, "v2")
    assert point_current(tmp_path, "v2") is True
    assert not list(tmp_path.glob(".CURRENT*")) and not list((tmp_path / LOG_DIR).glob(".*"))


def test_retention_deletes_the_manifest_first(tmp_path, monkeypatch) -> None:
    for v in ("v1", "v2", "v3"):
        _publish(tmp_path, v)

    def killed(path, *a, **kw):
        raise KeyboardInterrupt("killed mid-retention")

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        cleanup(tmp_path, keep=1)
    monkeypatch.undo()
    assert list(version_dir(tmp_path, "v1").glob("part-*"))  # its files are still there,
    assert [v["version"] for v in list_versions(tmp_path)] == ["v2", "v3"]  # but it is invisible
    with pytest.raises(PublishError, match="v1 has no manifest"):
        rollback(tmp_path, to="v1")
    assert cleanup(tmp_path, keep=1) == ["version=v1"]
