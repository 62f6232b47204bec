"""Similar-items table: the exact blocked kernel vs FAISS HNSW, time and recall@K.

    .venv/bin/python -m bench.similar [--preset m --k 20 --factors 32 --iterations 5
                                       --rules-share 0.1 --hnsw-m 32 --ef-search 128
                                       --repeat 2 --out bench/results]

Builds the item factors the pipeline would: the synthetic preset (``include/recsys/data/synth.py``)
trained with ``include.recsys.backends.implicit.train`` (the pipeline's ALS, ``--iterations`` sweeps).
Then, with ``--rules-share`` of the items excluded by rules (as the table is built), times
``similar.exact`` (normalised factors through ``topn_dense``) and ``similar.approximate``
(HNSW build + search, both counted) ``--repeat`` times each (fastest counts), and measures
the approximate lists' recall@K against the exact ones. ``--out`` writes
``similar-<preset>-<date>.json/.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def item_factors(preset: str, factors: int, iterations: int) -> tuple[np.ndarray, dict]:
    from include.recsys.backends.implicit import train
    from include.recsys.config.settings import load_config
    from include.recsys.core.ids import encode
    from include.recsys.data.synth import PRESETS, generate

    t0 = time.perf_counter()
    df = generate(PRESETS[preset])
    gen_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config({"data_dir": tmp, "factors": factors, "iterations": iterations})
        # the snapshot's confidence weight per event (as the snapshot stage derives it)
        df["weight"] = df["event_type"].astype(str).map(cfg.event_weights).fillna(1.0).astype(np.float32)
        coded, users, items = encode(df)
        bundle, stats = train(coded, cfg, id_maps=(users, items))
    return bundle.item_factors, {"events": len(df), "items": int(bundle.item_factors.shape[0]),
                                 "users": int(bundle.user_factors.shape[0]), "generate_s": round(gen_s, 1),
                                 "fit_s": round(stats.fit_seconds, 1)}


def _best(fn, repeat: int):
    runs, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        runs.append(round(time.perf_counter() - t0, 3))
    return out, runs


def run(args) -> dict:
    from include.recsys.scoring import similar as sim
    from include.recsys.scoring.topk import warm_up

    warm_up()
    vf, data = item_factors(args.preset, args.factors, args.iterations)
    n = vf.shape[0]
    rng = np.random.default_rng(0)
    allowed = rng.random(n) >= args.rules_share
    threads = args.threads or os.cpu_count()
    (ex, _), ex_runs = _best(lambda: sim.exact(vf, args.k, allowed, threads=threads), args.repeat)
    (ap, _), ap_runs = _best(lambda: sim.approximate(vf, args.k, allowed, m=args.hnsw_m,
                                                     ef_search=args.ef_search, threads=threads), args.repeat)
    recall = sim.recall_at_k(ap, ex)
    return {
        "data": data, "items": n, "k": args.k, "allowed_items": int(allowed.sum()),
        "exact": {"seconds": min(ex_runs), "runs": ex_runs},
        "faiss_hnsw": {"seconds": min(ap_runs), "runs": ap_runs, "m": args.hnsw_m,
                       "ef_search": args.ef_search or max(128, 2 * (args.k + 1)), "ef_construction": 200},
        f"recall@{args.k}": round(recall, 4),
        "excluded_in_results": int((~allowed[ex[ex >= 0]]).sum() + (~allowed[ap[ap >= 0]]).sum()),
    }


def markdown(payload: dict) -> str:
    meta, r = payload["meta"], payload["result"]
    k = r["k"]
    return "\n".join([
        f"# Similar items, preset {meta['preset']}, {meta['date']}", "", f"`{meta['command']}`", "",
        f"machine: {meta['machine']}, {meta['cpus']} cpus (shared with other jobs); item factors from the "
        f"pipeline's ALS on preset {meta['preset']} ({r['data']}); {r['items']} items, "
        f"{r['allowed_items']} allowed by rules; top {k}; seconds = fastest of {meta['repeat']} runs",
        "", "| engine | seconds | runs | recall@K vs exact |", "|---|---|---|---|",
        f"| exact (blocked kernel) | {r['exact']['seconds']} | {r['exact']['runs']} | 1.0 |",
        f"| faiss HNSW (M={r['faiss_hnsw']['m']}, efSearch={r['faiss_hnsw']['ef_search']}; build + search) "
        f"| {r['faiss_hnsw']['seconds']} | {r['faiss_hnsw']['runs']} | {r[f'recall@{k}']} |",
        "", f"- recall@{k} of FAISS vs exact (target >= 0.95): **{r[f'recall@{k}']}**",
        f"- excluded items in any list (must be 0): **{r['excluded_in_results']}**", "",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="m")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--factors", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--rules-share", type=float, default=0.1)
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-search", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2))
    if args.out:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        meta = {"date": stamp, "preset": args.preset, "machine": platform.platform(), "cpus": os.cpu_count(),
                "repeat": args.repeat, "command": " ".join([".venv/bin/python -m bench.similar",
                                                            *(argv if argv is not None else sys.argv[1:])])}
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        payload = {"meta": meta, "result": result}
        (out / f"similar-{args.preset}-{stamp}.json").write_text(json.dumps(payload, indent=2))
        (out / f"similar-{args.preset}-{stamp}.md").write_text(markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
