"""Read-side latency: open a 100k-user x 100-item table, then single-user lookups.

    .venv/bin/python -m bench.reader [--users 100000 --n 100 --lookups 20000]

Reports the open time (first call: manifest, Parquet, index) and p50 / p99 / max of
``RecommendationStore.recommend(user_id)`` for random known and unknown users, in-process.
Target: p99 under 1 ms.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def main(argv: list[str] | None = None) -> int:
    from include.recsys.tables.current import point_current
    from include.recsys.tables.reader import RecommendationStore
    from include.recsys.tables.versions import write_version

    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--lookups", type=int, default=20_000)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    root = Path(tempfile.mkdtemp(prefix="recsys-bench-reader-"))
    users = np.char.add("u", np.arange(args.users).astype(str))
    table = pd.DataFrame(
        {
            "user_id": pd.Series(np.repeat(users, args.n), dtype="str"),
            "rank": np.tile(np.arange(1, args.n + 1, dtype=np.int16), args.users),
            "item_id": pd.Series(np.char.add("i", rng.integers(0, args.items, args.users * args.n).astype(str)), dtype="str"),
            "score": rng.random(args.users * args.n, dtype=np.float32),
            "source": "model",
            "model_name": "bench",
            "model_version": "1",
        }
    )
    fb = pd.DataFrame({"rank": np.arange(1, args.n + 1), "item_id": [f"i{k}" for k in range(args.n)], "score": np.ones(args.n, np.float32)})
    t0 = time.perf_counter()
    write_version(root, "v1", table, fb, {"top_n": args.n})
    point_current(root, "v1")
    write_s = time.perf_counter() - t0
    store = RecommendationStore(root)
    t0 = time.perf_counter()
    store.recommend("u0")
    open_s = time.perf_counter() - t0
    queries = [f"u{k}" for k in rng.integers(0, args.users, args.lookups)] + [f"x{k}" for k in range(args.lookups // 10)]
    rng.shuffle(queries)
    lat = np.empty(len(queries))
    for k, q in enumerate(queries):
        t = time.perf_counter_ns()
        store.recommend(q)
        lat[k] = (time.perf_counter_ns() - t) / 1e3
    out = {
        "rows": len(table),
        "write_s": round(write_s, 2),
        "open_s": round(open_s, 3),
        "lookup_us": {"p50": round(float(np.percentile(lat, 50)), 1), "p99": round(float(np.percentile(lat, 99)), 1), "max": round(float(lat.max()), 1)},
        "target_p99_us": 1000,
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
