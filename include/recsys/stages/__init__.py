"""One module per DAG task. Each stage is a plain function ``(cfg, rc, *inputs) -> dict`` that
reads the paths its inputs name, writes under the run's work folder and returns paths and
numbers (what travels through XCom). Stages never import each other; what two of them share
lives in ``_shared`` or in the packages below."""

# task id -> "module:function" of the stage it runs (benchmarks instrument stages through it;
# strings, so importing this package imports no stage)
TASKS = {
    "snapshot": "include.recsys.stages.snapshot:snapshot",
    "validate_input": "include.recsys.stages.validate_input:validate_input",
    "split": "include.recsys.stages.split:split",
    "plan_trials": "include.recsys.stages.tune:plan_trials",
    "run_trial": "include.recsys.stages.tune:run_trial",
    "select_best": "include.recsys.stages.tune:select_best",
    "train": "include.recsys.stages.train:train",
    "evaluate": "include.recsys.stages.evaluate:evaluate",
    "gate": "include.recsys.stages.gate:gate",
    "register": "include.recsys.stages.register:register",
    "plan_shards": "include.recsys.stages.shards:plan_shards",
    "score_shard": "include.recsys.stages.shards:score_shard",
    "assemble_version": "include.recsys.stages.assemble:assemble_version",
    "validate_output": "include.recsys.stages.validate_output:validate_output",
    "similar_items": "include.recsys.stages.similar:similar_items",
    "publish": "include.recsys.stages.publish:publish",
}
