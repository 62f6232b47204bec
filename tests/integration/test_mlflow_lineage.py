"""MLflow run structure, the pyfunc model, aliases + their history, rollback, and MLflow outages.

Two nightly runs of the library pipeline (no Airflow) on tiny generated data against the
local SQLite registry, shared by the tests of this module in order: run 1 publishes version 1;
run 2 fails between moving CURRENT and moving ``champion``, and its rerun completes it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from include.recsys.config.settings import load_config
from include.recsys.core.run import RunContext
from include.recsys.data import synth
from include.recsys.errors import MlflowUnavailable, RegistryError
from include.recsys.reporting.run_card import RUN_CARD
from include.recsys.stages.evaluate import evaluate
from include.recsys.stages.gate import gate
from include.recsys.stages.publish import publish
from include.recsys.stages.register import register
from include.recsys.stages.snapshot import snapshot
from include.recsys.stages.split import split
from include.recsys.stages.train import train
from include.recsys.tables.current import read_current
from include.recsys.tables.layout import version_dir
from include.recsys.tables.manifest import read_manifest
from include.recsys.tracking.mlflow import experiment_id
from include.recsys.tracking.registry import (
    CHALLENGER,
    CHAMPION,
    alias_history,
    alias_version,
    history_path,
    rollback_alias,
    set_alias,
)
from include.recsys.tracking.runs import (
    code_version,
    end_run,
    log_to_run,
    start_child_run,
)
from tests._stages import precompute

DATA_END = "2026-11-20"
END = datetime(2026, 11, 21, tzinfo=timezone.utc)


def _rc(run_id: str) -> RunContext:
    return RunContext("recsys_nightly_retrain", run_id, END - timedelta(days=1), END)


def _stages(cfg, rc):
    snap = snapshot(cfg, rc)
    parts = split(cfg, rc, snap)
    # stands in for validate_input's report (GX is tested elsewhere): train logs the folder
    (rc.work_dir(cfg) / "validation").mkdir(exist_ok=True)
    (rc.work_dir(cfg) / "validation" / "input_report.json").write_text('{"success": true}')
    model = train(cfg, rc, parts, snap)
    ev = evaluate(cfg, rc, parts, model)
    verdict = gate(cfg, rc, ev, model)
    reg = register(cfg, rc, model)
    pre = precompute(cfg, rc, snap, model, reg, ev, verdict)
    return {"snap": snap, "parts": parts, "model": model, "ev": ev, "verdict": verdict, "reg": reg, "pre": pre}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("mlflow-lineage")
    cfg = load_config({"data_dir": base, "factors": 8, "iterations": 5, "top_n": 10})
    synth.ensure_default_data(cfg.source, dataclasses.replace(synth.PRESETS["tiny"], end_date=DATA_END))
    rc1 = _rc("manual__2026-11-21T00:00:00+00:00")
    first = _stages(cfg, rc1)
    first["pub"] = publish(cfg, rc1, first["pre"], first["reg"], first["model"])
    return {"cfg": cfg, "base": base, "rc1": rc1, "first": first}


def _client(cfg):
    return mlflow.MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)


def test_run_has_lineage_tags_params_metrics_and_artifacts(world):
    cfg, rc, first = world["cfg"], world["rc1"], world["first"]
    run = _client(cfg).get_run(first["model"]["mlflow_run_id"])
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert run.info.run_name == rc.run_id
    assert tags["airflow_run_id"] == rc.run_id and tags["dag_id"] == "recsys_nightly_retrain"
    assert tags["data_interval_start"] == str(rc.interval_start)
    assert tags["data_interval_end"] == str(rc.interval_end)
    assert tags["data_snapshot_sha256"] == first["snap"]["sha256"]
    assert tags["data_window"] == f"[{first['snap']['window_start']}, {first['snap']['window_end']})"
    assert tags["airflow_try_number"] == "1"
    assert tags["code_version"] == code_version() != ""
    assert tags["gate_verdict"] == "PASS" and tags["champion_version_evaluated"] == "none"
    assert tags["published_version"] == rc.version and tags["champion_version"] == "1"
    # every setting actually used, after overrides
    assert params == cfg.params_for_mlflow()
    assert params["factors"] == "8" and params["iterations"] == "5" and params["top_n"] == "10"
    # every evaluation metric at every k, for every compared model
    for name in ("candidate", "popularity"):
        for k in cfg.ks:
            for m in ("precision", "recall", "ndcg", "map", "mrr", "hit_rate", "coverage"):
                key = f"{name}.{m}_at_{k}"
                assert key in metrics, key
                assert metrics[key] == pytest.approx(first["ev"]["metrics"][name][f"{m}@{k}"])
    assert metrics["train_seconds"] > 0 and metrics["train_nnz"] > 0
    arts = set()
    for folder in ("evaluation", "gate", "table", "validation", "run_card"):
        arts |= {a.path for a in _client(cfg).list_artifacts(run.info.run_id, folder)}
    assert {"evaluation/report.json", "evaluation/per_user_metrics.parquet", "gate/gate.json",
            "table/_manifest.json", "validation/input_report.json", "run_card/run_card.html"} <= arts
    assert tags["gate_forced"] == "false" and tags["gate_rule.floor"].startswith("PASS")
    assert run.info.status == "FINISHED"  # publish closed it; registering did not


def test_retried_train_resumes_the_same_run(world):
    cfg, first = world["cfg"], world["first"]
    rc = _rc("manual__retry-test")
    snap, parts = first["snap"], first["parts"]
    a = train(cfg, rc, parts, snap)
    end_run(cfg, a["mlflow_run_id"], "FAILED")  # the DAG run failed and was cleared
    b = train(cfg, dataclasses.replace(rc, try_number=2), parts, snap)
    assert a["mlflow_run_id"] == b["mlflow_run_id"]
    exp = _client(cfg).get_experiment_by_name(cfg.mlflow_experiment)
    runs = _client(cfg).search_runs([exp.experiment_id], f"tags.airflow_run_id = '{rc.run_id}'")
    assert len(runs) == 1
    assert runs[0].info.status == "RUNNING"  # resumed; the DAG-level callback closes it
    assert runs[0].data.tags["airflow_try_number"] == "2"
    end_run(cfg, a["mlflow_run_id"], "FINISHED")


def test_child_runs_for_trials(world):
    cfg, parent = world["cfg"], world["first"]["model"]["mlflow_run_id"]
    child = start_child_run(cfg, parent, "trial-000", {"factors": 16, "alpha": 4.0})
    again = start_child_run(cfg, parent, "trial-000", {"factors": 16, "alpha": 4.0})
    other = start_child_run(cfg, parent, "trial-001", {"factors": 32})
    assert child == again != other
    run = _client(cfg).get_run(child)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["airflow_run_id"] == world["rc1"].run_id
    assert run.data.params == {"factors": "16", "alpha": "4.0"}
    log_to_run(cfg, child, metrics={"ndcg@10": 0.5})
    assert _client(cfg).get_run(child).data.metrics == {"ndcg_at_10": 0.5}


def test_model_version_carries_gate_metrics_window_and_run_card(world):
    cfg, rc, first = world["cfg"], world["rc1"], world["first"]
    mv = _client(cfg).get_model_version(cfg.model_name, first["reg"]["model_version"])
    t = mv.tags
    cand = first["ev"]["metrics"]["candidate"]["ndcg@10"]
    pop = first["ev"]["metrics"]["popularity"]["ndcg@10"]
    assert t["gate_verdict"] == "PASS" and t["gate_metric"] == "ndcg@10"
    assert float(t["ndcg_at_10.candidate"]) == pytest.approx(cand)
    assert float(t["ndcg_at_10.popularity"]) == pytest.approx(pop)
    assert "ndcg_at_10.champion" not in t and t["champion_version_evaluated"] == "none"
    assert t["data_window"].startswith(f"[{first['snap']['window_start']}")
    assert t["data_snapshot_sha256"] == first["snap"]["sha256"]
    assert t["airflow_run_id"] == rc.run_id and t["mlflow_run_id"] == first["model"]["mlflow_run_id"]
    assert t["run_card"] == str(rc.work_dir(cfg) / RUN_CARD) and t["run_card_status"] == "present"
    assert (rc.work_dir(cfg) / RUN_CARD).exists() and t["gate_forced"] == "false"
    assert "Gate PASS on ndcg@10" in mv.description and f"{cand:.4f}" in mv.description
    assert mv.run_id == first["model"]["mlflow_run_id"]


def test_champion_loads_in_a_fresh_process_and_matches_the_table(world, tmp_path):
    cfg = world["cfg"]
    version = read_current(cfg.recommendations_root)
    folder = version_dir(cfg.recommendations_root, version)
    table = pd.read_parquet(sorted(folder.glob("part-*.parquet")))
    n = read_manifest(cfg.recommendations_root, version)["top_n"]
    by_source = table.drop_duplicates("user_id").groupby("source")["user_id"]
    model_users = list(by_source.get_group("model").sample(25, random_state=1))
    # snapshot users with events only in the holdout days: unknown to the model, fallback rows
    cold_users = list(by_source.get_group("fallback").head(3))
    assert cold_users, "tiny data should have a few holdout-only users"
    users = model_users + cold_users + ["no-such-user"]
    pd.DataFrame({"user_id": users}).to_parquet(tmp_path / "users.parquet")
    script = f"""
