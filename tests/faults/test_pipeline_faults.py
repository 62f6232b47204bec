"""Fault injection on the pipeline's stages (library level, real MLflow on SQLite, tiny
synthetic data): a cleared and re-run logical date, a crash between serving the table and
moving ``champion``, MLflow unreachable, bad upstream data, concurrent DAG runs.

Each test's docstring reads ``fault -> expected outcome`` (see tests/faults/list_faults.py)."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import socket
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from include.recsys.config.settings import PipelineConfig, load_config
from include.recsys.core.io import file_sha256, read_json
from include.recsys.core.run import RunContext
from include.recsys.data import synth
from include.recsys.errors import PermanentError, SourceError, StaleModel, TransientError
from include.recsys.reporting.run_card import RUN_CARD
from include.recsys.reporting.summary import collect_summary, publish_outcome
from include.recsys.stages.evaluate import evaluate
from include.recsys.stages.gate import gate
from include.recsys.stages.publish import publish
from include.recsys.stages.register import register
from include.recsys.stages.rollback import rollback
from include.recsys.stages.snapshot import snapshot
from include.recsys.stages.split import split
from include.recsys.stages.train import train
from include.recsys.tables.current import history, read_current
from include.recsys.tables.layout import version_dir
from include.recsys.tables.manifest import read_manifest
from include.recsys.tables.versions import list_versions, write_version
from include.recsys.tracking.registry import (
    CHAMPION,
    alias_history,
    alias_version,
    champion_data_check,
    model_data,
    set_alias,
)
from include.recsys.tracking.runs import run_tags
from tests._stages import precompute, summary_text

ROOT = Path(__file__).resolve().parents[2]
END = datetime(2026, 11, 20, tzinfo=timezone.utc)
OVERRIDES = {"window_days": 35, "iterations": 5, "factors": 8}


def _rc(run_id: str) -> RunContext:
    return RunContext("recsys_nightly_retrain", run_id, datetime(2026, 11, 19, tzinfo=timezone.utc), END)


def _run(cfg: PipelineConfig, rc: RunContext, *, until: str = "publish") -> dict:
    """The DAG's stages in order, as its tasks call them."""
    out: dict = {}
    out["snap"] = snapshot(cfg, rc)
    out["parts"] = split(cfg, rc, out["snap"])
    out["model"] = train(cfg, rc, out["parts"], out["snap"])
    out["ev"] = evaluate(cfg, rc, out["parts"], out["model"])
    out["verdict"] = gate(cfg, rc, out["ev"], out["model"])
    out["reg"] = register(cfg, rc, out["model"], out["snap"])
    out["pre"] = precompute(cfg, rc, out["snap"], out["model"], out["reg"], out["ev"], out["verdict"])
    if until == "publish":
        out["pub"] = publish(cfg, rc, out["pre"], out["reg"], out["model"])
    return out


