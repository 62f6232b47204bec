"""The registry steps against a real ``mlflow server`` on 127.0.0.1 over HTTP.

Production runs MLflow as a tracking server (its own backend store and artifact store);
the pipeline only gets ``MLFLOW_TRACKING_URI``. Here a server with a SQLite backend and a
proxied artifact store (``--serve-artifacts``: clients upload and download through HTTP, they
never see the server's disk) is started once for the module and stopped at the end.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from include.recsys.config.settings import load_config
from include.recsys.core.run import RunContext
from include.recsys.scoring.bundle import ModelBundle
from include.recsys.tracking.registry import (
    CHAMPION,
    alias_history,
    download_bundle,
    register_model,
    rollback_alias,
    set_alias,
    tag_model_version,
)
from include.recsys.tracking.runs import get_or_create_run, log_to_run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    log = open(base / "server.log", "w")
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{base / 'backend.db'}",
         "--serve-artifacts", "--artifacts-destination", str(base / "artifact-store"),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=base,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not start:\n{(base / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield {"url": url, "base": base}
    os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker (own session)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


def _bundle(folder: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    users, items = [f"u{i}" for i in range(30)], [f"i{j}" for j in range(12)]
    seen = sp.random(30, 12, density=0.2, format="csr", random_state=seed, dtype=np.float32)
    seen.data[:] = 1
    seen.sort_indices()
    return ModelBundle(
        user_ids=pd.Index(users),
        item_ids=pd.Index(items),
        user_factors=rng.normal(size=(30, 4)).astype(np.float32),
        item_factors=rng.normal(size=(12, 4)).astype(np.float32),
        item_popularity=rng.integers(1, 30, size=12),
        seen=seen,
    ).save(folder)


def test_registry_steps_over_http(server, tmp_path, monkeypatch):
    # configured only through the standard variable (RECSYS_MLFLOW_TRACKING_URI unset)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server["url"])
    cfg = load_config({"data_dir": tmp_path / "data", "top_n": 5})
    assert cfg.tracking_uri == server["url"]
    rc = RunContext("recsys_nightly_retrain", "manual__server-test",
                             pd.Timestamp("2026-11-20", tz="UTC"), pd.Timestamp("2026-11-21", tz="UTC"))

    run_id = get_or_create_run(cfg, rc.run_id, rc.mlflow_tags())
    assert get_or_create_run(cfg, rc.run_id, rc.mlflow_tags()) == run_id
    report = tmp_path / "eval" / "report.json"
    report.parent.mkdir()
    report.write_text('{"ok": true}')
    log_to_run(cfg, run_id, params=cfg.params_for_mlflow(), metrics={"candidate.ndcg@10": 0.25},
                        tags={"data_snapshot_sha256": "abc"}, artifacts={"evaluation": report.parent})
    v1 = register_model(cfg, run_id, _bundle(tmp_path / "b1" / "bundle", 1))
    assert register_model(cfg, run_id, tmp_path / "b1" / "bundle") == v1  # idempotent
    tag_model_version(cfg, v1, {"gate_verdict": "PASS"}, "first")
    assert set_alias(cfg, CHAMPION, v1, reason="published", actor=rc.run_id)

    run2 = get_or_create_run(cfg, "manual__server-test-2", {})
    v2 = register_model(cfg, run2, _bundle(tmp_path / "b2" / "bundle", 2))
    assert v2 != v1
    assert set_alias(cfg, CHAMPION, v2, reason="published", actor="manual__server-test-2")

    got = download_bundle(cfg, CHAMPION, tmp_path / "dl")
    assert got is not None and got[0] == v2
    want = ModelBundle.load(tmp_path / "b2" / "bundle")
    assert np.array_equal(got[1].user_factors, want.user_factors)
    assert (got[1].seen != want.seen).nnz == 0

    assert rollback_alias(cfg, reason="test", actor="cli:test") == v1
    assert [(e["version"], e["action"]) for e in alias_history(cfg, CHAMPION)] == [
        (v1, "set"), (v2, "set"), (v1, "rollback")]

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=server["url"], registry_uri=server["url"])
    run = client.get_run(run_id)
    assert run.data.metrics["candidate.ndcg_at_10"] == 0.25 and run.data.tags["dag_id"] == rc.dag_id
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied, not a local path
    assert [a.path for a in client.list_artifacts(run_id, "evaluation")] == ["evaluation/report.json"]
    assert client.get_model_version(cfg.model_name, v1).tags["gate_verdict"] == "PASS"
    # the artifacts live in the server's store, not in the client's data folder
    assert list((server["base"] / "artifact-store").rglob("factors.npz"))
    assert not (tmp_path / "data" / "mlflow").exists() or not list((tmp_path / "data" / "mlflow").rglob("*.npz"))

    # the champion loads from the server in-process, too
    model = mlflow.pyfunc.load_model(f"models:/{cfg.model_name}@champion")
    out = model.predict(pd.DataFrame({"user_id": ["u3", "nobody"]}), params={"n": 3})
    assert list(out["source"]) == ["model"] * 3 + ["fallback"] * 3
