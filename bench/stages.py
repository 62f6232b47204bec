"""Stage-by-stage benchmark of the library on a synthetic preset (no Airflow, no MLflow).

    .venv/bin/python -m bench.stages --preset s [--out bench/results]
    .venv/bin/python -m bench.stages --data-dir D --window-end 2026-11-21 --json r.json

With ``--data-dir`` the stages read the lake already landed there (and ``RECSYS_*`` settings,
e.g. a MovieLens source) instead of generating the preset: ``bench.pipeline`` runs it that way
on the same data as the DAG run.

Per stage: wall time, CPU time, peak RSS of the process so far, rows in/out. Also, in the
same run, the reference points a stage should be judged against: implicit's own
``model.recommend(..., filter_already_liked_items=True)`` for all users (scoring) and the
bare matrix product of all users x all items (the GEMM floor).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Stage:
    def __init__(self, name: str, results: list[dict]):
        self.name, self.results = name, results

    def __enter__(self):
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.results.append(
            {
                "stage": self.name,
                "wall_s": round(time.perf_counter() - self.t0, 3),
                "cpu_s": round(time.process_time() - self.c0, 3),
                "peak_rss_mb": round(_rss_mb(), 1),
                **getattr(self, "extra", {}),
            }
        )
        print(f"  {self.name:<28} {self.results[-1]['wall_s']:>8.2f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    from threadpoolctl import threadpool_limits

    from include.recsys.backends.implicit import train
    from include.recsys.config.settings import load_config
    from include.recsys.core.ids import IdMap, encode, interaction_matrix
    from include.recsys.data import synth
    from include.recsys.data.snapshot import build_indexed_snapshot
    from include.recsys.data.source import Window
    from include.recsys.data.split import time_split
    from include.recsys.scoring.recommend import recommend

    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="s")
    ap.add_argument("--top-n", type=int, default=100)
    ap.add_argument("--out", default=None, help="folder for <preset>-<date>.json and .md")
    ap.add_argument("--data-dir", default=None, help="use the lake already under this data dir")
    ap.add_argument("--window-end", default="2026-11-21", help="end of the window (YYYY-MM-DD)")
    ap.add_argument("--json", default=None, help="also write stages + ratios as JSON here")
    ap.add_argument("--no-implicit", action="store_true", help="skip implicit's recommend")
    args = ap.parse_args(argv)

    res: list[dict] = []
    if args.data_dir:
        cfg = load_config({"data_dir": Path(args.data_dir), "top_n": args.top_n})
        print(f"preset {args.preset}: source {cfg.source}")
    else:
        if args.preset not in synth.PRESETS:
            ap.error(f"--preset must be one of {sorted(synth.PRESETS)} without --data-dir")
        tmp = Path(tempfile.mkdtemp(prefix="recsys-bench-"))
        spec = dataclasses.replace(synth.PRESETS[args.preset], end_date="2026-11-20")
        cfg = load_config({"data_dir": tmp, "top_n": args.top_n})
        print(f"preset {args.preset}: {spec}")
        with Stage("generate+land", res) as st:
            df = synth.generate(spec)
            synth.land_partitioned(df, cfg.source)
            st.extra = {"rows_out": len(df)}
        del df
    window = Window.ending_at(pd.Timestamp(args.window_end, tz="UTC"), cfg.window_days)
    with Stage("snapshot", res) as st:
        indexed = build_indexed_snapshot(cfg, window)
        snap, stats = indexed.plain_frame(), indexed.stats
        del indexed
        st.extra = {"rows_in": stats.rows_read, "rows_out": stats.rows}
    with Stage("split", res) as st:
        tr, ho, _ = time_split(snap, window.end - pd.Timedelta(days=cfg.holdout_days))
        st.extra = {"rows_in": len(snap), "rows_out": len(tr)}
    with Stage("train (ours, incl. prep)", res) as st:
        coded, user_map, item_map = encode(tr)  # codes into sorted maps, as the snapshot stage writes them
        bundle, tstats = train(coded, cfg, id_maps=(user_map, item_map))
        del coded
        st.extra = {"rows_in": len(tr), "fit_s": round(tstats.fit_seconds, 3)}
    users = bundle.user_ids
    seen = tr[["user_id", "item_id"]]
    with Stage(f"precompute top-{args.top_n} (ours)", res) as st:
        recs = recommend(bundle, users, seen, args.top_n, block_size=cfg.score_block_size)
        st.extra = {"users": len(users)}
    with Stage("GEMM floor (U @ V.T)", res):
        vt = np.ascontiguousarray(bundle.item_factors.T)
        for lo in range(0, len(users), cfg.score_block_size):
            bundle.user_factors[lo : lo + cfg.score_block_size] @ vt
    if args.no_implicit:
        return _finish(args, res, {
            "ours / GEMM floor": by_stage(res, f"precompute top-{args.top_n} (ours)")
            / max(by_stage(res, "GEMM floor (U @ V.T)"), 1e-9)
        })
    from implicit.cpu.als import AlternatingLeastSquares

    ui = interaction_matrix(tr, IdMap(bundle.user_ids), IdMap(bundle.item_ids), value="weight")
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=cfg.factors, iterations=1)
    model.user_factors, model.item_factors = bundle.user_factors, bundle.item_factors
    with Stage(f"implicit recommend top-{args.top_n}", res):
        ids, _ = model.recommend(
            np.arange(len(users)), ui, N=args.top_n, filter_already_liked_items=True
        )
    agree = float(np.mean(ids[:, :10] == recs.items[:, :10]))
    by = {r["stage"]: r for r in res}
    ratios = {
        "implicit_recommend / ours": by[f"implicit recommend top-{args.top_n}"]["wall_s"]
        / by[f"precompute top-{args.top_n} (ours)"]["wall_s"],
        "ours / GEMM floor": by[f"precompute top-{args.top_n} (ours)"]["wall_s"]
        / max(by["GEMM floor (U @ V.T)"]["wall_s"], 1e-9),
        "top-10 agreement with implicit": agree,
    }
    return _finish(args, res, ratios)


def by_stage(res: list[dict], name: str) -> float:
    return next(r["wall_s"] for r in res if r["stage"] == name)


def _finish(args, res: list[dict], ratios: dict) -> int:
    print(json.dumps(ratios, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({"stages": res, "ratios": ratios}, indent=2))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        meta = {"preset": args.preset, "date": stamp, "machine": platform.platform(),
                "cpus": __import__("os").cpu_count(), "python": platform.python_version()}
        (out / f"{args.preset}-{stamp}.json").write_text(
            json.dumps({"meta": meta, "stages": res, "ratios": ratios}, indent=2)
        )
        table = pd.DataFrame(res).to_markdown(index=False) if _has_tabulate() else pd.DataFrame(res).to_string(index=False)
        (out / f"{args.preset}-{stamp}.md").write_text(
            f"# Stages, preset {args.preset}, {stamp}\n\n{meta}\n\n{table}\n\n```\n{json.dumps(ratios, indent=2)}\n```\n"
        )
    return 0


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401

        return True
    except ImportError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