import json, sys, mlflow, pandas as pd
mlflow.set_tracking_uri({cfg.tracking_uri!r}); mlflow.set_registry_uri({cfg.tracking_uri!r})
model = mlflow.pyfunc.load_model("models:/{cfg.model_name}@champion")
out = model.predict(pd.read_parquet("users.parquet"), params={{"n": {n}}})
out.to_parquet("out.parquet")
import include.recsys.scoring.recommend as r
json.dump({{"module": r.__file__, "sig_params": [p.name for p in model.metadata.get_params_schema().params]}},
          open("meta.json", "w"))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",) and not k.startswith("RECSYS_")}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    meta = json.loads((tmp_path / "meta.json").read_text())
    root = str(Path(__file__).resolve().parents[2])
    assert not meta["module"].startswith(root)  # the model's own code, not this checkout
    assert meta["sig_params"] == ["n"]
    got = pd.read_parquet(tmp_path / "out.parquet")
    known = got[got["user_id"].isin(model_users)].sort_values(["user_id", "rank"], ignore_index=True)
    want = table[table["user_id"].isin(model_users)].sort_values(["user_id", "rank"], ignore_index=True)
    assert (known["source"] == "model").all()
    pd.testing.assert_frame_equal(known[["user_id", "rank", "item_id"]], want[["user_id", "rank", "item_id"]],
                                  check_dtype=False)
    assert known["score"].to_numpy() == pytest.approx(want["score"].to_numpy(), rel=1e-5, abs=1e-6)
    unknown = got[got["user_id"] == "no-such-user"]
    assert len(unknown) == n and (unknown["source"] == "fallback").all()
    assert list(unknown["rank"]) == list(range(1, n + 1)) and unknown["item_id"].is_unique
    # users the table does not know read the version's global fallback list: the same items
    fb = pd.read_parquet(folder / "_fallback.parquet")
    if "segment" in fb.columns:
        fb = fb[fb["segment"] == ""]
    assert list(unknown.sort_values("rank")["item_id"]) == list(fb.sort_values("rank")["item_id"])[:n]
    # holdout-only users (unknown to the model, which was trained without those days): both
    # serve a fallback; the table's also drops what they saw in the holdout days (and may use
    # their segment's list), which the model cannot know of
    for u in cold_users:
        assert (got.loc[got["user_id"] == u, "source"] == "fallback").all()
        assert (table.loc[table["user_id"] == u, "source"] == "fallback").all()


