"""The Spark backend (``backend=spark``): MLlib's ALS fit and per-partition scoring on a cluster.

The same seam as :mod:`include.recsys.backends.implicit` (read the training split, fit, score
every user), so evaluation, the gate, the registry, the versioned table and its commit protocol
do not know which engine ran: the result is the same :class:`ModelBundle` (factors + the
snapshot's id maps + popularity + the seen filter) and :class:`Recommendations`.

Where the work runs
    The training split is read by Spark from its Parquet file, the leak check, the confidence
    values (event weights x recency decay, summed per pair, BM25 / TF-IDF re-weighting) and the
    ALS fit run on the cluster; the driver collects the aggregated pairs once (the bundle's seen
    filter and popularity) and the factors. Scoring ships each user's factor row and seen list
    through a shuffle to the executors, which run our blocked numpy kernel
    (:func:`include.recsys.scoring.recommend.recommend`: seen filtered, allowed mask, segment or
    global popularity fallback) against broadcast item factors, per Arrow batch
    (``mapInArrow``); MLlib's ``recommendForAllUsers`` is not used (it does not filter seen items).

Parameter mapping (implicit -> MLlib ``ALS(implicitPrefs=True)``)
    ``factors`` -> ``rank``, ``iterations`` -> ``maxIter``, ``seed`` -> ``seed``. Confidence is
    the same on both: implicit uses ``c = 1 + alpha * r`` (it scales the matrix by alpha) and
    MLlib ``c = 1 + alpha * |r|`` on the same values ``r`` (all positive here), preference 1.
    Regularization differs in form: implicit adds ``lambda * |x|^2`` to every row's normal
    equations, MLlib adds ``regParam * n_row * |x|^2`` where ``n_row`` is the row's number of
    ratings (ALS-WR). No single regParam is exact; :func:`als_params` uses
    ``regParam = lambda * max(users, items) / ratings``: the average row of the larger side (most
    of the solves) gets implicit's penalty, the smaller side's rows (more ratings each) a
    stronger one. Measured on movielens-latest-small (per-user temporal 80/20, factors 64, 10
    iterations, lambda 1, alpha 2): NDCG@10 0.1087 vs implicit 0.1082 with this mapping, 0.1028
    with lambda over the geometric mean of both sides' ratings per row, 0.1028 with lambda over
    the ratings per user; the parity test checks it.

Sessions
    ``cfg.spark_master`` (``local[*]``, ``local-cluster[...]``, ``spark://host:7077``,
    ``k8s://...``; the DAG fills it from the Airflow connection ``spark_default``) and
    ``cfg.spark_conf``. One session per process (``getOrCreate``); on a real cluster the
    ``include`` package is shipped to the executors as a zip (``addPyFile``).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.recsys.config.settings import PipelineConfig
from include.recsys.core.ids import IdMap, compact_codes, csr_from_codes
from include.recsys.errors import EngineError, TrainingError
from include.recsys.scoring.bundle import ModelBundle, id_maps_sha256
from include.recsys.scoring.recommend import Recommendations

log = logging.getLogger(__name__)

#: Spark settings the backend sets unless ``cfg.spark_conf`` says otherwise.
DEFAULT_CONF = {
    "spark.app.name": "recsys-nightly",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.shuffle.partitions": "8",
    "spark.ui.showConsoleProgress": "false",
    "spark.ui.enabled": "false",
}


def master_of(cfg: PipelineConfig) -> str:
    return cfg.spark_master or "local[*]"


def _ships_code(master: str) -> bool:
    """Executors of anything but in-process ``local``/``local[n]`` run elsewhere: ship the code."""
    return not (master == "local" or master.startswith("local["))


def _package_zip() -> str:
    """A zip of the ``include`` package (what executors import) in a temporary folder."""
    import tempfile

    root = Path(__file__).resolve().parents[3]  # the folder that holds include/
    base = Path(tempfile.mkdtemp(prefix="recsys-pyfiles-")) / "include"
    return shutil.make_archive(str(base), "zip", root_dir=root, base_dir="include")


def session(cfg: PipelineConfig):
    """The process's Spark session for ``cfg`` (created on first use, then reused)."""
    if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
        raise EngineError(
            "backend=spark needs a Java 17 runtime (java on PATH or JAVA_HOME); install one "
            "(Debian: openjdk-17-jre-headless) or use backend=implicit"
        )
    from pyspark.sql import SparkSession

    # py4j logs every gateway connection at INFO (and once more at interpreter exit, after the
    # log handlers are closed): keep its warnings only
    logging.getLogger("py4j").setLevel(logging.WARNING)
    master = master_of(cfg)
    active = SparkSession.getActiveSession()
    if active is not None:
        if active.sparkContext.master != master and cfg.spark_master:
            log.warning("a Spark session on %s is already running in this process; %s is not "
                        "used (one session per process)", active.sparkContext.master, master)
        return active
    builder = SparkSession.builder.master(master)
    conf = {**DEFAULT_CONF, **cfg.spark_conf}
    # the Python that runs our kernel in the executors: the driver's own (same packages) unless
    # the deployment names another (its image must hold the project's requirements)
    os.environ.setdefault("PYSPARK_PYTHON", conf.get("spark.pyspark.python", sys.executable))
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if _ships_code(master):
        spark.sparkContext.addPyFile(_package_zip())
    log.info("Spark session on %s (Spark %s, default parallelism %d)", master, spark.version,
             spark.sparkContext.defaultParallelism)
    return spark


