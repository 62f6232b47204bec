"""All-user top-N scoring: ours vs implicit's ``recommend`` vs the bare GEMM floor.

    .venv/bin/python -m bench.scoring [--users 100000 --items 20000 --factors 64 --nnz 5000000
                                       --n 100 --factors-from random|als --repeat 3 --out DIR]

The parent builds one seeded problem (float32 factors and a popularity-skewed seen matrix;
with ``--factors-from als`` the factors come from a quick implicit ALS fit on that seen
matrix, so item norms and scores look like a real model's) and saves it; every method then
runs ``--repeat`` times in its own subprocess (peak RSS is that method's alone) and reports
its fastest run, the fair figure on a machine shared with other work. Methods:

- ``gemm_blocks``: ``U[1024-user block] @ V.T`` with BLAS on all cores (80 MB score blocks);
- ``gemm_chunks``: one big sgemm per 8192-user chunk, BLAS on all cores;
- ``gemm_tiles``: the tiles ``ours`` computes (256 users x 1024 items, one BLAS thread per
  worker, all cores), products only;
- ``ours``: :func:`include.recsys.scoring.recommend.topn_dense` (tiled GEMM fused with seen filtering
  and the top-N selection);
- ``previous``: the kernel this replaced (1024-user GEMM blocks, then a heap per row);
- ``implicit``: ``model.recommend(all_users, user_items, N, filter_already_liked_items=True)``;
- ``paired``: ``gemm_tiles``, ``ours`` and ``implicit`` alternated in one process, ``--repeat``
  rounds: all see the same load, so the ratios of their fastest runs (and the medians of the
  per-round ratios) are the steadiest wall-clock ratios on a shared machine;
- ``rules``: ``ours`` without and with business rules (``--rules-share`` of the items excluded
  at random: :func:`include.recsys.scoring.rules.ItemRules.allowed_mask` on the item ids, then
  ``topn_dense(..., allowed=mask)``), alternated in one process, ``--repeat`` rounds; reports
  the with/without ratio (target <= 1.2); and the same for the pipeline's entry point,
  ``recommend`` vs ``variants.score`` with the rules plus two A/B arms (two bundles) and a 2%
  holdout. Run it alone: ``--methods rules``.

The GEMM floor is the fastest of the three ``gemm_*`` methods. The ``ours`` child also
checks its lists against ``previous``/implicit and measures how much exact Cauchy-Schwarz
pruning (items by decreasing norm, skip a tile once ``|u| * |v| <`` every user's k-th best)
could save on these factors. ``--out`` writes ``scoring-<date>[-als].json/.md``.
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

GEMM_METHODS = ("gemm_blocks", "gemm_chunks", "gemm_tiles")
METHODS = (*GEMM_METHODS, "ours", "previous", "implicit", "paired")
EXTRA_METHODS = ("rules",)  # not in the default run


def make_problem(users: int, items: int, factors: int, nnz: int, seed: int = 0):
    """Random float32 factors and a CSR seen matrix with Zipf-like item popularity."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    scale = np.float32(1.0 / np.sqrt(factors))  # a float32 scalar keeps the factors float32
    uf = rng.standard_normal((users, factors), dtype=np.float32) * scale
    vf = rng.standard_normal((items, factors), dtype=np.float32) * scale
    pop = 1.0 / np.arange(1, items + 1) ** 0.8
    rows = rng.integers(0, users, nnz)
    cols = rng.choice(items, size=nnz, p=pop / pop.sum())
    seen = sp.csr_matrix((np.ones(nnz, np.float32), (rows, cols)), shape=(users, items))
    seen.sum_duplicates()
    seen.sort_indices()
    seen.data[:] = 1.0
    return uf, vf, seen


