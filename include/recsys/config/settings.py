"""One typed configuration for the whole pipeline.

Defaults come from the code, then from ``RECSYS_*`` environment variables (e.g.
``RECSYS_DATA_DIR``, ``RECSYS_FACTORS``), then from run-time overrides (the DAG's ``Param`` form).
Every stage receives the same :class:`PipelineConfig`; what was used is logged to MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from include.recsys.core.metric_key import parse_metric

PROJECT_ROOT = Path(__file__).resolve().parents[3]

#: The fields a person may override when triggering a run by hand (the DAG's Param form).
PARAM_FIELDS: tuple[str, ...] = (
    "factors",
    "regularization",
    "alpha",
    "iterations",
    "seed",
    "top_n",
    "window_days",
    "holdout_days",
    "dry_run",
    "source_path",
    "force_publish",
    "allow_older_data",
    "tune",
    "require_approval",
    "backend",
)


def _spec_primary_metric(path: Any) -> str:
    """The gate spec's ``primary_metric`` (the default of ``gate_metric``)."""
    from include.recsys.config.gate_spec import primary_metric_of

    return primary_metric_of(path or PROJECT_ROOT / "include" / "config" / "gate.yaml")


class PipelineConfig(BaseSettings):
    """Settings of one nightly run. Field docs are shown in the Airflow trigger form."""

    model_config = SettingsConfigDict(env_prefix="RECSYS_", extra="forbid", validate_default=True)

    # --- storage -------------------------------------------------------------------------
    data_dir: Path = Field(
        default=PROJECT_ROOT / "data",
        description="Root of the local lake: source data, per-run work folders, published tables.",
    )
    source_path: str = Field(
        default="",
        description="Interaction source (folder of date-partitioned Parquet, a CSV file or a "
        "MovieLens ratings.csv). Empty: <data_dir>/lake/interactions.",
    )
    source_format: Literal["parquet", "csv", "movielens"] = Field(
        default="parquet", description="Format of the interaction source."
    )
    user_segments_path: str = Field(
        default="",
        description="Optional user attributes (Parquet/CSV: user_id, segment) for segment "
        "popularity fallbacks. Empty: <data_dir>/lake/user_segments.parquet when it exists.",
    )
    recommendations_dir: str = Field(
        default="",
        description="Where versions and CURRENT live: a local folder, or an fsspec URL such as "
        "s3://bucket/prefix (options from RECSYS_STORAGE_OPTIONS / AWS_* env). "
        "Empty: <data_dir>/recommendations.",
    )
    keep_versions: PositiveInt = Field(
        default=5, description="Published versions kept on disk (CURRENT and its predecessor always)."
    )

    # --- snapshot ------------------------------------------------------------------------
    window_days: PositiveInt = Field(
        default=56, le=3650, description="Training window length, ending at the data interval end."
    )
    active_days: PositiveInt = Field(
        default=28, description="A user is active with >= active_min_events in the last active_days."
    )
    active_min_events: PositiveInt = Field(
        default=3, description="Minimum events in the activity period for a user to be kept."
    )
    event_weights: dict[str, float] = Field(
        default_factory=lambda: {"view": 1.0, "click": 2.0, "cart": 3.0, "purchase": 5.0},
        description="Confidence weight per event type (unlisted types weigh 1; an explicit "
        "weight/rating column wins).",
    )

    # --- split ---------------------------------------------------------------------------
    holdout_days: PositiveInt = Field(
        default=7, description="The last holdout_days of the window are held out for evaluation."
    )

    # --- model ---------------------------------------------------------------------------
    backend: Literal["implicit", "spark"] = Field(
        default="implicit",
        description="Training and scoring engine (backends.base.BACKENDS): implicit (CPU ALS on "
        "this machine) or spark (MLlib ALS and per-partition scoring on a Spark cluster).",
    )
    spark_master: str = Field(
        default="",
        description="Spark master for backend=spark: local[*], spark://host:7077, k8s://... "
        "Empty: the Airflow connection spark_default (its host), else local[*].",
    )
    spark_conf: dict[str, str] = Field(
        default_factory=dict,
        description="Extra Spark settings for backend=spark (e.g. spark.executor.memory), "
        "as JSON in RECSYS_SPARK_CONF; the spark_default connection's extra adds to them.",
    )
    model_family: Literal["als", "item_knn", "ease"] = Field(
        default="als",
        description="Model family (backends.families): als (implicit ALS), item_knn (implicit's "
        "BM25 / cosine / TF-IDF item-kNN) or ease (closed-form item-item, small catalogs only). "
        "Tuning picks one on the validation split; item-item families ignore the ALS fields.",
    )
    knn_kind: Literal["bm25", "cosine", "tfidf"] = Field(
        default="bm25", description="item_knn: the item similarity (implicit.nearest_neighbours)."
    )
    knn_k: PositiveInt = Field(default=100, le=5000, description="item_knn: neighbours kept per item.")
    knn_bm25_k1: float = Field(default=1.2, gt=0.0, le=10000.0, description="item_knn bm25: K1.")
    knn_bm25_b: float = Field(default=0.75, ge=0.0, le=1.0, description="item_knn bm25: B.")
    ease_lambda: float = Field(
        default=500.0, gt=0.0, le=1e7, description="ease: L2 penalty λ of (XᵀX + λI)⁻¹."
    )
    ease_max_items: PositiveInt = Field(
        default=16000,
        description="ease: refused above this many items (dense n² inverse: ~4 GiB and a few "
        "minutes at 16k on 2 cores, n³ time; see backends.families.EASE_MEASURED).",
    )
    factors: PositiveInt = Field(default=32, le=1024, description="ALS latent factors.")
    regularization: float = Field(default=1.0, ge=0.0, le=100.0, description="ALS L2 penalty.")
    alpha: float = Field(
        default=2.0, gt=0.0, le=1000.0, description="Confidence scaling: c = 1 + alpha * weight."
    )
    iterations: PositiveInt = Field(default=15, le=500, description="ALS sweeps.")
    seed: int = Field(default=42, ge=0, description="Random seed for ALS initialisation.")
    num_threads: int = Field(default=0, ge=0, description="ALS threads (0: all cores).")
    use_cg: bool = Field(
        default=True,
        description="ALS solver: conjugate gradient (fast) or Cholesky. Both are deterministic "
        "for a seed on CPU, whatever num_threads.",
    )

    # --- confidence (the user-item matrix ALS sees) --------------------------------------
    recency_half_life_days: float = Field(
        default=0.0,
        ge=0.0,
        le=3650.0,
        description="Recency decay of event weights: an event half_life days before the "
        "training cutoff counts half. 0: off.",
    )
    weighting: Literal["none", "bm25", "tfidf"] = Field(
        default="none", description="Re-weighting of the summed user-item matrix before ALS."
    )
    bm25_k1: float = Field(default=100.0, gt=0.0, le=10000.0, description="BM25 K1 (weighting=bm25).")
    bm25_b: float = Field(default=0.8, ge=0.0, le=1.0, description="BM25 B (weighting=bm25).")

    # --- tuning --------------------------------------------------------------------------
    tune: bool = Field(
        default=False,
        description="Run the hyperparameter search in this run, whatever the cadence says.",
    )
    tune_every_days: int = Field(
        default=7,
        ge=0,
        le=3650,
        description="Full tuning when the last tuned configuration is this many days older "
        "than the data interval (or none exists). 0: only when asked or on decay.",
    )
    tune_on_decay: bool = Field(
        default=True, description="Also tune when the previous run's gate verdict was FAIL."
    )
    tune_trials: int = Field(
        default=8, ge=1, le=256, description="Random-search budget: trials (mapped tasks)."
    )
    tune_families: list[Literal["als", "item_knn", "ease"]] = Field(
        default_factory=lambda: ["als", "item_knn", "ease"],
        min_length=1,
        description="Model families the search tries (trials after the incumbent go to them in "
        "turn); ease is left out above ease_max_items items.",
    )
    tune_validation_days: PositiveInt = Field(
        default=7,
        le=365,
        description="The last tune_validation_days before the gate's cutoff validate trials.",
    )
    tune_max_iterations: PositiveInt = Field(
        default=30, le=500, description="Iteration budget of a trial (early stopping inside)."
    )
    tune_patience: PositiveInt = Field(
        default=3, le=100, description="Early stopping: iterations without a better validation NDCG@10."
    )
    tune_max_eval_users: PositiveInt = Field(
        default=5000, description="Validation users evaluated per iteration (seeded sample)."
    )

    # --- evaluation and gate -------------------------------------------------------------
    ks: list[PositiveInt] = Field(default_factory=lambda: [10, 20], description="Cut-offs k.")
    recent_days: PositiveInt = Field(
        default=7,
        le=3650,
        description="Recent-popularity baseline: item popularity over the last recent_days "
        "of the training period.",
    )
    eval_heavy_quantile: float = Field(
        default=0.8,
        gt=0.0,
        lt=1.0,
        description="Activity slices: users with at least this quantile of training items per "
        "user (rounded up) are heavy, the other warm users light.",
    )
    eval_new_user_days: PositiveInt = Field(
        default=7,
        le=3650,
        description="User slices: a user whose first training event is within this many days "
        "before the split cutoff is new, else returning.",
    )
    eval_head_share: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="Item slices: the most popular items holding this share of the training "
        "(user, item) pairs are the head, the rest the tail.",
    )
    bootstrap_samples: PositiveInt = Field(
        default=1000, le=100_000, description="Paired bootstrap resamples (candidate vs others)."
    )
    bootstrap_confidence: float = Field(
        default=0.95, gt=0.5, lt=1.0, description="Confidence of the paired bootstrap intervals."
    )
    gate_spec_path: Path = Field(
        default=PROJECT_ROOT / "include" / "config" / "gate.yaml",
        description="The declarative gate spec (YAML, see include/recsys/validation/gate.py).",
    )
    # the explicit gate_* values below override the spec's (None: the spec decides)
    gate_metric: str = Field(
        default_factory=lambda data: _spec_primary_metric(data.get("gate_spec_path")),
        description="Primary metric the gate judges (default: the spec's primary_metric).",
    )
    gate_min_metric: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Override: absolute floor for the gate metric."
    )
    gate_min_lift_over_popularity: float | None = Field(
        default=None, ge=-1.0, description="Override: required relative lift over popularity."
    )
    gate_max_regression: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Override: tolerated relative drop vs the champion."
    )
    gate_min_users: PositiveInt | None = Field(
        default=None, description="Override: fewer evaluated users than this: verdict SKIPPED."
    )
    force_publish: bool = Field(
        default=False,
        description="Publish even when the gate FAILs or is SKIPPED (recorded loudly; the "
        "output validation still applies). For manual runs only.",
    )
    allow_older_data: bool = Field(
        default=False,
        description="Serve this run's table and champion even when its data ends before the "
        "data already served (a backfill or an older run's retry); recorded loudly in the "
        "commit log and Slack. Default: such a run succeeds but serves nothing (rollback is "
        "the normal way back).",
    )

    # --- human approval (issue 18) -------------------------------------------------------
    require_approval: bool = Field(
        default=False,
        description="Hold the release for a person: after the table is built and validated, "
        "the approve_release task waits for Approve / Reject (Airflow's Required Actions page). "
        "Reject or no answer in time: nothing is published. Off: nightly runs stay unattended.",
    )
    approval_timeout_hours: PositiveInt = Field(
        default=24, le=24 * 14, description="Hours to wait for an approval answer; then it counts as Reject."
    )

    # --- serving table -------------------------------------------------------------------
    top_n: PositiveInt = Field(default=20, le=1000, description="Recommendations per user.")
    score_block_size: PositiveInt = Field(
        default=1024, description="Users scored per GEMM block (bounds memory)."
    )
    shards: PositiveInt = Field(
        default=2, le=1024, description="User shards scored by parallel mapped tasks."
    )
    dry_run: bool = Field(default=False, description="Evaluate and gate, never publish.")

    # --- business rules and similar items (issue 19) --------------------------------------
    item_rules_path: str = Field(
        default="",
        description="Item availability / business rules (Parquet or CSV: item_id, available, "
        "optional available_from, available_until, category, allow_surfaces, deny_surfaces; "
        "see include/recsys/scoring/rules.py). Empty: no rules, every item may be recommended.",
    )
    item_rules_on_error: Literal["fail", "keep_previous"] = Field(
        default="fail",
        description="A missing, empty or malformed rules file: fail the run (nothing published), "
        "or keep_previous: use the last good copy under <data_dir>/rules (recorded in the manifest).",
    )
    item_rules_surface: str = Field(
        default="",
        description="The surface this table serves (e.g. home): applies the rules' allow/deny "
        "surface lists. Empty: surface lists are ignored.",
    )
    similar_items_k: int = Field(
        default=20, ge=0, le=1000, description="Similar items per item (0: no similar-items table)."
    )
    similar_items_engine: Literal["exact", "faiss"] = Field(
        default="exact",
        description="exact: the blocked top-k kernel; faiss: an approximate HNSW index (large catalogs).",
    )
    ab_variants: list[dict[str, Any]] = Field(
        default_factory=list,
        description='A/B variants (JSON list of {"name", "model": candidate | alias:<a> | version:<n>, '
        '"share"}); shares + ab_holdout_share sum to 1. Empty (default): one list per user, no '
        "variant column. See include/recsys/scoring/variants.py.",
    )
    ab_holdout_share: float = Field(
        default=0.0, ge=0.0, lt=1.0,
        description="Share of users held out of the experiment: they get the non-personalised "
        "(popularity) baseline.",
    )
    ab_salt: str = Field(
        default="",
        description="Salt of the user -> variant hash: keep it to keep users in their arm across "
        "nights; a new salt starts a new experiment.",
    )
    similar_items_dir: str = Field(
        default="",
        description="Where the similar-items table lives (folder or URL). Empty: similar_items "
        "beside the recommendations root.",
    )

    # --- MLflow --------------------------------------------------------------------------
    mlflow_tracking_uri: str = Field(
        default="", description="Tracking + registry URI. Empty: sqlite:///<data_dir>/mlflow/mlflow.db."
    )
    mlflow_experiment: str = Field(default="recsys-nightly", description="MLflow experiment.")
    model_name: str = Field(default="recsys_als", description="Registered model name.")

    @field_validator("ks")
    @classmethod
    def _ks_sorted(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("ks must name at least one cut-off")
        return sorted(set(v))

    @model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        if self.holdout_days >= self.window_days:
            raise ValueError(
                f"holdout_days ({self.holdout_days}) must be smaller than window_days "
                f"({self.window_days})"
            )
        try:
            k = parse_metric(self.gate_metric)[1]
        except ValueError:
            k = None
        if k not in self.ks:
            raise ValueError(f"gate_metric {self.gate_metric!r} must be '<metric>@k' with k in ks {self.ks}")
        if self.model_family != "als" and self.backend != "implicit":
            raise ValueError(
                f"model_family={self.model_family} runs on the implicit backend only (backend={self.backend} "
                "trains ALS): set backend=implicit or model_family=als"
            )
        return self

    @model_validator(mode="after")
    def _variants_valid(self) -> PipelineConfig:
        if self.ab_variants or self.ab_holdout_share:  # the default stays import-light (DAG parsing)
            from include.recsys.config.variants import parse

            parse(self.ab_variants, self.ab_holdout_share, self.ab_salt)  # raises ValueError naming the problem
        return self

    @property
    def variant_plan(self) -> Any:
        """The A/B :class:`~include.recsys.scoring.variants.VariantPlan`, None without variants."""
        if not (self.ab_variants or self.ab_holdout_share):
            return None
        from include.recsys.config.variants import parse

        return parse(self.ab_variants, self.ab_holdout_share, self.ab_salt)

    # --- derived locations ---------------------------------------------------------------
    @property
    def source(self) -> Path:
        return Path(self.source_path) if self.source_path else self.data_dir / "lake" / "interactions"

    @property
    def segments_source(self) -> Path | None:
        if self.user_segments_path:
            return Path(self.user_segments_path)
        default = self.data_dir / "lake" / "user_segments.parquet"
        return default if default.exists() else None

    @property
    def recommendations_root(self) -> Path | str:
        """A ``Path`` for a local folder; the URL (``str``) for an object store."""
        if not self.recommendations_dir:
            return self.data_dir / "recommendations"
        from include.recsys.core.uri import normalize

        return normalize(self.recommendations_dir)

    @property
    def similar_items_root(self) -> Path | str:
        """The similar-items table's root (``similar_items_dir``, else beside the recommendations)."""
        from include.recsys.core.uri import similar_root

        return similar_root(self.recommendations_root, self.similar_items_dir)

    @property
    def runs_root(self) -> Path:
        return self.data_dir / "runs"

    @property
    def tracking_uri(self) -> str:
        """``RECSYS_MLFLOW_TRACKING_URI``, else the standard ``MLFLOW_TRACKING_URI``, else the
        local SQLite DB under ``data_dir`` (artifacts beside it)."""
        import os

        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        return f"sqlite:///{(self.data_dir / 'mlflow' / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        return self.data_dir / "mlflow" / "artifacts"

    @property
    def max_k(self) -> int:
        return max(self.ks)

    def with_overrides(self, overrides: dict[str, Any] | None) -> PipelineConfig:
        """Return a copy with the non-null overrides applied and validated again."""
        if not overrides:
            return self
        unknown = set(overrides) - set(type(self).model_fields)
        if unknown:
            raise ValueError(f"unknown config field(s): {sorted(unknown)}")
        data = self.model_dump()
        data.update({k: v for k, v in overrides.items() if v is not None})
        return type(self).model_validate(data)

    def params_for_mlflow(self) -> dict[str, str]:
        """Flat string params for ``mlflow.log_params`` (paths and URIs left out)."""
        skip = {"data_dir", "mlflow_tracking_uri", "recommendations_dir", "item_rules_path", "similar_items_dir"}
        return {k: str(v) for k, v in self.model_dump().items() if k not in skip}


def load_config(overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Config from defaults + environment, then the given overrides (e.g. DAG params)."""
    return PipelineConfig().with_overrides(overrides)


def param_specs() -> dict[str, dict[str, Any]]:
    """JSON-schema specs (type, bounds, description, current default) of the overridable fields.

    The DAG turns each into an Airflow ``Param``, so the trigger form shows the same bounds
    and help text that the config validates.
    """
    props = PipelineConfig.model_json_schema()["properties"]
    current = PipelineConfig()
    keys = ("type", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "description")
    specs = {
        name: {
            "default": getattr(current, name),
            **{k: props[name][k] for k in keys if k in props[name]},
            "title": props[name].get("title", name),
        }
        for name in PARAM_FIELDS
    }
    for spec in specs.values():
        # An empty string means "use the derived default" (e.g. source_path): the field is
        # optional. Airflow's trigger form treats every non-nullable type as required and
        # keeps the Trigger button disabled while it is empty, so mark it nullable.
        if spec.get("type") == "string" and spec["default"] == "":
            spec["type"] = ["string", "null"]
    return specs