def _table(root: Path, version: str) -> pd.DataFrame:
    folder = version_dir(root, version)
    return pd.concat([pd.read_parquet(f) for f in sorted(folder.glob("part-*.parquet"))], ignore_index=True)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny lake, its own MLflow (SQLite) and one published nightly run."""
    base = tmp_path_factory.mktemp("fault_pipeline")
    mp = pytest.MonkeyPatch()
    mp.setenv("RECSYS_DATA_DIR", str(base / "data"))
    # mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI, which PipelineConfig honours:
    # keep this module's MLflow DB from leaking into later tests of the session
    saved_uri = os.environ.pop("MLFLOW_TRACKING_URI", None)
    cfg = load_config(OVERRIDES)
    data = synth.generate(dataclasses.replace(synth.PRESETS["tiny"], end_date="2026-11-19"))
    synth.land_partitioned(data, cfg.source)
    first = _run(cfg, _rc("scheduled__2026-11-19T00:00:00+00:00"))
    yield {"cfg": cfg, "base": base, "first": first, "mp": mp}
    mp.undo()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if saved_uri is not None:
        os.environ["MLFLOW_TRACKING_URI"] = saved_uri


def test_fault_clear_and_rerun_same_logical_date(lake) -> None:
    """The published run of a logical date is cleared and re-run end to end -> the same
    version stays served, its rows are identical, no second version and no duplicate rows, the
    same model version stays champion (registration is idempotent per MLflow run)."""
    cfg, first = lake["cfg"], lake["first"]
    root = cfg.recommendations_root
    version = first["pub"]["version"]
    before = _table(root, version)
    files_before = {f.name: file_sha256(f) for f in version_dir(root, version).glob("*.parquet")}
    hist_before = history(root)

    again = _run(cfg, _rc("scheduled__2026-11-19T00:00:00+00:00"))

    assert again["pub"]["version"] == version and again["pub"]["moved"] is False
    assert read_current(root) == version
    assert history(root) == hist_before
    assert again["reg"]["model_version"] == first["reg"]["model_version"]
    assert alias_version(cfg, CHAMPION) == first["reg"]["model_version"]
    after = _table(root, version)
    pd.testing.assert_frame_equal(after, before)
    assert {f.name: file_sha256(f) for f in version_dir(root, version).glob("*.parquet")} == files_before
    assert not after.duplicated(["user_id", "rank"]).any()
    assert not after.duplicated(["user_id", "item_id"]).any()
    interval = _rc("x").interval_key
    assert len([v for v in list_versions(root) if v["version"].startswith(interval)]) == 1


def test_fault_crash_between_table_publish_and_champion_alias(lake, monkeypatch) -> None:
    """publish dies after CURRENT moved but before `champion` moved (MLflow call fails) -> the
    task fails; its retry serves the same version (no new history entry) and moves the alias,
    so table and champion agree again."""
    cfg = lake["cfg"]
    root = cfg.recommendations_root
    rc = _rc("manual__2026-11-20T08:00:00+00:00")
    out = _run(cfg, rc, until="precompute")
    champion_before = alias_version(cfg, CHAMPION)
    new_model = out["reg"]["model_version"]
    assert new_model != champion_before
    real_set_alias = set_alias

    def crash(cfg_, alias, *args, **kwargs):
        if alias == CHAMPION:
            raise ConnectionError("worker lost between CURRENT and the alias")
        return real_set_alias(cfg_, alias, *args, **kwargs)

    monkeypatch.setattr("include.recsys.tracking.registry.set_alias", crash)
    with pytest.raises(ConnectionError):
        publish(cfg, rc, out["pre"], out["reg"], out["model"])
    assert read_current(root) == rc.version  # the table is served ...
    assert alias_version(cfg, CHAMPION) == champion_before  # ... the alias lags
    n_hist = len(history(root))

    monkeypatch.setattr("include.recsys.tracking.registry.set_alias", real_set_alias)
    result = publish(cfg, rc, out["pre"], out["reg"], out["model"])  # the retry

    assert result["moved"] is False
    assert len(history(root)) == n_hist
    assert alias_version(cfg, CHAMPION) == new_model
    assert read_manifest(root, rc.version)["model_version"] == new_model


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_fault_mlflow_unreachable(lake, monkeypatch, tmp_path) -> None:
    """MLflow does not answer (connection refused) -> register and publish fail with a clear
    error naming MLflow (the DAG retries them: not a data error), nothing new is served and
    the champion does not move."""

    cfg = lake["cfg"]
    root = cfg.recommendations_root
    before, hist = read_current(root), history(root)
    lake_uri = cfg.tracking_uri
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    down = cfg.with_overrides({"mlflow_tracking_uri": f"http://127.0.0.1:{_closed_port()}"})
    rc = _rc("manual__2026-11-20T09:00:00+00:00")
    first = lake["first"]

    with pytest.raises(Exception) as reg_err:
        register(down, rc, first["model"], first["snap"])
    # a complete, unpublished version exists: publishing it must still refuse without MLflow
    write_version(root, rc.version, _table(root, before), pd.read_parquet(
        version_dir(root, before) / "_fallback.parquet"), {"model_version": "999"})
    with pytest.raises(Exception) as pub_err:
        publish(down, rc, {"version": rc.version, "path": str(version_dir(root, rc.version))},
                         {"model_name": cfg.model_name, "model_version": "999"}, first["model"])

    for err in (reg_err.value, pub_err.value):
        msg = f"{type(err).__name__}: {err}"
        assert "mlflow" in msg.lower() or "127.0.0.1" in msg, msg
        # retried by the DAG: a TransientError, never a PermanentError (_run fails those at once)
        assert isinstance(err, TransientError) and not isinstance(err, PermanentError), msg
    assert read_current(root) == before
    assert history(root) == hist
    monkeypatch.setenv("MLFLOW_TRACKING_URI", lake_uri)  # see the fixture: set_tracking_uri exports it
    assert alias_version(cfg, CHAMPION) == read_manifest(root, before)["model_version"]
    shutil.rmtree(version_dir(root, rc.version))


def _lake_copy(lake, tmp_path: Path) -> PipelineConfig:
    src = lake["cfg"].source
    dst = tmp_path / "interactions"
    shutil.copytree(src, dst)
    return lake["cfg"].with_overrides({"source_path": str(dst)})


def test_bad_input_doubled_upstream_gives_identical_snapshot(lake, tmp_path) -> None:
    """The upstream delivers every partition twice (a replayed export) -> exact duplicates are
    dropped: the snapshot, hence everything trained and published from it, is identical."""
    cfg = _lake_copy(lake, tmp_path)
    for part in cfg.source.glob("date=*/part-0.parquet"):
        shutil.copy(part, part.with_name("part-1-replayed.parquet"))
    rc = _rc("manual__doubled")
    snap = snapshot(cfg, rc)
    base = lake["first"]["snap"]
    assert snap["stats"]["rows"] == base["stats"]["rows"]
    assert snap["stats"]["duplicates_dropped"] >= base["stats"]["rows"]
    assert snap["sha256"] == base["sha256"]
    pd.testing.assert_frame_equal(pd.read_parquet(snap["snapshot"]), pd.read_parquet(base["snapshot"]))


def test_bad_input_corrupted_parquet_fails_clearly(lake, tmp_path) -> None:
    """One input Parquet file is truncated (a half-copied partition) -> snapshot fails at once
    with SourceError naming the file (no retry), nothing is published."""
    cfg = _lake_copy(lake, tmp_path)
    root = lake["cfg"].recommendations_root
    before = read_current(root)
    victim = sorted(cfg.source.glob("date=*/part-0.parquet"))[-3]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(SourceError, match=victim.parent.name):
        snapshot(cfg, _rc("manual__corrupt"))
    assert read_current(root) == before


def test_bad_input_empty_upstream_fails_clearly(lake, tmp_path) -> None:
    """The upstream is empty (no partitions / no events in the window) -> snapshot fails at once
    with SourceError saying so, nothing is published."""
    root = lake["cfg"].recommendations_root
    before = read_current(root)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="no date=YYYY-MM-DD partitions"):
        snapshot(lake["cfg"].with_overrides({"source_path": str(empty)}), _rc("manual__empty"))
    (empty / "date=2020-01-01").mkdir()
    pd.DataFrame({"user_id": ["u"], "item_id": ["i"], "event_ts": [pd.Timestamp("2020-01-01", tz="UTC")]}
                 ).to_parquet(empty / "date=2020-01-01" / "part-0.parquet")
    with pytest.raises(SourceError, match="window"):
        snapshot(lake["cfg"].with_overrides({"source_path": str(empty)}), _rc("manual__empty"))
    assert read_current(root) == before


def test_fault_two_runs_at_once_are_queued() -> None:
    """A manual trigger arrives during the nightly run -> the DAG allows one active run
    (max_active_runs=1), so the second is queued; racing publishes are covered by the publish
    lock test."""
    spec = importlib.util.spec_from_file_location("nightly_for_faults", ROOT / "dags" / "recsys_nightly_retrain.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    dag = mod.nightly_dag
    assert dag.max_active_runs == 1
    assert dag.catchup is False


# --- issue 16: older data never goes live; a kill between CURRENT and the alias heals ----------


def _rc_old(run_id: str) -> RunContext:
    """A run for a data interval three days before the lake's published one."""
    return RunContext("recsys_nightly_retrain", run_id, datetime(2026, 11, 16, tzinfo=timezone.utc),
                      datetime(2026, 11, 17, tzinfo=timezone.utc))


