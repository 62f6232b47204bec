"""The benchmark harness (bench/pipeline.py) works: it runs the real DAG and writes its results.

The run itself is marked ``bench`` (left out of ``make test``; ``make bench-test`` runs it, CI
runs ``make bench-smoke``). No timing is asserted here: the figures are checked in the
benchmark. The summary/Markdown helpers are tested on a hand-made result in the default suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import pipeline as harness

ROOT = Path(__file__).resolve().parents[2]


def _fake_dag() -> dict:
    stage = {"ok": True, "cpu_s": 1.0, "peak_rss_mb": 100.0, "rows_in": 10, "rows_out": 10}
    return {
        "state": "success",
        "dag_test_wall_s": 20.0,
        "dag_test_cpu_s": 25.0,
        "startup_s": 3.0,
        "process_peak_rss_mb": 900.0,
        "stages": [
            {**stage, "stage": "train", "wall_s": 6.0, "fit_s": 5.0},
            {**stage, "stage": "score_shard", "wall_s": 2.0, "map_index": 0},
            {**stage, "stage": "score_shard", "wall_s": 2.0, "map_index": 1, "peak_rss_mb": 300.0},
        ],
        "task_instances": [
            {"task_id": "train", "map_index": -1, "state": "success", "ti_wall_s": 6.5},
            {"task_id": "score_shard", "map_index": 0, "state": "success", "ti_wall_s": 2.1},
            {"task_id": "score_shard", "map_index": 1, "state": "success", "ti_wall_s": 2.2},
        ],
    }


def test_summary_merges_shards_and_computes_the_target_ratios():
    floors = {"implicit_fit": {"seconds": 5.0}, "scoring_gemm": {"seconds": 3.0}}
    parse = {"files": [{"file": "a.py", "duration_s": 0.1}, {"file": "b.py", "duration_s": 0.3}]}
    s = harness.summarise(_fake_dag(), floors, parse)
    by = {t["stage"]: t for t in s["tasks"]}
    assert by["score_shard"]["calls"] == 2 and by["score_shard"]["wall_s"] == 4.0
    assert by["score_shard"]["rows_out"] == 20 and by["score_shard"]["peak_rss_mb"] == 300.0
    assert by["score_shard"]["ti_wall_s"] == 4.3
    assert s["dag"]["stage_compute_s"] == 10.0 and s["dag"]["orchestration_overhead_s"] == 10.0
    r = s["ratios"]
    assert r["dag_wall / (als_fit + scoring_gemm)"]["value"] == 2.5
    assert r["train_task / implicit_fit"]["value"] == 1.2
    assert r["peak_rss_mb"]["value"] == 900.0
    assert r["dag_parse_s (worst file)"]["value"] == 0.3 and r["dag_parse_s (worst file)"]["file"] == "b.py"
    assert harness._check(2.5, "<= 1.5 on l") == "MISSED" and harness._check(0.3, "< 0.5") == "met"


def test_markdown_names_machine_ratios_and_tasks():
    parse = {"files": [{"file": "a.py", "duration_s": 0.1}]}
    res = {
        "meta": {"preset": "s", "date": "2026-11-23", "command": "python -m bench.pipeline --preset s",
                 "data": {}, "machine": harness.machine()},
        "summary": harness.summarise(_fake_dag(), None, parse),
    }
    md = harness.markdown(res)
    assert "preset `s`" in md and "GiB RAM" in md and "| train |" in md and "peak_rss_mb" in md


@pytest.mark.bench
def test_harness_runs_the_dag_and_writes_results(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.pipeline", "--preset", "tiny", "--work", str(tmp_path / "work"),
         "--out", str(out), "--no-implicit-recommend"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [json_file] = out.glob("pipeline-tiny-*.json")
    assert json_file.with_suffix(".md").exists()
    res = json.loads(json_file.read_text())
    tasks = {t["stage"]: t for t in res["summary"]["tasks"]}
    for name in ("snapshot", "validate_input", "split", "train", "evaluate", "gate", "register",
                 "plan_shards", "score_shard", "assemble_version", "validate_output", "publish"):
        assert tasks[name]["calls"] >= 1 and tasks[name]["wall_s"] >= 0, name
        assert tasks[name]["ti_wall_s"] is not None, name
    assert tasks["snapshot"]["rows_in"] > 0 and tasks["score_shard"]["rows_out"] > 0
    assert res["summary"]["dag"]["state"] == "success"
    assert res["summary"]["dag"]["peak_rss_mb"] > 0
    ratios = res["summary"]["ratios"]
    assert ratios["dag_wall / (als_fit + scoring_gemm)"]["value"] > 0
    assert ratios["train_task / implicit_fit"]["value"] > 0
    assert ratios["dag_parse_s (worst file)"]["file"].endswith(".py")
    assert res["floors"]["sgemm"]["gflops"] > 0
    assert res["stages_alone"]["stages"]
    assert res["meta"]["machine"]["cpus"] >= 1 and res["meta"]["machine"]["ram_gib"]
