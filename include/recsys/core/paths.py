"""Every file and folder of a run's work folder, named in one place.

A run writes under ``<runs_root>/<interval>/<run>/`` (:meth:`RunContext.work_dir`); stages,
the run card, the demo and the CLI find each other's outputs through :class:`RunPaths`
instead of spelling the same relative paths again."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PUBLISH_OUTCOME = "publish.json"  # served, or why not (found across runs by reporting.summary)


@dataclass(frozen=True)
class RunPaths:
    """The layout of one run's work folder ``work``."""

    work: Path

    # snapshot: the window's events with int32 codes into the sorted id maps beside them
    @property
    def snapshot_dir(self) -> Path:
        return self.work / "snapshot"

    @property
    def snapshot(self) -> Path:
        return self.snapshot_dir / "interactions.parquet"

    @property
    def snapshot_users(self) -> Path:
        return self.snapshot_dir / "users.parquet"

    @property
    def snapshot_items(self) -> Path:
        return self.snapshot_dir / "items.parquet"

    # split: the training period and the gate's holdout
    @property
    def split_dir(self) -> Path:
        return self.work / "split"

    @property
    def split_train(self) -> Path:
        return self.split_dir / "train.parquet"

    @property
    def split_holdout(self) -> Path:
        return self.split_dir / "holdout.parquet"

    @property
    def tuning(self) -> Path:
        return self.work / "tuning"

    # model: the trained bundle and the serving copy (seen rows of the whole window)
    @property
    def model_bundle(self) -> Path:
        return self.work / "model" / "bundle"

    @property
    def serving_bundle(self) -> Path:
        return self.work / "model" / "serving_bundle"

    @property
    def champion(self) -> Path:
        return self.work / "champion"

    # evaluation and gate
    @property
    def eval_dir(self) -> Path:
        return self.work / "eval"

    @property
    def eval_report(self) -> Path:
        return self.eval_dir / "report.json"

    @property
    def gate(self) -> Path:
        return self.work / "gate.json"

    # validation reports and Data Docs (input, output, similar items)
    @property
    def validation(self) -> Path:
        return self.work / "validation"

    @property
    def input_report(self) -> Path:
        return self.validation / "input_report.json"

    @property
    def output_report(self) -> Path:
        return self.validation / "output_report.json"

    @property
    def similar_report(self) -> Path:
        return self.validation / "similar_items_report.json"

    @property
    def data_docs(self) -> Path:
        return self.validation / "data_docs"

    # scoring: shard plans, seen rows per shard, frozen rules, variant bundles
    @property
    def precompute(self) -> Path:
        return self.work / "precompute"

    @property
    def precompute_users(self) -> Path:
        return self.precompute / "users.parquet"

    @property
    def rules(self) -> Path:
        return self.work / "rules"

    @property
    def variants(self) -> Path:
        return self.work / "variants"

    # publish: the outcome and the served table's manifest (a copy for the MLflow run)
    @property
    def publish_outcome(self) -> Path:
        return self.work / PUBLISH_OUTCOME

    @property
    def table_dir(self) -> Path:
        return self.work / "table"

    # what people read
    @property
    def run_card(self) -> Path:
        return self.work / "run_card.html"

    @property
    def run_card_data(self) -> Path:
        return self.work / "run_card.json"

    @property
    def summary(self) -> Path:
        return self.work / "summary.json"

    @property
    def demo_log(self) -> Path:
        return self.work / "demo.log"