def als_params(cfg: PipelineConfig, nnz: int, n_users: int, n_items: int) -> dict[str, Any]:
    """MLlib ``ALS`` arguments for the config (see the module docstring for the mapping)."""
    per_row = nnz / max(n_users, n_items, 1) if nnz else 1.0  # ratings per row, larger side
    return {
        "rank": cfg.factors,
        "maxIter": cfg.iterations,
        "regParam": cfg.regularization / max(per_row, 1e-12),
        "alpha": cfg.alpha,
        "implicitPrefs": True,
        "nonnegative": False,
        "seed": cfg.seed,
    }


def read_training(cfg: PipelineConfig, path: str, *, cutoff: pd.Timestamp | None = None):
    """The training split as a Spark DataFrame (codes, weight, event_ts), leak-checked on Spark."""
    from pyspark.sql import functions as F

    from include.recsys.core.ids import require_codes

    require_codes(path)
    df = session(cfg).read.parquet(str(path))
    missing = sorted({"user_idx", "item_idx", "weight"} - set(df.columns))
    if missing:
        raise TrainingError(f"training split {path} lacks column(s) {missing}")
    if cutoff is not None and "event_ts" in df.columns:
        late = df.filter(F.col("event_ts") >= F.lit(pd.Timestamp(cutoff).to_pydatetime())).count()
        if late:
            raise TrainingError(
                f"{late} training event(s) at or after the cutoff {cutoff}: the evaluation period "
                "would leak into training"
            )
    return df