def als_factors(seen, factors: int, iterations: int, seed: int = 0):
    """A quick implicit ALS fit on ``seen``: factors shaped like a real model's."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=factors, iterations=iterations, regularization=0.05, random_state=seed
        )
        model.fit(seen, show_progress=False)
    return (np.ascontiguousarray(model.user_factors, np.float32),
            np.ascontiguousarray(model.item_factors, np.float32))


def load_problem(path: Path):
    import scipy.sparse as sp

    with np.load(path, allow_pickle=False) as z:
        uf, vf = z["uf"], z["vf"]
        seen = sp.csr_matrix((np.ones(z["indices"].size, np.float32), z["indices"], z["indptr"]),
                             shape=(uf.shape[0], vf.shape[0]))
    return uf, vf, seen


def pruning_potential(uf, vf, kth: np.ndarray, tile_users: int = 256, tile_items: int = 1024):
    """Share of the products exact Cauchy-Schwarz pruning could skip, given each user's k-th
    best score: per user the items with ``|u| |v_i| >= kth`` must be scored; per tile of
    ``tile_users`` users the items in decreasing-norm order up to the last needed tile."""
    norms = np.sort(np.linalg.norm(vf, axis=1))[::-1]
    un = np.linalg.norm(uf, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        need_norm = np.where(un > 0, kth / un, -np.inf)
    # items with norm >= need_norm: count in the descending array
    need = norms.size - np.searchsorted(norms[::-1], need_norm, side="left")
    need = np.where(np.isfinite(kth), need, norms.size)  # users short of n: full scan
    blocks = [need[lo : lo + tile_users].max() for lo in range(0, need.size, tile_users)]
    tiles = np.ceil(np.asarray(blocks) / tile_items) * tile_items
    return {
        "items_needed_per_user_mean": round(float(need.mean()), 1),
        "prunable_pairs_user_level": round(1 - float(need.mean()) / norms.size, 4),
        "prunable_gemm_share_tile_level": round(1 - float(np.minimum(tiles, norms.size).mean())
                                                / norms.size, 4),
    }


def _time(fn, repeat: int) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds (all threads) of each run."""
    wall, cpu = [], []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append(round(time.perf_counter() - t0, 3))
        cpu.append(round(time.process_time() - c0, 3))
    return wall, cpu


