"""A Spark application for tests/integration/test_spark_cluster.py: fit and score through the Spark
backend on the master given as argv[1] (a multi-process cluster), compare with the numpy scorer on
the same factors, and write what it saw to the JSON file argv[2]."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd


def main(master: str, out: str) -> None:
    from include.recsys.backends.base import get
    from include.recsys.config.settings import load_config
    from include.recsys.core.ids import encode
    from include.recsys.scoring.recommend import recommend, seen_matrix

    rng = np.random.default_rng(11)
    users = rng.integers(0, 300, 6000)
    items = (users * 5 + rng.integers(0, 15, 6000)) % 120
    events = pd.DataFrame({"user_id": [f"u{u:04d}" for u in users], "item_id": [f"i{i:04d}" for i in items],
                           "weight": np.ones(6000, np.float32),
                           "event_ts": pd.Timestamp("2024-01-01", tz="UTC")})
    coded, umap, imap = encode(events)
    path = Path(tempfile.mkdtemp()) / "train.parquet"
    coded.to_parquet(path)
    cfg = load_config({"factors": 8, "iterations": 4, "backend": "spark", "spark_master": master,
                       "spark_conf": {"spark.sql.shuffle.partitions": "6"}})
    engine = get(cfg.backend)
    bundle, stats = engine.fit(engine.read_training(cfg, str(path)), cfg, id_maps=(umap, imap))
    who = pd.Index(list(bundle.user_ids) + ["cold-user"])
    seen = seen_matrix(bundle, who, coded[["user_id", "item_id"]])
    got = engine.score(bundle, who, seen, 10, block_size=32, cfg=cfg)
    want = recommend(bundle, who, seen, 10, block_size=32)
    from pyspark.sql import SparkSession

    sc = SparkSession.getActiveSession().sparkContext
    executors = sc._jsc.sc().getExecutorMemoryStatus().size() - 1  # minus the driver
    leaked = sum(bool(set(seen[r].indices) & set(got.items[r][got.items[r] >= 0].tolist())) for r in range(len(who)))
    Path(out).write_text(json.dumps({
        "master": sc.master, "executors": executors, "app_id": sc.applicationId, "users": len(who), "nnz": stats.nnz,
        "items_equal": bool(np.array_equal(got.items, want.items)),
        # to float32 rounding (other GEMM blocks on the executors than on the driver)
        "scores_equal": bool(np.allclose(got.scores, want.scores, rtol=1e-6, atol=0)),
        "fallback_rows": int((~got.from_model).sum()), "seen_recommended": leaked,
    }))
    SparkSession.getActiveSession().stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