def confidence_pairs(df, cfg: PipelineConfig, cutoff: pd.Timestamp | None):
    """(user_idx, item_idx, seen, value): summed plain weights (the seen filter) and the
    confidence values ALS fits (the same steps as :func:`weighting.confidence_matrix`)."""
    from pyspark.sql import functions as F

    from include.recsys.backends.weighting import MIN_WEIGHT

    w = F.col("weight").cast("double")
    if cfg.recency_half_life_days > 0:
        ref = F.lit(pd.Timestamp(cutoff).to_pydatetime()) if cutoff is not None else F.max("event_ts").over(
            __import__("pyspark.sql.window", fromlist=["Window"]).Window.partitionBy()
        )
        age = (ref.cast("double") - F.col("event_ts").cast("double")) / 86400.0
        w = F.greatest(w * F.pow(F.lit(0.5), age / cfg.recency_half_life_days), F.lit(MIN_WEIGHT))
    pairs = df.groupBy("user_idx", "item_idx").agg(
        F.sum(F.col("weight").cast("double")).alias("seen"), F.sum(w).alias("value")
    )
    if cfg.weighting == "none":
        return pairs
    # implicit's bm25_weight / tfidf_weight on the item x user matrix: N = items,
    # idf of a user = log(N) - log1p(items the user has), length = an item's summed value
    n_items = pairs.select("item_idx").distinct().count()
    per_user = pairs.groupBy("user_idx").agg(F.count("*").alias("user_items"))
    pairs = pairs.join(per_user, "user_idx")
    idf = F.log(F.lit(float(n_items))) - F.log1p(F.col("user_items").cast("double"))
    if cfg.weighting == "tfidf":
        value = F.sqrt(F.col("value")) * idf
    else:
        lengths = pairs.groupBy("item_idx").agg(F.sum("value").alias("item_len"))
        avg = lengths.agg(F.avg("item_len")).first()[0]
        pairs = pairs.join(lengths, "item_idx")
        k1, b = cfg.bm25_k1, cfg.bm25_b
        norm = (1.0 - b) + b * F.col("item_len") / F.lit(avg)
        value = F.col("value") * (k1 + 1.0) / (k1 * norm + F.col("value")) * idf
    return pairs.select(
        "user_idx", "item_idx", "seen", F.greatest(value, F.lit(MIN_WEIGHT)).alias("value")
    )


def _compact(codes: np.ndarray, id_map: IdMap, name: str) -> tuple[IdMap, np.ndarray]:
    """The ids of the snapshot map that the codes use (sorted) and each code's index into them."""
    if len(codes) and int(codes.max()) >= len(id_map):
        raise TrainingError(
            f"{name}_idx holds {int(codes.max())}, beyond the {len(id_map)} ids of the {name} id map: "
            "the split and the id maps come from different snapshots"
        )
    present, idx = compact_codes(codes, len(id_map), np.int64)
    return IdMap(id_map.ids if present.all() else id_map.ids[present]), idx


def _factors(frame, codes: np.ndarray, rank: int) -> np.ndarray:
    """MLlib's (id, features) factor frame as float32 rows ordered like ``codes`` (sorted)."""
    table = frame.toArrow()
    ids = table["id"].to_numpy()
    feats = np.asarray(table["features"].combine_chunks().flatten(), dtype=np.float32).reshape(-1, rank)
    pos = np.searchsorted(codes, ids)
    if len(ids) != len(codes) or not np.array_equal(codes[pos], ids):
        raise TrainingError(f"Spark ALS returned factors for {len(ids)} ids, expected {len(codes)}")
    out = np.empty((len(codes), rank), dtype=np.float32)
    out[pos] = feats
    return out


