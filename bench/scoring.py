"""All-user top-N scoring: ours vs implicit's ``recommend`` vs the bare GEMM floor.

    .venv/bin/python -m bench.scoring [--users 100000 --items 20000 --factors 64 --nnz 5000000 --n 100]

Each method runs in its own subprocess on the same seeded model and seen-item matrix, so the
reported peak RSS belongs to that method alone. Methods:

- ``gemm``: the bare matrix products U_block @ V.T for all users (same block size, BLAS on all
  cores): the floor any exact scorer must pay;
- ``ours``: :func:`include.recsys.recommend.topn_dense` (GEMM + seen filtering + top-N);
- ``implicit``: ``model.recommend(all_users, user_items, N, filter_already_liked_items=True)``.

Prints a table and the two ratios the target is written in; ``--out`` writes JSON + Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def make_problem(users: int, items: int, factors: int, nnz: int, seed: int = 0):
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    uf = rng.standard_normal((users, factors), dtype=np.float32) / np.sqrt(factors)
    vf = rng.standard_normal((items, factors), dtype=np.float32) / np.sqrt(factors)
    pop = 1.0 / np.arange(1, items + 1) ** 0.8
    rows = rng.integers(0, users, nnz)
    cols = rng.choice(items, size=nnz, p=pop / pop.sum())
    seen = sp.csr_matrix((np.ones(nnz, np.float32), (rows, cols)), shape=(users, items))
    seen.sum_duplicates()
    seen.sort_indices()
    seen.data[:] = 1.0
    return uf, vf, seen


def run_method(method: str, args) -> dict:
    uf, vf, seen = make_problem(args.users, args.items, args.factors, args.nnz)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    extra: dict = {"nnz": int(seen.nnz)}
    if method == "gemm":
        vt = np.ascontiguousarray(vf.T)
        buf = np.empty((args.block, args.items), np.float32)
        t0 = time.perf_counter()
        for lo in range(0, args.users, args.block):
            hi = min(lo + args.block, args.users)
            np.matmul(uf[lo:hi], vt, out=buf[: hi - lo])
        seconds = time.perf_counter() - t0
    elif method == "ours":
        from include.recsys.recommend import topn_dense
        from include.recsys.topk import warm_up

        t0 = time.perf_counter()
        warm_up()
        extra["compile_or_cache_load_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        items, _ = topn_dense(uf, vf, seen, args.n, block_size=args.block)
        seconds = time.perf_counter() - t0
        np.save(args.tmp / "ours.npy", items[:2000])
    else:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(factors=args.factors)
        model.user_factors, model.item_factors = uf, vf
        t0 = time.perf_counter()
        ids, _ = model.recommend(
            np.arange(args.users), seen, N=args.n, filter_already_liked_items=True
        )
        seconds = time.perf_counter() - t0
        np.save(args.tmp / "implicit.npy", ids[:2000])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "seconds": round(seconds, 3), "peak_rss_mb": round(peak, 1),
            "rss_before_mb": round(rss_before, 1), **extra}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--nnz", type=int, default=5_000_000)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--method", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", type=Path, default=Path("/tmp/recsys-bench-scoring"))
    ap.add_argument("--out", default=None, help="folder for scoring-<date>.json/.md")
    args = ap.parse_args(argv)
    args.tmp.mkdir(parents=True, exist_ok=True)
    if args.method:
        print(json.dumps(run_method(args.method, args)))
        return 0
    results = {}
    for method in ("gemm", "ours", "implicit"):
        cmd = [sys.executable, "-m", "bench.scoring", "--method", method] + [
            f"--{k}={getattr(args, k)}" for k in ("users", "items", "factors", "nnz", "n", "block", "tmp")
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[method] = json.loads(out.strip().splitlines()[-1])
        print(f"  {method:<9} {results[method]['seconds']:>8.3f} s   peak RSS {results[method]['peak_rss_mb']:>7.1f} MB", flush=True)
    ours = np.load(args.tmp / "ours.npy")
    ref = np.load(args.tmp / "implicit.npy")
    ratios = {
        "implicit / ours (target >= 3)": round(results["implicit"]["seconds"] / results["ours"]["seconds"], 2),
        "ours / gemm floor (target <= 1.5)": round(results["ours"]["seconds"] / results["gemm"]["seconds"], 2),
        "same top-N as implicit (first 2000 users)": float(np.mean(ours == ref)),
    }
    print(json.dumps(ratios, indent=2))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        meta = {"date": stamp, "machine": platform.platform(), "cpus": os.cpu_count(),
                "shape": {k: getattr(args, k) for k in ("users", "items", "factors", "nnz", "n", "block")}}
        (out / f"scoring-{stamp}.json").write_text(json.dumps({"meta": meta, "results": results, "ratios": ratios}, indent=2))
        lines = [f"# All-user top-{args.n} scoring, {stamp}", "", f"`{' '.join(['python -m bench.scoring', *(argv or sys.argv[1:])])}`", "",
                 f"machine: {meta['machine']}, {meta['cpus']} cpus; shape {meta['shape']}", "",
                 "| method | seconds | peak RSS MB |", "|---|---|---|"]
        lines += [f"| {m} | {r['seconds']} | {r['peak_rss_mb']} |" for m, r in results.items()]
        lines += ["", *[f"- {k}: **{v}**" for k, v in ratios.items()], ""]
        (out / f"scoring-{stamp}.md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
