"""The layout must not change behaviour: with the same data and seed the pipeline publishes the
same table, the same similar items, the same metrics and the same gate verdict as the values
recorded in ``expected/`` before the code moved (issue 17).

Re-record (only when a change of behaviour is intended, and say so in the commit):
``RECSYS_RECORD_REGRESSION=1 .venv/bin/python -m pytest tests/regression``."""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include.recsys.config.settings import load_config
from include.recsys.core.run import RunContext
from include.recsys.data import synth
from tests._stages import run_stages

EXPECTED = Path(__file__).parent / "expected"
RECORD = os.environ.get("RECSYS_RECORD_REGRESSION") == "1"
OVERRIDES = {"window_days": 35, "iterations": 5, "factors": 8, "shards": 3, "seed": 23,
             "tune_every_days": 0, "tune_on_decay": False}
TABLE = ["user_id", "rank", "item_id", "source", "model_version"]
SIMILAR = ["item_id", "rank", "similar_item_id"]


def _parts(folder: str | Path) -> pd.DataFrame:
    files = sorted(Path(folder).glob("part-*.parquet"))
    assert files, f"no parts in {folder}"
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("regression")
    mp = pytest.MonkeyPatch()
    mp.setenv("RECSYS_DATA_DIR", str(base / "data"))
    for name in ("RECSYS_ITEM_RULES_PATH", "RECSYS_AB_VARIANTS", "RECSYS_PSEUDONYMIZE_KEY",
                 "RECSYS_PSEUDONYMIZE_KEY_FILE"):
        mp.delenv(name, raising=False)
    saved_uri = os.environ.pop("MLFLOW_TRACKING_URI", None)
    cfg = load_config(OVERRIDES)
    data = synth.generate(dataclasses.replace(synth.PRESETS["tiny"], end_date="2026-11-19"))
    synth.land_partitioned(data, cfg.source)
    rc = RunContext("recsys_nightly_retrain", "scheduled__2026-11-19T00:00:00+00:00",
                    datetime(2026, 11, 19, tzinfo=timezone.utc), datetime(2026, 11, 20, tzinfo=timezone.utc))
    out = run_stages(cfg, rc)
    yield cfg, out
    mp.undo()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if saved_uri is not None:
        os.environ["MLFLOW_TRACKING_URI"] = saved_uri


def _figures(cfg, out) -> dict:
    report = json.loads(Path(out["ev"]["report"]).read_text())
    gate = json.loads(Path(out["verdict"]["path"]).read_text())
    manifest = json.loads((Path(out["pre"]["path"]) / "_manifest.json").read_text())
    return {
        "snapshot_stats": out["snap"]["stats"],
        "split_stats": {k: v for k, v in out["parts"].items() if not isinstance(v, str)},
        "best_source": out["best"].get("source"),
        "metrics": report["metrics"],
        "slices": report.get("slices"),
        "verdict": gate["verdict"],
        "rules": [{k: r.get(k) for k in ("name", "result", "observed", "bound")} for r in gate["rules"]],
        "manifest": {k: manifest[k] for k in ("rows", "users", "users_by_model", "users_by_fallback", "shards")
                     if k in manifest},
        "published": out["pub"]["version"] == out["pre"]["version"],
    }


TIMINGS = {"seconds", "fit_seconds", "wall_s"}  # wall-clock figures, not behaviour


def _close(got, want, path: str = "") -> None:
    """Equal structures; floats to rel 1e-9 (metrics and bounds are computed the same way)."""
    if isinstance(want, dict):
        got = {k: v for k, v in got.items() if k not in TIMINGS} if isinstance(got, dict) else got
        want = {k: v for k, v in want.items() if k not in TIMINGS}
        assert isinstance(got, dict) and set(got) == set(want), f"{path}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            _close(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{path}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want)):
            _close(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert got == pytest.approx(want, rel=1e-9, nan_ok=True), f"{path}: {got} != {want}"
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"


def test_same_table_similar_items_metrics_and_verdict(run) -> None:
    """Same data + seed -> the table (user, rank, item to the row, score to 1e-6), the similar
    items, the evaluation metrics and slices, and the gate's verdict and rule rows recorded before
    the layout step."""
    cfg, out = run
    table = _parts(out["pre"]["path"]).sort_values(["user_id", "rank"], ignore_index=True)
    similar = _parts(out["similar"]["path"]).sort_values(["item_id", "rank"], ignore_index=True)
    figures = json.loads(json.dumps(_figures(cfg, out), default=str))
    if RECORD:
        EXPECTED.mkdir(exist_ok=True)
        table[TABLE + ["score"]].to_parquet(EXPECTED / "table.parquet", index=False)
        similar[SIMILAR + ["score"]].to_parquet(EXPECTED / "similar.parquet", index=False)
        (EXPECTED / "figures.json").write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")
        pytest.skip("recorded tests/regression/expected: commit it")
    want = pd.read_parquet(EXPECTED / "table.parquet")
    assert len(table) == len(want) > 0
    pd.testing.assert_frame_equal(table[TABLE].astype(str), want[TABLE].astype(str))
    np.testing.assert_allclose(table["score"].to_numpy(np.float64), want["score"].to_numpy(np.float64), atol=1e-6)
    want_sim = pd.read_parquet(EXPECTED / "similar.parquet")
    assert len(similar) == len(want_sim) > 0
    pd.testing.assert_frame_equal(similar[SIMILAR].astype(str), want_sim[SIMILAR].astype(str))
    np.testing.assert_allclose(similar["score"].to_numpy(np.float64), want_sim["score"].to_numpy(np.float64),
                               atol=1e-6)
    _close(figures, json.loads((EXPECTED / "figures.json").read_text()))