@pytest.fixture(scope="module")
def older(lake) -> dict:
    """An older interval's run (forced past its gate) whose publish comes after the newer one."""
    cfg = lake["cfg"]
    root = cfg.recommendations_root
    before = {"current": read_current(root), "champion": alias_version(cfg, CHAMPION),
              "history": history(root)}
    rc = _rc_old("manual__2026-11-16T00:00:00+00:00")
    out = _run(cfg.with_overrides({"force_publish": True}), rc)
    return {"rc": rc, "out": out, "before": before}


def test_older_run_succeeds_serves_nothing_and_says_why(lake, older) -> None:
    cfg, rc, out, before = lake["cfg"], older["rc"], older["out"], older["before"]
    root = cfg.recommendations_root
    served_end = read_manifest(root, before["current"])["data_window"]["end"]
    reason = (f"stale: serving data up to {served_end}, this run's data ends at "
              f"2026-11-17T00:00:00+00:00; not served")
    assert out["pub"]["served"] is False and out["pub"]["reason"] == reason and out["pub"]["moved"] is False
    assert read_current(root) == before["current"]
    assert alias_version(cfg, CHAMPION) == before["champion"] != out["reg"]["model_version"]
    assert history(root) == before["history"]  # a refusal commits nothing
    # the version and the registered model record their data
    m = read_manifest(root, rc.version)
    assert m["data_interval"] == {"start": "2026-11-16T00:00:00+00:00", "end": "2026-11-17T00:00:00+00:00"}
    data = model_data(cfg, out["reg"]["model_version"])
    assert data["data_window_end"].isoformat() == m["data_window"]["end"] == data["data_interval_end"].isoformat()
    assert data["train_data_end"] < data["data_window_end"]
    # the newer champion trained on this holdout: its rules are SKIPPED, not a false regression
    report = read_json(rc.work_dir(cfg) / "eval" / "report.json")
    comp = report["champion_comparison"]
    assert comp["fair"] is False and comp["champion_version"] == before["champion"]
    rules = {r["name"]: r for r in read_json(rc.work_dir(cfg) / "gate.json")["rules"]}
    assert rules["no_regression"]["result"] == "SKIP" and rules["no_regression"]["note"] == comp["reason"]
    # log, summary, run card and MLflow say why
    summary = collect_summary(cfg, rc)
    assert summary["not_served"] == reason and "published" not in summary
    assert f"not served       : {reason}" in summary_text(summary)
    assert publish_outcome(cfg, rc.run_id)["served"] is False
    card = (rc.work_dir(cfg) / RUN_CARD).read_text()
    assert "NOT SERVED" in card and "stale: serving data up to" in card
    assert run_tags(cfg, out["model"]["mlflow_run_id"])["not_served"] == reason
    # a rerun of the publish task gives the same answer
    again = publish(cfg, rc, out["pre"], out["reg"], out["model"])
    assert again["served"] is False and read_current(root) == before["current"]


