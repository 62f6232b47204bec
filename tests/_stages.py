"""Run the nightly DAG's stages in one process, in the DAG's order (tests only: the DAG maps
shards and trials over workers instead)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from include.recsys.cli._console import Out
from include.recsys.cli._summary import render_summary
from include.recsys.config.settings import PipelineConfig
from include.recsys.core.run import RunContext
from include.recsys.stages.assemble import assemble_version
from include.recsys.stages.evaluate import evaluate
from include.recsys.stages.gate import gate
from include.recsys.stages.publish import publish
from include.recsys.stages.register import register
from include.recsys.stages.shards import plan_shards, score_shard
from include.recsys.stages.similar import similar_items
from include.recsys.stages.snapshot import snapshot
from include.recsys.stages.split import split
from include.recsys.stages.train import train
from include.recsys.stages.tune import plan_trials, run_trial, select_best
from include.recsys.stages.validate_input import validate_input
from include.recsys.stages.validate_output import validate_output

ORDER = ("snapshot", "validate_input", "split", "tune", "train", "evaluate", "gate", "register",
         "shards", "validate_output", "similar_items", "publish")


def precompute(cfg: PipelineConfig, rc: RunContext, snap: dict, model: dict, reg: dict, ev: dict,
               verdict: dict) -> dict[str, Any]:
    """plan_shards -> score_shard for each shard -> assemble_version."""
    parts = [score_shard(cfg, rc, snap, model, reg, s) for s in plan_shards(cfg, rc, snap)]
    return assemble_version(cfg, rc, snap, model, reg, ev, verdict, parts)


def run_stages(cfg: PipelineConfig, rc: RunContext, *, until: str = "publish") -> dict[str, Any]:
    """Every stage up to and including ``until``; returns each stage's XCom value by name
    (``snap``, ``checked``, ``parts``, ``best``, ``model``, ``ev``, ``verdict``, ``reg``, ``pre``,
    ``checked_out``, ``similar``, ``pub``)."""
    stop = ORDER.index(until)
    out: dict[str, Any] = {}

    def step(name: str) -> bool:
        return ORDER.index(name) <= stop

    out["snap"] = snapshot(cfg, rc)
    if step("validate_input"):
        out["checked"] = validate_input(cfg, rc, out["snap"])
    if step("split"):
        out["parts"] = split(cfg, rc, out["snap"])
    if step("tune"):
        trials = plan_trials(cfg, rc, out["parts"], out["snap"])
        out["trials"] = [run_trial(cfg, rc, t) for t in trials]
        out["best"] = select_best(cfg, rc, trials)
    if step("train"):
        out["model"] = train(cfg, rc, out["parts"], out["snap"], out["best"])
    if step("evaluate"):
        out["ev"] = evaluate(cfg, rc, out["parts"], out["model"])
    if step("gate"):
        out["verdict"] = gate(cfg, rc, out["ev"], out["model"], out["snap"], out["parts"])
    if step("register"):
        out["reg"] = register(cfg, rc, out["model"])
    if step("shards"):
        out["pre"] = precompute(cfg, rc, out["snap"], out["model"], out["reg"], out["ev"], out["verdict"])
    if step("validate_output"):
        out["checked_out"] = validate_output(cfg, rc, out["snap"], out["pre"])
    if step("similar_items"):
        out["similar"] = similar_items(cfg, rc, out["snap"], out["model"], out["reg"])
    if step("publish"):
        out["pub"] = publish(cfg, rc, out["pre"], out["reg"], out["model"])
    return out


def summary_text(summary: dict[str, Any]) -> str:
    """The demo's end-of-run screen for ``summary``, as plain text."""
    buf = io.StringIO()
    render_summary(Out(buf, rich=False), summary, state="success", seconds=0.0, failures=[],
                   work_dir=Path(summary.get("work_dir") or "."), log_path=None,
                   served=(summary.get("published") or {}).get("version"))
    return buf.getvalue()