def test_failure_between_current_and_alias_is_completed_by_the_rerun(world, monkeypatch):
    cfg = world["cfg"]
    rc2 = _rc("manual__2026-11-21T06:00:00+00:00")
    second = _stages(cfg, rc2)
    world["rc2"], world["second"] = rc2, second
    v2 = second["reg"]["model_version"]
    assert v2 == "2" and alias_version(cfg, CHALLENGER) == "2"
    assert second["ev"]["champion_version"] == "1"
    real = set_alias

    def broken(cfg_, alias, version, **kw):
        if alias == CHAMPION:
            raise RuntimeError("registry went away after CURRENT moved")
        return real(cfg_, alias, version, **kw)

    monkeypatch.setattr("include.recsys.tracking.registry.set_alias", broken)
    with pytest.raises(RuntimeError, match="went away"):
        publish(cfg, rc2, second["pre"], second["reg"], second["model"])
    root = cfg.recommendations_root
    assert read_current(root) == rc2.version  # the table moved ...
    assert alias_version(cfg, CHAMPION) == "1"  # ... the alias did not (yet)
    monkeypatch.setattr("include.recsys.tracking.registry.set_alias", real)
    out = publish(cfg, rc2, second["pre"], second["reg"], second["model"])  # the retry
    assert out["moved"] is False
    assert read_current(root) == rc2.version
    assert alias_version(cfg, CHAMPION) == read_manifest(root, rc2.version)["model_version"] == "2"
    last = alias_history(cfg, CHAMPION)[-1]
    assert (last["version"], last["previous"], last["actor"]) == ("2", "1", rc2.run_id)
    assert rc2.version in last["reason"]


