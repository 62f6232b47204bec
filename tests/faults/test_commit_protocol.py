"""The commit protocol of the published tables under SIGKILL, on local disk and on S3 (a moto
server): a real subprocess runs one nightly publish (write, commit, retention) and is killed at
each named crash point (``$RECSYS_CRASH_AT``, :mod:`include.recsys.core.crashpoints`).

After every kill: CURRENT names a version that verifies (every listed file, sha256 included),
readers get it whole, no listed version fails verification, a rollback reaches the version
served before it, and a rerun converges to exactly the state of an uninterrupted run (same
CURRENT, same log chain, same versions) with no temp or staging leftovers.

Each test's docstring reads ``fault -> expected outcome``; ``tests/faults/list_faults.py``
turns them into docs/faults.md."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from include.recsys.core import crashpoints
from include.recsys.core.uri import is_remote
from include.recsys.errors import PublishError
from include.recsys.tables.current import history, point_current, read_current, rollback
from include.recsys.tables.layout import (
    LOCK,
    LOG_DIR,
    MANIFEST,
    STAGING_GRACE_S,
    STAGING_PREFIX,
)
from include.recsys.tables.manifest import verify_version
from include.recsys.tables.reader import RecommendationStore
from include.recsys.tables.retention import cleanup
from include.recsys.tables.storage import CONDITIONAL_ENV, OPTIONS_ENV, ObjectStore
from include.recsys.tables.versions import list_versions
from tests.faults import _helpers as h

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "recsys-crash"
# crash point -> the version served after the kill (the log append is the commit)
POINTS = {
    "after_first_part": "v1",
    "after_staged_manifest": "v1",
    "before_log_append": "v1",
    "after_log_append": "v2",
    "before_current_replace": "v2",
    "after_current_replace": "v2",
    "mid_retention": "v2",
}
LOCAL_ONLY = {"before_current_replace"}  # on S3 CURRENT is one PUT: the same as after_log_append


@pytest.fixture(scope="module")
def s3_options():
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    mp = pytest.MonkeyPatch()
    for k in list(os.environ):
        if k.startswith("AWS_") or k in (OPTIONS_ENV, CONDITIONAL_ENV):
            mp.delenv(k)
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with h.moto_s3(BUCKET) as opts:
        mp.setenv(OPTIONS_ENV, json.dumps(opts))
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        yield opts
        s3fs.S3FileSystem.clear_instance_cache()
    mp.undo()


def _root(backend: str, tmp_path: Path, request) -> str:
    if backend == "local":
        return str(tmp_path / "recs")
    request.getfixturevalue("s3_options")
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/recs"


def _child(root: str, *args: str, crash_at: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(crashpoints.ENV, None)
    if crash_at:
        env[crashpoints.ENV] = crash_at
    return subprocess.Popen(
        [sys.executable, "-m", "tests.faults._helpers", *args], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _kill_at(root: str, point: str) -> None:
    """Run one nightly publish of v2 in a subprocess that SIGKILLs itself at ``point``."""
    child = _child(root, "cycle", root, "v2", "1", crash_at=point)
    try:
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -9, f"not killed at {point} (rc {child.returncode}): {out}{err[-3000:]}"


def _clone(root: str, dest: str) -> str:
    """A copy of the whole table (to try a rollback without touching the original)."""
    if not is_remote(root):
        shutil.copytree(root, dest, ignore=shutil.ignore_patterns(LOCK))
        return dest
    src, dst = ObjectStore.open(root), ObjectStore.open(dest)
    src.fs.invalidate_cache()
    for key in src.fs.find(src.path):
        dst.write_bytes(key[len(src.path) + 1 :], src.fs.cat_file(key))
    return dest


def _names(root: str) -> list[str]:
    """Every file / object under the root, relative to it."""
    if not is_remote(root):
        return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file())
    store = ObjectStore.open(root)
    store.fs.invalidate_cache()
    return sorted(k[len(store.path) + 1 :] for k in store.fs.find(store.path))


def _state(root: str) -> dict:
    return {
        "current": read_current(root),
        "chain": [(e["seq"], e["parent"], e["version"], e["previous"]) for e in history(root)],
        "versions": [v["version"] for v in list_versions(root)],
    }


def _assert_consistent(root: str, served: str) -> None:
    """CURRENT names ``served``, which verifies and reads whole; every listed version verifies."""
    assert read_current(root) == served
    for v in list_versions(root):
        verify_version(root, v["version"], checksum=True)
    store = RecommendationStore(root, refresh_s=0)
    assert store.recommend("u3").items == [f"{served}:item{r}" for r in range(1, h.TOP_N + 1)]
    assert set(store.table()["model_version"]) == {served}


def _assert_no_leftovers(root: str) -> None:
    names = _names(root)
    strays = [n for n in names if n.endswith(".tmp") or n.startswith(STAGING_PREFIX)]
    assert not strays, strays
    assert all(re.fullmatch(r"\d{20}\.json", n.split("/", 1)[1]) for n in names if n.startswith(LOG_DIR))
    folders = {n.split("/", 1)[0] for n in names if n.startswith("version=")}
    assert all(f"{f}/{MANIFEST}" in names for f in folders), folders  # nothing half there


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """The state after v0, v1 and one uninterrupted nightly publish of v2 (keep_versions=1)."""
    root = str(tmp_path_factory.mktemp("reference") / "recs")
    h.publish(root, "v0")
    h.publish(root, "v1")
    h.cycle(root, "v2", "1")
    return _state(root)


@pytest.mark.parametrize(
    "point, backend",
    [(p, b) for p in POINTS for b in ("local", "s3") if not (b == "s3" and p in LOCAL_ONLY)],
)
def test_fault_sigkill_at_each_step_of_a_publish(backend, point, tmp_path, request, uninterrupted) -> None:
    """A publish (write, commit, retention) is SIGKILLed at each named crash point, on local
    disk and on S3 -> CURRENT names a version that verifies (the old one before the log append,
    the new one from it on), readers get it whole, no listed version fails verification, a
    half-deleted version is never listed nor rolled back to, a rollback reaches the version
    served before it, and a rerun converges to the state of an uninterrupted run with no temp or
    staging leftovers."""
    root = _root(backend, tmp_path, request)
    h.publish(root, "v0")
    h.publish(root, "v1")
    _kill_at(root, point)

    served = POINTS[point]
    _assert_consistent(root, served)
    if point == "mid_retention":  # v0 lost its manifest first: invisible, never served again
        assert "v0" not in [v["version"] for v in list_versions(root)]
        with pytest.raises(PublishError, match="v0 has no manifest"):
            rollback(root, to="v0")
    copy = _clone(root, str(tmp_path / "copy") if backend == "local" else f"{root}-copy")
    before = {"v1": "v0", "v2": "v1"}[served]
    assert rollback(copy) == before
    _assert_consistent(copy, before)

    h.cycle(root, "v2", "1")  # the task's retry
    assert _state(root) == uninterrupted
    _assert_consistent(root, "v2")
    _assert_no_leftovers(root)


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_fault_retention_runs_while_another_run_stages_its_version(backend, tmp_path, request) -> None:
    """One run publishes and applies retention (keep_versions=1) while another run's process
    is still writing the parts of its version -> the live run's staging folder (on S3 its
    manifest-less version folder) is left alone, the live run completes a version that
    verifies and can be served next."""
    root = _root(backend, tmp_path, request)
    h.publish(root, "v1")
    child = _child(root, "slow_write", root, "v3")
    try:
        line = child.stdout.readline()  # the first part is written; five more follow
        assert line.startswith("PART "), line + child.stderr.read()
        h.publish(root, "v2")
        assert cleanup(root, keep=1) == []  # v1 is the rollback target; v3 is live
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0 and out.strip().endswith("DONE"), err[-3000:]
    verify_version(root, "v3", checksum=True)
    assert point_current(root, "v3") is True
    _assert_consistent(root, "v3")
    assert [e["version"] for e in history(root)] == ["v1", "v2", "v3"]


def test_fault_killed_writer_staging_is_removed_only_after_the_grace_period(tmp_path) -> None:
    """A writer is SIGKILLed after its first part; retention runs at once and again a day
    later -> the first time its staging folder is kept (it could be a live run's), the second
    time it is removed; CURRENT never moves."""
    root = str(tmp_path / "recs")
    h.publish(root, "v1")
    child = _child(root, "cycle", root, "v2", "1", crash_at="after_first_part")
    child.communicate(timeout=120)
    assert child.returncode == -9
    staging = list(Path(root).glob(f"{STAGING_PREFIX}*"))
    assert [p.name for p in staging] == [f"{STAGING_PREFIX}v2"]
    t0 = time.time()
    assert cleanup(root, keep=1) == []
    h.backdate(staging[0], STAGING_GRACE_S + 1 + time.time() - t0)
    assert cleanup(root, keep=1) == [f"{STAGING_PREFIX}v2"]
    _assert_consistent(root, "v1")