def fit(
    train_df,
    cfg: PipelineConfig,
    segments: pd.Series | None = None,
    *,
    id_maps: tuple[IdMap, IdMap],
    cutoff: pd.Timestamp | None = None,
):
    """MLlib ALS on the training events (a Spark DataFrame from :func:`read_training`)."""
    from pyspark.ml.recommendation import ALS

    from include.recsys.backends.implicit import TrainStats, check_finite, segment_popularity

    if cfg.model_family != "als":
        raise EngineError(
            f"backend=spark trains ALS (MLlib) only; model_family={cfg.model_family} runs on "
            "backend=implicit. Set model_family=als, or backend=implicit for the item-item families"
        )
    t0 = time.perf_counter()
    pairs = confidence_pairs(train_df, cfg, cutoff).cache()
    local = pairs.toArrow()  # one pass: the seen filter, popularity and the trained id maps
    u_codes, i_codes = local["user_idx"].to_numpy(), local["item_idx"].to_numpy()
    users, u = _compact(u_codes, id_maps[0], "user")
    items, i = _compact(i_codes, id_maps[1], "item")
    seen = csr_from_codes(u, i, local["seen"].to_numpy().astype(np.float32), (len(users), len(items)))
    popularity = np.bincount(seen.indices, minlength=len(items)).astype(np.int64)
    params = als_params(cfg, seen.nnz, len(users), len(items))
    t1 = time.perf_counter()
    model = ALS(userCol="user_idx", itemCol="item_idx", ratingCol="value", **params).fit(pairs)
    fit_s = time.perf_counter() - t1
    uf = _factors(model.userFactors, np.unique(u_codes), cfg.factors)
    vf = _factors(model.itemFactors, np.unique(i_codes), cfg.factors)
    pairs.unpersist()
    check_finite({"user factor": uf, "item factor": vf}, cfg)
    bundle = ModelBundle(
        user_ids=users.ids, item_ids=items.ids, user_factors=uf, item_factors=vf,
        item_popularity=popularity, seen=seen, id_maps_hash=id_maps_sha256(users.ids, items.ids),
    )
    if segments is not None:
        bundle.segment_ids, bundle.segment_popularity = segment_popularity(seen, users, segments)
    stats = TrainStats(len(users), len(items), int(seen.nnz), fit_s, time.perf_counter() - t0, cfg.iterations)
    log.info(
        "Spark ALS fit on %s: %d users x %d items, %d non-zeros, rank=%d, maxIter=%d, regParam=%.4g "
        "(lambda=%s), alpha=%s, weighting=%s, in %.2fs; total with data preparation %.2fs",
        train_df.sparkSession.sparkContext.master, stats.users, stats.items, stats.nnz, params["rank"], params["maxIter"],
        params["regParam"], cfg.regularization, cfg.alpha, cfg.weighting, fit_s, stats.total_seconds,
    )
    return bundle, stats


_OUT_SCHEMA = "row long, items array<int>, scores array<float>, from_model boolean"


def _score_batches(shared, n: int, block_size: int):
    """The ``mapInArrow`` function: each Arrow batch of users scored by our numpy kernel."""

    def run(batches):
        import pyarrow as pa
        import scipy.sparse as sp

        from include.recsys.scoring.recommend import recommend

        p = shared.value
        item_factors, n_items = p["item_factors"], p["item_factors"].shape[0]
        for batch in batches:
            rows = batch.column("row").to_numpy()
            known = batch.column("known").to_numpy(zero_copy_only=False)
            vec = batch.column("vec")
            uf = np.asarray(vec.flatten(), dtype=np.float32).reshape(len(rows), -1)
            seen_col = batch.column("seen")
            indptr = np.asarray(seen_col.offsets, dtype=np.int64) - seen_col.offsets[0].as_py()
            indices = np.asarray(seen_col.flatten(), dtype=np.int32)
            seen = sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(len(rows), n_items))
            mini = ModelBundle(
                user_ids=pd.Index(rows[known]), item_ids=pd.RangeIndex(n_items),
                user_factors=uf[known], item_factors=item_factors,
                item_popularity=p["popularity"], segment_ids=p["segment_ids"],
                segment_popularity=p["segment_popularity"],
            )
            segs = batch.column("segment").to_pandas()
            user_segments = pd.Series(segs.to_numpy(), index=rows) if segs.notna().any() else None
            recs = recommend(mini, pd.Index(rows), seen, n, block_size=block_size,
                             user_segments=user_segments, allowed=p["allowed"])
            yield pa.RecordBatch.from_arrays(
                [
                    pa.array(rows, pa.int64()),
                    pa.FixedSizeListArray.from_arrays(pa.array(recs.items.ravel(), pa.int32()), n).cast(pa.list_(pa.int32())),
                    pa.FixedSizeListArray.from_arrays(pa.array(recs.scores.ravel(), pa.float32()), n).cast(pa.list_(pa.float32())),
                    pa.array(recs.from_model, pa.bool_()),
                ],
                names=["row", "items", "scores", "from_model"],
            )

    return run


