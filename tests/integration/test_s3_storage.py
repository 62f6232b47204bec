"""Publishing and reading against a real S3 protocol server: moto's ThreadedMotoServer on
127.0.0.1 with s3fs (the client the library uses for ``s3://`` roots), credentials and endpoint
from the standard ``AWS_*`` variables. Covers the whole publish/read/rollback/retention cycle,
S3 conditional writes (If-Match / If-None-Match) as compare-and-swap, bad input (missing
bucket, unreachable endpoint, missing/corrupt CURRENT, version without manifest), and the
pipeline's own stages publishing to the bucket."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import uuid
from datetime import datetime, timezone

import pytest

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from include.recsys.cli.read import main
from include.recsys.errors import (
    PublishConflict,
    PublishError,
    StorageError,
    WriteConflict,
)
from include.recsys.tables.current import history, point_current, read_current, rollback
from include.recsys.tables.layout import LOG_DIR
from include.recsys.tables.manifest import read_manifest
from include.recsys.tables.reader import RecommendationStore
from include.recsys.tables.retention import cleanup
from include.recsys.tables.storage import CONDITIONAL_ENV, OPTIONS_ENV, ObjectStore
from include.recsys.tables.versions import list_versions, write_version
from tests.unit.tables.test_publish import _fallback, _table  # noqa: E402

BUCKET = "recsys-tables"


def _clear_s3fs_cache() -> None:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free local port, the AWS_* env pointing at it, one bucket."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    mp = pytest.MonkeyPatch()
    for k in list(os.environ):
        if k.startswith("AWS_") or k in (OPTIONS_ENV, CONDITIONAL_ENV):
            mp.delenv(k)
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    mp.setenv("AWS_ENDPOINT_URL", endpoint)
    _clear_s3fs_cache()
    import boto3

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    yield endpoint
    _clear_s3fs_cache()
    mp.undo()
    server.stop()


@pytest.fixture
def root(s3) -> str:
    return f"s3://{BUCKET}/t-{uuid.uuid4().hex[:8]}/recommendations"


def _keys(root: str) -> list[str]:
    store = ObjectStore.open(root)
    store.fs.invalidate_cache()
    return sorted(p[len(store.path) + 1 :] for p in store.fs.find(store.path))


def _write(root: str, version: str):
    return write_version(root, version, _table(version), _fallback(version), {"model_version": version})


def _publish(root: str, version: str) -> bool:
    _write(root, version)
    return point_current(root, version)


def test_cycle_on_s3(root) -> None:
    assert read_current(root) is None
    for v in ("v1", "v2", "v3"):
        assert _publish(root, v)
    assert _keys(root)[:4] == ["CURRENT", *(f"_log/{i:020d}.json" for i in (1, 2, 3))]
    assert [(e["version"], e["previous"]) for e in history(root)] == [("v1", None), ("v2", "v1"), ("v3", "v2")]
    store = RecommendationStore(root, refresh_s=0)
    assert store.recommend("u1", 2).items == ["v3:item1", "v3:item2"]
    assert store.recommend("nobody", 1).source == "fallback"
    assert rollback(root) == "v2"
    assert store.recommend("u1", 1).items == ["v2:item1"]  # reopened when CURRENT moved
    assert cleanup(root, keep=1) == ["version=v1"]  # v2 served, v3 the one before it
    assert [v["version"] for v in list_versions(root)] == ["v2", "v3"]
    assert not [k for k in _keys(root) if k.startswith("version=v1")]
    # the table is plain Parquet under the prefix: pandas reads it with the same options
    import pandas as pd

    df = pd.read_parquet(f"{root}/version=v2/part-00000.parquet")
    assert len(df) == 12 and set(df["model_version"]) == {"v2"}


def test_conditional_put_loses_to_a_concurrent_publish(root, monkeypatch) -> None:
    """Two publishers read the same log head; the second's create of the same entry number
    carries If-None-Match: * and S3 refuses it (412): PublishConflict, CURRENT and the log name
    the winner only. A stale If-Match on CURRENT (412) makes a writer follow the log instead."""
    from include.recsys.tables import commitlog

    for v in ("v1", "v2", "v3"):
        _write(root, v)
    point_current(root, "v1")
    real = commitlog.tip

    def stale_read(r):
        got = real(r)
        monkeypatch.setattr(commitlog, "tip", real)
        point_current(root, "v3")  # the other publisher wins meanwhile
        return got

    monkeypatch.setattr(commitlog, "tip", stale_read)
    with pytest.raises(PublishConflict, match="another publish committed first"):
        point_current(root, "v2", expected_previous="v1")
    assert read_current(root) == "v3"
    assert [e["version"] for e in history(root)] == ["v1", "v3"]
    store = ObjectStore.open(root)
    _, tag = store.read_tagged("CURRENT")
    store.write_bytes("CURRENT", b"v1\n")  # CURRENT changes: the ETag read above is stale
    with pytest.raises(WriteConflict):
        store.write_bytes("CURRENT", b"v2\n", if_match=tag)
    assert read_current(root) == "v3" and store.read_bytes("CURRENT") == b"v3\n"  # follows the log


def _race(root: str, versions: list[str], expected_previous) -> list[str]:
    """All ``versions`` try to become CURRENT at once (compare-and-swap); returns the winners."""
    results: dict[str, object] = {}
    errors: list[Exception] = []
    barrier = threading.Barrier(len(versions))

    def go(v: str) -> None:
        barrier.wait()
        try:
            results[v] = point_current(root, v, expected_previous=expected_previous)
        except PublishConflict as exc:
            results[v] = exc
        except Exception as exc:  # anything else is a bug: the caller asserts on it
            results[v] = exc
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, f"a racing publisher failed with something else than PublishConflict: {errors!r}"
    return [v for v, r in results.items() if r is True]


def test_racing_publishers_have_one_winner(root) -> None:
    """Publishers that read the same CURRENT race: If-None-Match: * (first publish) and
    If-Match: <etag> (later ones) let exactly one PUT through each time."""
    versions = [f"v{i}" for i in range(8)]
    for v in versions:
        _write(root, v)
    first = _race(root, versions[:4], expected_previous=None)
    assert len(first) == 1 and read_current(root) == first[0]
    second = _race(root, versions[4:], expected_previous=first[0])
    assert len(second) == 1 and read_current(root) == second[0]
    assert [(e["version"], e["previous"]) for e in history(root)] == [(first[0], None), (second[0], first[0])]


def test_bad_input_on_s3(root, capsys) -> None:
    with pytest.raises(LookupError, match="nothing is published under s3://"):
        RecommendationStore(root).recommend("u1")
    _publish(root, "v1")
    store = ObjectStore.open(root)
    store.write_bytes("CURRENT", b"v-does-not-exist\n")
    # the log is the truth: the reader serves its newest commit and repairs CURRENT
    assert RecommendationStore(root).recommend("u1").version == "v1"
    assert store.read_bytes("CURRENT") == b"v1\n"
    # without a log (a CURRENT written by hand) a corrupt CURRENT is a clear error
    store.delete(LOG_DIR, recursive=True)
    store.write_bytes("CURRENT", b"v-does-not-exist\n")
    with pytest.raises(LookupError, match="is corrupt: it names 'v-does-not-exist'"):
        RecommendationStore(root).recommend("u1")
    store.write_bytes("CURRENT", b"v1\n")
    store.delete("version=v1/_manifest.json")
    with pytest.raises(PublishError, match="version v1 has no manifest"):
        RecommendationStore(root).recommend("u1")
    assert main(["--root", root, "user", "u1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: version v1 has no manifest") and "Traceback" not in err
    assert list_versions(root) == []


def test_missing_bucket(s3, capsys) -> None:
    root = "s3://no-such-bucket-here/recs"
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-here' of s3://no-such-bucket-here/recs does not exist"):
        RecommendationStore(root).recommend("u1")
    assert main(["--root", root, "versions"]) == 0  # nothing there: an empty list
    assert main(["--root", root, "user", "u1"]) == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(StorageError, match="writing s3://no-such-bucket-here/recs/version=v1/part-00000.parquet failed"):
        _write(root, "v1")


def test_unreachable_endpoint(s3, monkeypatch, capsys) -> None:
    # storage options (not AWS_ENDPOINT_URL) name the endpoint: a port nothing listens on,
    # botocore retries off so the error comes at once
    monkeypatch.setenv(
        OPTIONS_ENV,
        json.dumps({"endpoint_url": "http://127.0.0.1:9", "config_kwargs": {"retries": {"max_attempts": 1}}}),
    )
    root = f"s3://{BUCKET}/recs"
    with pytest.raises(StorageError, match=r"reading s3://recsys-tables/recs/CURRENT failed: EndpointConnectionError"):
        read_current(root)
    assert main(["--root", root, "user", "u1"]) == 1
    err = capsys.readouterr().err
    assert "Could not connect" in err and "Traceback" not in err


def test_storage_options_env(s3, monkeypatch) -> None:
    """Endpoint and credentials through $RECSYS_STORAGE_OPTIONS alone (no AWS_ENDPOINT_URL)."""
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv(OPTIONS_ENV, json.dumps({"endpoint_url": s3, "key": "testing", "secret": "testing"}))
    root = f"s3://{BUCKET}/opts-{uuid.uuid4().hex[:6]}"
    assert _publish(root, "v1")
    assert RecommendationStore(root).recommend("u1", 1).items == ["v1:item1"]


# --- the pipeline's own stages publish to the bucket ------------------------------------------

END = datetime(2026, 11, 20, tzinfo=timezone.utc)


@pytest.mark.slow  # ~40 s on 2 shared cores: trains a tiny model and logs to MLflow
def test_pipeline_stages_publish_to_s3(s3, tmp_path, monkeypatch) -> None:
    """snapshot -> ... -> plan_shards -> score_shard (x2) -> assemble_version -> validate_output
    -> publish with RECSYS_RECOMMENDATIONS_DIR=s3://...: parts, manifest, CURRENT and the log
    land in the bucket, the reader serves them, and a rerun publishes nothing new."""
    from include.recsys.config.settings import load_config
    from include.recsys.core.run import RunContext
    from include.recsys.data import synth
    from include.recsys.stages.assemble import assemble_version
    from include.recsys.stages.evaluate import evaluate
    from include.recsys.stages.gate import gate
    from include.recsys.stages.publish import publish
    from include.recsys.stages.register import register
    from include.recsys.stages.shards import plan_shards, score_shard
    from include.recsys.stages.snapshot import snapshot
    from include.recsys.stages.split import split
    from include.recsys.stages.train import train
    from include.recsys.stages.validate_output import validate_output

    root = f"s3://{BUCKET}/pipeline-{uuid.uuid4().hex[:6]}/recommendations"
    monkeypatch.setenv("RECSYS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RECSYS_RECOMMENDATIONS_DIR", root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config({"window_days": 35, "iterations": 3, "factors": 8, "shards": 2})
    assert cfg.recommendations_root == root
    data = synth.generate(dataclasses.replace(synth.PRESETS["tiny"], end_date="2026-11-19"))
    synth.land_partitioned(data, cfg.source)
    try:
        rc = RunContext("recsys_nightly_retrain", "manual__s3", datetime(2026, 11, 19, tzinfo=timezone.utc), END)
        snap = snapshot(cfg, rc)
        parts = split(cfg, rc, snap)
        model = train(cfg, rc, parts, snap)
        ev = evaluate(cfg, rc, parts, model)
        verdict = gate(cfg, rc, ev, model)
        reg = register(cfg, rc, model, snap)
        shards = plan_shards(cfg, rc, snap)
        assert len(shards) == 2
        written = [score_shard(cfg, rc, snap, model, reg, sh) for sh in shards]
        pre = assemble_version(cfg, rc, snap, model, reg, ev, verdict, written)
        assert pre["path"] == f"{root}/version={rc.version}"
        checked = validate_output(cfg, rc, snap, pre)
        out = publish(cfg, rc, checked, reg, model)
        assert out["moved"] is True
        assert read_current(root) == rc.version
        keys = _keys(root)
        assert {f"version={rc.version}/part-00000.parquet", f"version={rc.version}/part-00001.parquet",
                f"version={rc.version}/_manifest.json", "CURRENT", f"_log/{1:020d}.json"} <= set(keys)
        m = read_manifest(root, rc.version)
        assert m["shards"] == 2 and m["rows"] == pre["rows"] and m["model_version"] == str(reg["model_version"])
        store = RecommendationStore(root)
        some_user = store.table()["user_id"].iloc[0]
        assert store.recommend(some_user, 5).source == "model"
        # a rerun of the same interval publishes nothing new
        assert publish(cfg, rc, checked, reg, model)["moved"] is False
        assert len(history(root)) == 1
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