def test_alias_history_records_every_move(world):
    cfg = world["cfg"]
    hist = alias_history(cfg)
    assert [(e["alias"], e["version"], e["previous"]) for e in hist] == [
        ("challenger", "1", None), ("champion", "1", None), ("challenger", "2", "1"), ("champion", "2", "1"),
    ]
    assert [e["seq"] for e in hist] == [1, 2, 3, 4]
    assert all(e["at"] and e["reason"] and e["actor"].startswith("manual__") for e in hist)
    mirror = [json.loads(x) for x in history_path(cfg).read_text().splitlines()]
    assert mirror == hist


def test_rollback_moves_the_alias_back_and_records_it(world):
    cfg = world["cfg"]
    assert rollback_alias(cfg, reason="bad recs reported", actor="cli:alice") == "1"
    assert alias_version(cfg, CHAMPION) == "1"
    e = alias_history(cfg, CHAMPION)[-1]
    assert (e["action"], e["version"], e["previous"], e["actor"]) == ("rollback", "1", "2", "cli:alice")
    assert "bad recs reported" in e["reason"]
    # explicit target (e.g. the model_version of the table CURRENT was rolled back to)
    assert rollback_alias(cfg, to_version="2", reason="fixed", actor="cli:alice") == "2"
    assert alias_version(cfg, CHAMPION) == "2"
    with pytest.raises(RegistryError, match="no version 99|version 99"):
        rollback_alias(cfg, to_version="99", reason="typo", actor="cli:alice")
    assert alias_version(cfg, CHAMPION) == "2"


def test_an_unrecorded_move_is_recorded_on_the_next_set(world):
    cfg = world["cfg"]
    _client(cfg).set_registered_model_alias(cfg.model_name, "shadow", "1")  # behind our back
    assert set_alias(cfg, "shadow", "1", reason="check", actor="t") is False
    e = alias_history(cfg, "shadow")
    assert len(e) == 1 and e[0]["action"] == "repair" and e[0]["version"] == "1"
    assert set_alias(cfg, "shadow", "1", reason="check", actor="t") is False
    assert len(alias_history(cfg, "shadow")) == 1


def test_nothing_is_published_for_an_unregistered_model(world):
    cfg, second, rc2 = world["cfg"], world["second"], world["rc2"]
    before = read_current(cfg.recommendations_root)
    with pytest.raises(RegistryError, match="not registered"):
        publish(cfg, rc2, second["pre"], {**second["reg"], "model_version": "77"}, second["model"])
    assert read_current(cfg.recommendations_root) == before


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_unreachable_fails_fast_with_a_clear_error(world, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    cfg, first = world["cfg"], world["first"]
    uri = f"http://127.0.0.1:{_closed_port()}"
    down = cfg.with_overrides({"mlflow_tracking_uri": uri})
    rc = _rc("manual__mlflow-down")
    t0 = time.perf_counter()
    with pytest.raises(MlflowUnavailable, match=f"MLflow at {uri} is unreachable"):
        train(down, rc, first["parts"], first["snap"])
    assert time.perf_counter() - t0 < 20
    # "no champion" is never concluded from an outage: evaluate would otherwise skip the check
    with pytest.raises(MlflowUnavailable):
        alias_version(down, CHAMPION)
    # the table is not moved when the registry cannot confirm the model
    before = read_current(cfg.recommendations_root)
    second = world["second"]
    with pytest.raises(MlflowUnavailable):
        publish(down, world["rc2"], second["pre"], second["reg"], second["model"])
    assert read_current(cfg.recommendations_root) == before
    # credentials never reach the message
    secret = cfg.with_overrides({"mlflow_tracking_uri": f"http://bob:s3cret@127.0.0.1:{_closed_port()}"})
    with pytest.raises(MlflowUnavailable) as info:
        experiment_id(secret)
    assert "s3cret" not in str(info.value) and "***@127.0.0.1" in str(info.value)