def score(
    bundle: ModelBundle,
    users: pd.Index,
    seen,
    n: int,
    *,
    block_size: int = 1024,
    user_segments: pd.Series | None = None,
    allowed: np.ndarray | None = None,
    cfg: PipelineConfig | None = None,
) -> Recommendations:
    """Top-``n`` of every user, scored per partition on the cluster (see the module docstring)."""
    import pyarrow as pa

    from include.recsys.scoring.recommend import seen_matrix

    t0 = time.perf_counter()
    bundle.verify_id_maps()
    users = pd.Index(users)
    seen_csr = seen_matrix(bundle, users, seen)
    spark = session(cfg or PipelineConfig())
    uidx = bundle.user_ids.get_indexer(users)
    known = uidx >= 0
    rank = bundle.user_factors.shape[1]
    vecs = np.zeros((len(users), rank), dtype=np.float32)
    vecs[known] = bundle.user_factors[uidx[known]]
    segs = user_segments.reindex(users).to_numpy(dtype=object) if user_segments is not None else None
    table = pa.table({
        "row": pa.array(np.arange(len(users), dtype=np.int64)),
        "known": pa.array(known),
        "vec": pa.ListArray.from_arrays(pa.array(np.arange(len(users) + 1, dtype=np.int32) * rank), pa.array(vecs.ravel())),
        "seen": pa.ListArray.from_arrays(pa.array(seen_csr.indptr.astype(np.int32)), pa.array(seen_csr.indices.astype(np.int32))),
        "segment": pa.array(segs if segs is not None else [None] * len(users), pa.string()),
    })
    shared = spark.sparkContext.broadcast({
        "item_factors": np.ascontiguousarray(bundle.item_factors, dtype=np.float32),
        "popularity": bundle.item_popularity,
        "segment_ids": bundle.segment_ids,
        "segment_popularity": bundle.segment_popularity,
        "allowed": None if allowed is None else np.asarray(allowed, dtype=bool),
    })
    parts = max(1, min(spark.sparkContext.defaultParallelism * 2, -(-len(users) // max(block_size, 1))))
    frame = spark.createDataFrame(table).repartition(parts)
    out = frame.mapInArrow(_score_batches(shared, n, block_size), _OUT_SCHEMA).toArrow()
    shared.unpersist()
    order = np.argsort(out["row"].to_numpy(), kind="stable")
    if len(order) != len(users):
        raise TrainingError(f"Spark scoring returned {len(order)} rows for {len(users)} users")
    items = np.asarray(out["items"].combine_chunks().flatten(), dtype=np.int32).reshape(-1, n)[order]
    scores = np.asarray(out["scores"].combine_chunks().flatten(), dtype=np.float32).reshape(-1, n)[order]
    from_model = out["from_model"].to_numpy(zero_copy_only=False)[order]
    dt = time.perf_counter() - t0
    log.info("Spark scored %d users (%d by the model) in %d partition(s), top %d, in %.2fs",
             len(users), int(from_model.sum()), parts, n, dt)
    return Recommendations(users, items, scores, from_model)


class SparkBackend:
    """MLlib ALS + per-partition scoring with our kernel (module docstring)."""

    name = "spark"

    @staticmethod
    def read_training(cfg: PipelineConfig, path: str, *, cutoff: pd.Timestamp | None = None):
        return read_training(cfg, path, cutoff=cutoff)

    @staticmethod
    def fit(train_df, cfg: PipelineConfig, segments: pd.Series | None = None, *,
            id_maps: tuple[IdMap, IdMap], cutoff: pd.Timestamp | None = None):
        return fit(train_df, cfg, segments, id_maps=id_maps, cutoff=cutoff)

    @staticmethod
    def score(bundle: ModelBundle, users: pd.Index, seen, n: int, **kw) -> Recommendations:
        return score(bundle, users, seen, n, **kw)


BACKEND = SparkBackend()