def test_champion_alias_refuses_older_data_on_its_own(lake, older) -> None:
    """The alias is guarded independently of CURRENT: whatever moves champion directly gets
    StaleModel for an older model; allow_older_data lets it through (recorded); a rollback
    is exempt."""
    cfg = lake["cfg"]
    champ, old_model = older["before"]["champion"], older["out"]["reg"]["model_version"]
    with pytest.raises(StaleModel, match=r"^stale: serving data up to .* this run's data ends at 2026-11-17"):
        set_alias(cfg, CHAMPION, old_model, reason="direct move")
    assert alias_version(cfg, CHAMPION) == champ
    info = champion_data_check(cfg, old_model, allow_older_data=True)
    assert info["older"] is True and info["champion"] == champ


def test_allow_older_data_serves_it_loudly_and_rollback_returns(lake, older) -> None:
    cfg, rc, out, before = lake["cfg"], older["rc"], older["out"], older["before"]
    root = cfg.recommendations_root
    allowed = cfg.with_overrides({"allow_older_data": True})
    result = publish(allowed, rc, out["pre"], out["reg"], out["model"])
    assert result["served"] is True and read_current(root) == rc.version
    assert alias_version(cfg, CHAMPION) == out["reg"]["model_version"]
    commit = history(root)[-1]
    assert commit["override"] == "allow_older_data" and "OLDER DATA allowed by allow_older_data" in commit["reason"]
    alias_move = alias_history(cfg, CHAMPION)[-1]
    assert alias_move["older_data"] is True and "OLDER DATA" in alias_move["reason"]
    summary = collect_summary(allowed, rc)
    assert "OLDER DATA" in summary["older_data"] and "OLDER DATA" in summary_text(summary)
    # rollback is the normal way back, to the newer data, table and alias together
    rollback(cfg, rc, to_version=before["current"], reason="undo the backfill")
    assert read_current(root) == before["current"]
    assert alias_version(cfg, CHAMPION) == before["champion"]


