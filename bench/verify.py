"""Cost of verifying a version before it is served: sizes only vs sha256 of every file.

    .venv/bin/python -m bench.verify [--users 140000 --n 20 --items 27000] [--s3]

Writes one version shaped like preset l's table (140k users x top 20 = 2.8M rows, string ids)
with :func:`include.recsys.tables.versions.write_version`, then times
``verify_version(checksum=False)`` (a stat per file locally, one LIST on S3) and
``verify_version(checksum=True)`` (reads and hashes every byte; on S3 downloads the table).
``--s3`` repeats it against a local moto server (in-process HTTP: a floor, not real S3).
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def _table(users: int, n: int, items: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    uid = np.char.add("u", np.arange(users).astype(str))
    table = pd.DataFrame(
        {
            "user_id": pd.Series(np.repeat(uid, n), dtype="str"),
            "rank": np.tile(np.arange(1, n + 1, dtype=np.int16), users),
            "item_id": pd.Series(np.char.add("i", rng.integers(0, items, users * n).astype(str)), dtype="str"),
            "score": np.sort(rng.random((users, n), dtype=np.float32), axis=1)[:, ::-1].ravel(),
            "source": "model",
            "model_name": "recsys_als",
            "model_version": "7",
        }
    )
    fb = pd.DataFrame({"rank": np.arange(1, n + 1), "item_id": [f"i{k}" for k in range(n)], "score": np.ones(n, np.float32)})
    return table, fb


def _time(fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(root: Path | str, table: pd.DataFrame, fb: pd.DataFrame) -> dict:
    from include.recsys.tables.manifest import read_manifest, verify_version
    from include.recsys.tables.versions import write_version

    t0 = time.perf_counter()
    write_version(root, "v1", table, fb, {"top_n": 20})
    write_s = time.perf_counter() - t0
    m = read_manifest(root, "v1")
    size = sum(f["size"] for f in m["files"]) + m["fallback"]["size"]
    return {
        "rows": m["rows"], "files": len(m["files"]) + 1, "bytes": size, "write_s": round(write_s, 2),
        "verify_sizes_ms": round(_time(lambda: verify_version(root, "v1")) * 1e3, 2),
        "verify_sha256_ms": round(_time(lambda: verify_version(root, "v1", checksum=True), 3) * 1e3, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=140_000)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--items", type=int, default=27_000)
    ap.add_argument("--s3", action="store_true", help="also on a local moto S3 server")
    args = ap.parse_args(argv)
    table, fb = _table(args.users, args.n, args.items)
    out = {"local": measure(Path(tempfile.mkdtemp(prefix="recsys-bench-verify-")) / "recs", table, fb)}
    if args.s3:
        from include.recsys.tables.storage import OPTIONS_ENV
        from tests.faults._helpers import moto_s3

        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        with moto_s3("bench-verify") as opts:
            os.environ[OPTIONS_ENV] = json.dumps(opts)
            out["s3_moto"] = measure("s3://bench-verify/recs", table, fb)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
