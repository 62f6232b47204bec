"""Run the nightly DAG's stages in one process, in the DAG's order (tests and benchmarks only:
the DAG maps shards and trials over workers instead)."""

from __future__ import annotations

from typing import Any

from include.recsys import pipeline
from include.recsys.config import PipelineConfig
from include.recsys.pipeline import RunContext

ORDER = ("snapshot", "validate_input", "split", "tune", "train", "evaluate", "gate", "register",
         "shards", "validate_output", "similar_items", "publish")


def run_stages(cfg: PipelineConfig, rc: RunContext, *, until: str = "publish") -> dict[str, Any]:
    """Every stage up to and including ``until``; returns each stage's XCom value by name
    (``snap``, ``checked``, ``parts``, ``best``, ``model``, ``ev``, ``verdict``, ``reg``, ``pre``,
    ``checked_out``, ``similar``, ``pub``)."""
    stop = ORDER.index(until)
    out: dict[str, Any] = {}

    def step(name: str) -> bool:
        return ORDER.index(name) <= stop

    out["snap"] = pipeline.snapshot(cfg, rc)
    if step("validate_input"):
        out["checked"] = pipeline.validate_input(cfg, rc, out["snap"])
    if step("split"):
        out["parts"] = pipeline.split(cfg, rc, out["snap"])
    if step("tune"):
        trials = pipeline.plan_trials(cfg, rc, out["parts"], out["snap"])
        results = [pipeline.run_trial(cfg, rc, t) for t in trials]
        out["trials"] = results
        out["best"] = pipeline.select_best(cfg, rc, trials)
    if step("train"):
        out["model"] = pipeline.train(cfg, rc, out["parts"], out["snap"], out["best"])
    if step("evaluate"):
        out["ev"] = pipeline.evaluate(cfg, rc, out["parts"], out["model"])
    if step("gate"):
        out["verdict"] = pipeline.gate(cfg, rc, out["ev"], out["model"], out["snap"], out["parts"])
    if step("register"):
        out["reg"] = pipeline.register(cfg, rc, out["model"])
    if step("shards"):
        shards = pipeline.plan_shards(cfg, rc, out["snap"])
        parts = [pipeline.score_shard(cfg, rc, out["snap"], out["model"], out["reg"], s) for s in shards]
        out["pre"] = pipeline.assemble_version(
            cfg, rc, out["snap"], out["model"], out["reg"], out["ev"], out["verdict"], parts)
    if step("validate_output"):
        out["checked_out"] = pipeline.validate_output(cfg, rc, out["snap"], out["pre"])
    if step("similar_items"):
        out["similar"] = pipeline.similar_items(cfg, rc, out["snap"], out["model"], out["reg"])
    if step("publish"):
        out["pub"] = pipeline.publish(cfg, rc, out["pre"], out["reg"], out["model"])
    return out