def test_sigkill_between_current_and_alias_then_rerun_repairs_the_alias(lake, tmp_path) -> None:
    """A real subprocess runs the publish stage and is SIGKILLed at the named crash point
    between CURRENT and the champion alias: CURRENT moved, the alias lags. The rerun of the
    stage commits nothing new and moves the alias: the state of an uninterrupted run."""
    import json
    import signal
    import subprocess
    import sys

    cfg = lake["cfg"]
    root = cfg.recommendations_root
    rc = _rc("manual__2026-11-20T11:00:00+00:00")
    out = _run(cfg, rc, until="precompute")
    champion_before = alias_version(cfg, CHAMPION)
    assert out["reg"]["model_version"] != champion_before
    args = tmp_path / "publish_args.json"
    args.write_text(json.dumps({
        "overrides": OVERRIDES, "pre": out["pre"], "reg": out["reg"], "model": out["model"],
        "rc": [rc.dag_id, rc.run_id, rc.interval_start.isoformat(), rc.interval_end.isoformat()],
    }))
    code = (
        "import json, sys\nfrom datetime import datetime\n"
        "from include.recsys.config.settings import load_config\nfrom include.recsys.core.run import RunContext\n"
        "from include.recsys.stages.publish import publish\n"
        "a = json.load(open(sys.argv[1]))\n"
        "d, r, s, e = a['rc']\n"
        "rc = RunContext(d, r, datetime.fromisoformat(s), datetime.fromisoformat(e))\n"
        "print(publish(load_config(a['overrides']), rc, a['pre'], a['reg'], a['model']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RECSYS_CRASH_AT": "between_current_and_alias"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-c", code, str(args)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert read_current(root) == rc.version  # CURRENT moved ...
    assert alias_version(cfg, CHAMPION) == champion_before  # ... the alias did not
    n_commits = len(history(root))

    env.pop("RECSYS_CRASH_AT")
    proc = subprocess.run([sys.executable, "-c", code, str(args)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "'moved': False" in proc.stdout and "'served': True" in proc.stdout
    assert read_current(root) == rc.version
    assert len(history(root)) == n_commits  # no second commit for the same version
    assert alias_version(cfg, CHAMPION) == out["reg"]["model_version"]
    move = alias_history(cfg, CHAMPION)[-1]
    assert move["version"] == out["reg"]["model_version"] and move["previous"] == champion_before