def run_method(method: str, args) -> dict:
    from threadpoolctl import threadpool_limits

    uf, vf, seen = load_problem(args.tmp / "problem.npz")
    n_users = uf.shape[0]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    extra: dict = {}
    if method == "gemm_blocks":
        vt = np.ascontiguousarray(vf.T)
        buf = np.empty((1024, vt.shape[1]), np.float32)

        def fn():
            for lo in range(0, n_users, 1024):
                hi = min(lo + 1024, n_users)
                np.matmul(uf[lo:hi], vt, out=buf[: hi - lo])
    elif method == "gemm_chunks":
        vt = np.ascontiguousarray(vf.T)
        buf = np.empty((8192, vt.shape[1]), np.float32)

        def fn():
            for lo in range(0, n_users, 8192):
                hi = min(lo + 8192, n_users)
                np.matmul(uf[lo:hi], vt, out=buf[: hi - lo])
    elif method == "gemm_tiles":
        from concurrent.futures import ThreadPoolExecutor

        import scipy.linalg.cython_blas  # noqa: F401

        from include.recsys.scoring.recommend import TILE_ITEMS, TILE_USERS
        from include.recsys.scoring.topk import gemm_block, warm_up

        warm_up()

        def fn():
            with threadpool_limits(1, "blas"), ThreadPoolExecutor(os.cpu_count()) as pool:
                list(pool.map(lambda lo: gemm_block(uf[lo : lo + TILE_USERS], vf, TILE_ITEMS),
                              range(0, n_users, TILE_USERS)))
    elif method == "ours":
        from include.recsys.scoring.recommend import topn_dense
        from include.recsys.scoring.topk import warm_up

        t0 = time.perf_counter()
        warm_up()
        extra["compile_or_cache_load_s"] = round(time.perf_counter() - t0, 3)
        result = {}

        def fn():
            result["items"], result["scores"] = topn_dense(uf, vf, seen, args.n)
    elif method == "previous":
        from include.recsys.scoring.topk import topk_block, warm_up

        warm_up()
        vt = np.ascontiguousarray(vf.T)
        buf = np.empty((1024, vt.shape[1]), np.float32)
        items = np.empty((n_users, args.n), np.int32)
        scores = np.empty((n_users, args.n), np.float32)
        indptr, indices = seen.indptr, seen.indices

        def fn():
            for lo in range(0, n_users, 1024):
                hi = min(lo + 1024, n_users)
                np.matmul(uf[lo:hi], vt, out=buf[: hi - lo])
                topk_block(buf[: hi - lo], indptr[lo : hi + 1] - indptr[lo],
                           indices[indptr[lo] : indptr[hi]], args.n, items[lo:hi], scores[lo:hi])
    elif method == "rules":
        extra = _rules_rounds(uf, vf, seen, args)

        def fn():
            pass
    elif method == "paired":
        from concurrent.futures import ThreadPoolExecutor

        import scipy.linalg.cython_blas  # noqa: F401

        from include.recsys.scoring.recommend import TILE_ITEMS, TILE_USERS, topn_dense
        from include.recsys.scoring.topk import gemm_block, warm_up

        warm_up()

        def tiles():
            with threadpool_limits(1, "blas"), ThreadPoolExecutor(os.cpu_count()) as pool:
                list(pool.map(lambda lo: gemm_block(uf[lo : lo + TILE_USERS], vf, TILE_ITEMS),
                              range(0, n_users, TILE_USERS)))

        def ours():
            topn_dense(uf, vf, seen, args.n)

        from implicit.cpu.als import AlternatingLeastSquares

        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(factors=uf.shape[1])
        model.user_factors, model.item_factors = uf, vf

        def implicit_():
            model.recommend(np.arange(n_users), seen, N=args.n, filter_already_liked_items=True)

        fns = {"gemm_tiles": tiles, "ours": ours, "implicit": implicit_}
        rounds: dict[str, list[float]] = {name: [] for name in fns}
        for i in range(args.repeat):
            for name in (list(fns) if i % 2 == 0 else list(fns)[::-1]):
                rounds[name].append(_time(fns[name], 1)[0][0])
        extra = {f"{name}_runs": runs for name, runs in rounds.items()}
        for other in ("gemm_tiles", "implicit"):
            per_round = [o / g for o, g in zip(rounds["ours"], rounds[other])]
            extra[f"ours/{other} fastest"] = round(min(rounds["ours"]) / min(rounds[other]), 3)
            extra[f"ours/{other} median round"] = round(float(np.median(per_round)), 3)

        def fn():
            pass
    else:
        from implicit.cpu.als import AlternatingLeastSquares

        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(factors=uf.shape[1])
        model.user_factors, model.item_factors = uf, vf
        result = {}

        def fn():
            result["items"], _ = model.recommend(
                np.arange(n_users), seen, N=args.n, filter_already_liked_items=True
            )
    times, cpu = _time(fn, args.repeat)
    if method == "ours":
        np.save(args.tmp / "ours.npy", result["items"])
        kth = result["scores"][:, -1]
        extra["pruning"] = pruning_potential(uf, vf, kth)
    elif method == "previous":
        np.save(args.tmp / "previous.npy", items)
    elif method == "implicit":
        np.save(args.tmp / "implicit.npy", result["items"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "seconds": min(times), "runs": times, "cpu_seconds": min(cpu),
            "peak_rss_mb": round(peak, 1), "rss_before_mb": round(rss_before, 1), **extra}


def _rules_rounds(uf, vf, seen, args) -> dict:
    """``topn_dense`` without and with rules excluding ``args.rules_share`` of the items,
    alternated ``args.repeat`` rounds in this process (same load for both)."""
    import pandas as pd

    from include.recsys.scoring.recommend import topn_dense
    from include.recsys.scoring.rules import ItemRules
    from include.recsys.scoring.topk import warm_up

    warm_up()
    n_items = vf.shape[0]
    ids = pd.Index([f"i{i}" for i in range(n_items)])
    rng = np.random.default_rng(1)
    out = rng.choice(n_items, int(n_items * args.rules_share), replace=False)
    rules = ItemRules(excluded=ids[out], listed=n_items, sha256="bench", path="bench", as_of="bench")

    def plain():
        topn_dense(uf, vf, seen, args.n)

    def ruled():
        topn_dense(uf, vf, seen, args.n, allowed=rules.allowed_mask(ids))

    # the pipeline's entry point, without and with rules + A/B variants (two arms scored by two
    # bundles, a 2% holdout on the popularity baseline, the salted hash of every user id)
    from include.recsys.config.variants import parse
    from include.recsys.scoring.bundle import ModelBundle
    from include.recsys.scoring.recommend import recommend
    from include.recsys.scoring.variants import score

    users = pd.Index([f"u{i}" for i in range(uf.shape[0])])
    pop = np.asarray(seen.sum(axis=0)).ravel().astype(np.int64)
    bundle = ModelBundle(user_ids=users, item_ids=ids, user_factors=uf, item_factors=vf, item_popularity=pop)
    other = ModelBundle(user_ids=users, item_ids=ids, user_factors=uf[::-1].copy(), item_factors=vf,
                        item_popularity=pop)
    plan = parse([{"name": "champion", "model": "alias:champion", "share": 0.49},
                           {"name": "challenger", "model": "candidate", "share": 0.49}], 0.02, "bench")

    def recommend_plain():  # as score_shard does without variants: the lists, then the long frame
        recommend(bundle, users, seen, args.n).to_frame(bundle).assign(model_name="m", model_version="2")

    def recommend_ab():
        score({"champion": (other, "1"), "challenger": (bundle, "2")}, plan, users, seen, args.n,
                       model_name="m", baseline_of=(bundle, "2"), allowed_of=lambda b: rules.allowed_mask(b.item_ids))

    pairs = {"kernel": (plain, ruled), "recommend": (recommend_plain, recommend_ab)}
    out_: dict = {"rules_share": args.rules_share, "excluded_items": int(len(out))}
    for label, (off, on) in pairs.items():
        rounds: dict[str, list[float]] = {"without": [], "with": []}
        cpu: dict[str, list[float]] = {"without": [], "with": []}
        for i in range(args.repeat):
            for name, fn in ((("without", off), ("with", on)) if i % 2 == 0 else (("with", on), ("without", off))):
                wall, c = _time(fn, 1)
                rounds[name].append(wall[0])
                cpu[name].append(c[0])
        per_round = [w / o for w, o in zip(rounds["with"], rounds["without"])]
        # CPU seconds (all threads) barely depend on what else the shared machine runs
        out_[label] = {"without_runs": rounds["without"], "with_runs": rounds["with"],
                       "without_cpu": cpu["without"], "with_cpu": cpu["with"],
                       "with/without fastest": round(min(rounds["with"]) / min(rounds["without"]), 3),
                       "with/without median round": round(float(np.median(per_round)), 3),
                       "with/without CPU seconds, fastest": round(min(cpu["with"]) / min(cpu["without"]), 3)}
    return out_


def markdown(payload: dict) -> str:
    """The Markdown report of one run's JSON payload (meta, results, ratios)."""
    meta, results, ratios = payload["meta"], payload["results"], payload["ratios"]
    shape = meta["shape"]
    lines = [f"# All-user top-{shape['n']} scoring, {meta['date']} ({shape['factors_from']} "
             "factors)", "", f"`{meta['command']}`", "",
             f"machine: {meta['machine']}, {meta['cpus']} cpus (shared with other jobs); "
             f"shape {shape}; seconds = fastest of {shape['repeat']} runs, each method in its "
             "own process; CPU s = process CPU time (all threads) of the fastest-CPU run"]
    rows = [f"| {m} | {r['seconds']} | {r['runs']} | {r['cpu_seconds']} "
            f"| {r['peak_rss_mb']} |" for m, r in results.items() if m not in ("paired", "rules")]
    if rows:
        lines += ["", "| method | seconds | runs | CPU s | peak RSS MB |", "|---|---|---|---|---|", *rows]
    if "paired" in results:
        r = results["paired"]
        lines += ["", "Alternated in one process (`paired`, same load for all three): "
                  + ", ".join(f"{k} {v}" for k, v in r.items() if k.endswith("_runs")) + "."]
    if "rules" in results:
        r = results["rules"]
        lines += ["", f"Business rules (`rules`, {r['excluded_items']} items = {r['rules_share']:.0%} "
                  f"excluded; alternated in one process): `topn_dense` without {r['kernel']['without_runs']}, "
                  f"with rules {r['kernel']['with_runs']}; `recommend` without "
                  f"{r['recommend']['without_runs']}, `variants.score` with rules + 2 A/B arms (two "
                  f"bundles) + 2% holdout {r['recommend']['with_runs']}."]
    lines += ["", *[f"- {k}: **{v}**" for k, v in ratios.items()]]
    if "ours" in results and "pruning" in results["ours"]:
        lines += [f"- Cauchy-Schwarz pruning potential: {results['ours']['pruning']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--nnz", type=int, default=5_000_000)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--factors-from", choices=("random", "als"), default="random")
    ap.add_argument("--als-iterations", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3, help="runs per method; the fastest counts")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"also: {', '.join(EXTRA_METHODS)}")
    ap.add_argument("--rules-share", type=float, default=0.1,
                    help="method rules: share of the items the rules exclude")
    ap.add_argument("--method", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", type=Path, default=Path("/tmp/recsys-bench-scoring"))
    ap.add_argument("--out", default=None, help="folder for scoring-<date>[-als].json/.md")
    args = ap.parse_args(argv)
    args.tmp.mkdir(parents=True, exist_ok=True)
    if args.method:
        print(json.dumps(run_method(args.method, args)))
        return 0
    t0 = time.perf_counter()
    uf, vf, seen = make_problem(args.users, args.items, args.factors, args.nnz)
    if args.factors_from == "als":
        uf, vf = als_factors(seen, args.factors, args.als_iterations)
    np.savez(args.tmp / "problem.npz", uf=uf, vf=vf, indptr=seen.indptr, indices=seen.indices)
    print(f"problem ready in {time.perf_counter() - t0:.1f}s: {uf.shape[0]} users x "
          f"{vf.shape[0]} items x {uf.shape[1]} ({args.factors_from} factors), "
          f"nnz {seen.nnz}, N={args.n}", flush=True)
    methods = [m for m in args.methods.split(",") if m]
    results = {}
    for method in methods:
        cmd = [sys.executable, "-m", "bench.scoring", "--method", method, f"--n={args.n}",
               f"--repeat={args.repeat}", f"--tmp={args.tmp}", f"--rules-share={args.rules_share}"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[method] = json.loads(out.strip().splitlines()[-1])
        r = results[method]
        print(f"  {method:<12} {r['seconds']:>8.3f} s  (runs {r['runs']})  cpu "
              f"{r['cpu_seconds']:>7.3f} s  peak RSS {r['peak_rss_mb']:>7.1f} MB", flush=True)
    ratios: dict = {}
    floor = min((m for m in GEMM_METHODS if m in results), key=lambda m: results[m]["seconds"],
                default=None)
    if "rules" in results:
        r = results["rules"]
        ratios["kernel with rules / without, fastest runs (target <= 1.2)"] = r["kernel"]["with/without fastest"]
        ratios["kernel with rules / without, median of rounds"] = r["kernel"]["with/without median round"]
        ratios["recommend with rules + variants / without, fastest runs (target <= 1.2)"] = \
            r["recommend"]["with/without fastest"]
        ratios["recommend with rules + variants / without, median of rounds"] = \
            r["recommend"]["with/without median round"]
        for label in ("kernel", "recommend"):
            ratios[f"{label} with/without in CPU seconds (fastest)"] = r[label]["with/without CPU seconds, fastest"]
    if "ours" in results:
        ours = np.load(args.tmp / "ours.npy")
        if "implicit" in results:
            ratios["implicit / ours (target >= 3)"] = round(
                results["implicit"]["seconds"] / results["ours"]["seconds"], 2)
            ratios["same top-N as implicit (share of slots)"] = float(
                np.mean(ours == np.load(args.tmp / "implicit.npy")))
        if floor:
            ratios[f"ours / GEMM floor = {floor}, separate processes (target <= 1.5)"] = round(
                results["ours"]["seconds"] / results[floor]["seconds"], 2)
        if "gemm_tiles" in results:
            # CPU seconds hardly depend on what else runs on the machine; the tiles floor uses
            # one BLAS thread per worker, so no spinning BLAS threads inflate it
            ratios["ours / gemm_tiles in CPU seconds"] = round(
                results["ours"]["cpu_seconds"] / results["gemm_tiles"]["cpu_seconds"], 2)
        if "paired" in results:
            r = results["paired"]
            ratios["paired implicit / ours, fastest runs (same process, alternated)"] = round(
                1 / r["ours/implicit fastest"], 2)
            ratios["paired implicit / ours, median of rounds"] = round(
                1 / r["ours/implicit median round"], 2)
            ratios["paired ours / gemm_tiles, fastest runs"] = r["ours/gemm_tiles fastest"]
            ratios["paired ours / gemm_tiles, median of rounds"] = r["ours/gemm_tiles median round"]
        if "previous" in results:
            ratios["previous / ours"] = round(
                results["previous"]["seconds"] / results["ours"]["seconds"], 2)
            ratios["same top-N as previous kernel (share of slots)"] = float(
                np.mean(ours == np.load(args.tmp / "previous.npy")))
    print(json.dumps(ratios, indent=2))
    if "ours" in results:
        print("Cauchy-Schwarz pruning potential:", json.dumps(results["ours"]["pruning"]))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        suffix = "" if args.factors_from == "random" else f"-{args.factors_from}"
        shape = {k: getattr(args, k) for k in ("users", "items", "factors", "nnz", "n",
                                               "factors_from", "repeat")}
        shape["nnz_after_dedup"] = int(seen.nnz)
        meta = {"date": stamp, "machine": platform.platform(), "cpus": os.cpu_count(),
                "shape": shape, "floor": floor,
                "command": " ".join([".venv/bin/python -m bench.scoring",
                                     *(argv if argv is not None else sys.argv[1:])])}
        if methods == ["rules"]:
            suffix += "-rules"
        (out / f"scoring-{stamp}{suffix}.json").write_text(
            json.dumps({"meta": meta, "results": results, "ratios": ratios}, indent=2))
        (out / f"scoring-{stamp}{suffix}.md").write_text(
            markdown({"meta": meta, "results": results, "ratios": ratios}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
