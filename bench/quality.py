"""Quality benchmark: every model family (defaults and tuned) and the one the search selects,
vs implicit ALS with library defaults and popularity, with fit and scoring times.

    .venv/bin/python -m bench.quality [--movielens DIR] [--synthetic m] [--trials 24] [--out bench/results]

Not a unit test (it takes minutes on the ``m`` preset). Two data sets, one fixed seed:

MovieLens latest-small (``--movielens``, else ``RECSYS_MOVIELENS_DIR``, else
``../shared/datasets/movielens-latest-small`` relative to the repository)
    Per-user temporal 80/20 holdout: each user's last 20% of ratings by time are held out
    (ties by item id). The tuned model never sees them: its validation split is carved the
    same way from each user's first 80% (the last 20% of those), trials early-stop on it, and
    the best configuration is refit on the whole 80%.

Synthetic preset (``--synthetic``, default ``m``; ``none`` skips)
    The pipeline's own path: snapshot of the window, the gate's time split (last
    ``holdout_days``), tuning on the last ``tune_validation_days`` before that cutoff.

Compared, with the items a user saw in training filtered for all three, NDCG@10 by
:func:`include.recsys.metrics.ranking.ranking_metrics` over the users who have holdout items (held-out
items never seen in training stay relevant and unreachable for every model):

(a) selected: the pipeline's random search over every model family (``--trials``, shared in
    turn by ALS, item-kNN and EASE; :mod:`include.recsys.tuning.search`) + refit of the winner;
    ``tuned_<family>``: each family's best trial of that same search, refit; ``defaults_<family>``:
    the family with the config defaults. All are scored by ``scoring.recommend.recommend``;
(b) ``implicit.als.AlternatingLeastSquares()`` with its defaults (factors=100,
    regularization=0.01, alpha=1.0, iterations=15; ``random_state`` fixed for repeatability)
    fit on the raw matrix a user would hand it: the ratings as values for MovieLens, event
    counts for the synthetic data. The binary matrix is reported too;
(c) global popularity (distinct users per item in training).

Writes ``quality-<date>.json`` and ``.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
SEED = 42


def per_user_temporal_split(df: pd.DataFrame, frac: float = 0.2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each user's last ``frac`` of events by time (ties: item id) -> holdout; the rest trains."""
    df = df.sort_values(["user_id", "event_ts", "item_id"], kind="stable", ignore_index=True)
    pos = df.groupby("user_id").cumcount().to_numpy()
    n = df.groupby("user_id")["item_id"].transform("size").to_numpy()
    n_hold = np.floor(n * frac).astype(np.int64)
    hold = pos >= n - n_hold
    return df.loc[~hold].reset_index(drop=True), df.loc[hold].reset_index(drop=True)


def evaluate_lists(
    top_items: dict[str, np.ndarray], users: pd.Index, items: pd.Index, holdout: pd.DataFrame, train: pd.DataFrame
) -> dict[str, dict[str, float]]:
    """NDCG/recall/precision@10 of each model's top lists (rows = ``users``, train item index)."""
    from include.recsys.metrics.ranking import ranking_metrics

    seen = pd.MultiIndex.from_frame(train[["user_id", "item_id"]].drop_duplicates())
    pairs = holdout[["user_id", "item_id"]].drop_duplicates()
    pairs = pairs.loc[~pd.MultiIndex.from_frame(pairs).isin(seen) & pairs["user_id"].isin(users)]
    eval_items = items.append(pd.Index(pd.unique(pairs["item_id"])).difference(items))
    relevant = sp.csr_matrix(
        (np.ones(len(pairs), np.float32), (users.get_indexer(pairs["user_id"]), eval_items.get_indexer(pairs["item_id"]))),
        shape=(len(users), len(eval_items)),
    )
    out = {}
    for name, top in top_items.items():
        s = ranking_metrics(top, relevant, [10], n_catalog=len(items)).summary
        out[name] = {k: round(float(s[k]), 5) for k in ("ndcg@10", "recall@10", "precision@10", "coverage@10")}
        out[name]["n_users_evaluated"] = int(s["n_users_evaluated"])
    return out


def implicit_defaults_top(train: pd.DataFrame, users, items, value: str | None, n: int = 10) -> tuple[np.ndarray, float]:
    """implicit.als.AlternatingLeastSquares() (library defaults) on the raw matrix -> top-n."""
    from implicit.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    from include.recsys.core.ids import interaction_matrix
    from include.recsys.scoring.recommend import topn_dense

    ui = interaction_matrix(train, users, items, value=value)
    t0 = time.perf_counter()
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(random_state=SEED)
        model.fit(ui, show_progress=False)
    fit_s = time.perf_counter() - t0
    uf = model.user_factors if isinstance(model.user_factors, np.ndarray) else model.user_factors.to_numpy()
    vf = model.item_factors if isinstance(model.item_factors, np.ndarray) else model.item_factors.to_numpy()
    top, _ = topn_dense(uf, vf, ui, n)
    return top, fit_s


def _family_best(results, family: str):
    """The best successful trial of one family (validation NDCG@10), or None."""
    ok = [r for r in results if r.ok and r.params.get("model_family", "als") == family]
    return max(ok, key=lambda r: (r.best_metric, -r.trial)) if ok else None


def compare(
    name: str,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    fit_df: pd.DataFrame,
    valid: pd.DataFrame,
    cfg,
    *,
    raw_value: str,
    train_cutoff: pd.Timestamp | None,
    valid_cutoff: pd.Timestamp | None,
) -> dict:
    """Search every family on (fit_df, valid), refit on train: the selected model, each
    family tuned (its best trial of the same search) and with defaults, implicit's ALS
    defaults and popularity, all scored by the pipeline's ``recommend`` on the holdout."""
    from include.recsys.backends.families import FAMILIES, describe
    from include.recsys.backends.implicit import train as fit
    from include.recsys.core.ids import IdMap, encode, interaction_matrix
    from include.recsys.scoring.baselines import popularity_topn
    from include.recsys.scoring.recommend import recommend
    from include.recsys.tuning.search import eligible_families, prepare, search

    print(f"[{name}] train {len(train)} events, holdout {len(holdout)}, tuning fit {len(fit_df)}, valid {len(valid)}", flush=True)
    t0 = time.perf_counter()
    data = prepare(fit_df, valid, valid_cutoff, max_eval_users=cfg.tune_max_eval_users, seed=cfg.seed)
    best, results = search(data, cfg)
    tune_s = time.perf_counter() - t0
    print(f"[{name}] tuning: {len(results)} trials in {tune_s:.1f}s; best {best['config'] if best else None}", flush=True)
    coded, ids_u, ids_i = encode(train)  # codes into sorted maps, as the snapshot stage writes them
    families, skipped = eligible_families(FAMILIES, int(train["item_id"].nunique()), cfg.ease_max_items)
    configs = {"selected": cfg.with_overrides(best["config"]) if best else cfg}
    for fam in families:
        fb = _family_best(results, fam)
        if fb is not None:
            configs[f"tuned_{fam}"] = cfg.with_overrides(fb.config())
        configs[f"defaults_{fam}"] = cfg.with_overrides({"model_family": fam})
    tops, timings, hold_users, rows, bundle = {}, {}, None, None, None
    for key, mcfg in configs.items():
        t1 = time.perf_counter()
        bundle, stats = fit(coded, mcfg, cutoff=train_cutoff, id_maps=(ids_u, ids_i))
        fit_s = time.perf_counter() - t1
        if hold_users is None:
            hold_users = pd.Index(pd.unique(holdout["user_id"])).intersection(bundle.user_ids).sort_values()
            rows = bundle.user_ids.get_indexer(hold_users)
        t2 = time.perf_counter()
        recs = recommend(bundle, hold_users, bundle.seen[rows], 10)
        score_s = time.perf_counter() - t2
        tops[key] = recs.items
        timings[key] = {"model": describe(mcfg), "fit_seconds": round(fit_s, 2), "score_seconds": round(score_s, 3),
                        "users_scored": len(hold_users)}
        print(f"[{name}] {key}: {describe(mcfg)} fit {fit_s:.2f}s, scored {len(hold_users)} users in {score_s:.3f}s", flush=True)
    del coded
    users, items = IdMap(bundle.user_ids), IdMap(bundle.item_ids)
    raw_top, defaults_fit_s = implicit_defaults_top(train, users, items, raw_value)
    tops["implicit_defaults"] = raw_top[rows]
    timings["implicit_defaults"] = {"model": "implicit.als.AlternatingLeastSquares() defaults", "fit_seconds": round(defaults_fit_s, 2)}
    bin_top, _ = implicit_defaults_top(train, users, items, None)
    tops["implicit_defaults_binary"] = bin_top[rows]
    binary = interaction_matrix(train, users, items, value=None)
    tops["popularity"] = popularity_topn(binary, rows, 10)
    metrics = evaluate_lists(tops, hold_users, bundle.item_ids, holdout, train)
    nd = {k: v["ndcg@10"] for k, v in metrics.items()}
    best_single = max((k for k in nd if k.startswith("tuned_")), key=lambda k: nd[k])
    out = {
        "train_events": len(train),
        "holdout_events": len(holdout),
        "users": len(users),
        "items": len(items),
        "raw_matrix_for_defaults": raw_value or "binary",
        "families": list(families),
        "families_skipped": skipped,
        "selected_family": configs["selected"].model_family,
        "metrics": metrics,
        "timings": timings,
        "best_single_family_tuned": best_single,
        "target_selected_vs_best_single_minus_1pct": bool(nd["selected"] >= nd[best_single] * 0.99),
        "target_selected_vs_implicit_defaults_1_15x": bool(nd["selected"] >= 1.15 * nd["implicit_defaults"]),
        "lift_vs_implicit_defaults": round(nd["selected"] / nd["implicit_defaults"] - 1, 4),
        "lift_vs_popularity": round(nd["selected"] / nd["popularity"] - 1, 4),
        "best_config": best["config"] if best else None,
        "best_validation_ndcg@10": round(best["best_metric"], 5) if best else None,
        "incumbent_validation_ndcg@10": round(results[0].best_metric, 5),
        "trials": [
            {"trial": r.trial, **r.params, "best_iteration": r.best_iteration, "valid_ndcg@10": round(r.best_metric, 5),
             "stopped_early": r.stopped_early, "seconds": round(r.seconds, 2), "error": r.error}
            for r in results
        ],
        "tuning_seconds": round(tune_s, 2),
        "tuning_seconds_by_family": {
            f: round(sum(r.seconds for r in results if r.params.get("model_family", "als") == f), 2) for f in families
        },
    }
    print(f"[{name}] NDCG@10 {nd}; selected {out['selected_family']}: lift vs defaults {out['lift_vs_implicit_defaults']:+.1%}, "
          f"vs popularity {out['lift_vs_popularity']:+.1%}", flush=True)
    return out


def movielens(path: Path, cfg) -> dict:
    from include.recsys.data.source import _read_movielens

    df = _read_movielens(path / "ratings.csv")
    train, holdout = per_user_temporal_split(df, 0.2)
    fit_df, valid = per_user_temporal_split(train, 0.2)
    return {
        "source": str(path / "ratings.csv"),
        "split": "per-user temporal 80/20 (each user's last 20% of ratings held out); tuning "
        "validation: the last 20% of each user's first 80%",
        **compare("movielens", train, holdout, fit_df, valid, cfg, raw_value="weight",
                  train_cutoff=None, valid_cutoff=None),
    }


def synthetic(preset: str, cfg) -> dict:
    from include.recsys.data import synth
    from include.recsys.data.snapshot import build_indexed_snapshot
    from include.recsys.data.source import Window
    from include.recsys.data.split import time_split
    from include.recsys.tuning.search import validation_split

    spec = dataclasses.replace(synth.PRESETS[preset], end_date="2026-11-20")
    tmp = Path(tempfile.mkdtemp(prefix="recsys-quality-"))
    scfg = cfg.with_overrides({"data_dir": tmp})
    t0 = time.perf_counter()
    synth.land_partitioned(synth.generate(spec), scfg.source)
    window = Window.ending_at(pd.Timestamp("2026-11-21", tz="UTC"), scfg.window_days)
    snap = build_indexed_snapshot(scfg, window).plain_frame()
    cutoff = window.end - pd.Timedelta(days=scfg.holdout_days)
    train, holdout, _ = time_split(snap, cutoff)
    fit_df, valid, val_cutoff = validation_split(train, cutoff, scfg.tune_validation_days)
    print(f"[{preset}] data ready in {time.perf_counter() - t0:.1f}s", flush=True)
    counts = train.assign(count=np.float32(1.0))
    res = compare(preset, counts.assign(weight=train["weight"]), holdout, fit_df, valid, scfg,
                  raw_value="count", train_cutoff=cutoff, valid_cutoff=val_cutoff)
    return {
        "preset": preset,
        "spec": dataclasses.asdict(spec),
        "split": f"the pipeline's: window {scfg.window_days} d, holdout = last {scfg.holdout_days} d, "
        f"tuning validation = the {scfg.tune_validation_days} d before it",
        **res,
    }


def _md(result: dict) -> str:
    lines = [f"# Quality benchmark ({result['date']})", "", f"`{result['command']}`", "",
             f"Machine: {result['machine']}. Seed {SEED}. Targets (issue 22): the selected model's NDCG@10 >= "
             "the best single family's tuned result - 1%, and >= 1.15x implicit ALS defaults (seen items "
             "filtered for all; the selection uses the tuning validation split only).", ""]
    for name, r in result["datasets"].items():
        m, t = r["metrics"], r["timings"]
        lines += [f"## {name}", "", r["split"] + ".", "",
                  f"Families searched: {', '.join(r['families'])}"
                  + (f"; left out: {r['families_skipped']}" if r["families_skipped"] else "") + ".", "",
                  "| model | configuration | NDCG@10 | recall@10 | precision@10 | coverage@10 | fit s | score s |",
                  "|---|---|---|---|---|---|---|---|"]
        for k, v in m.items():
            tm = t.get(k, {})
            lines.append(f"| {k} | {tm.get('model', '')} | {v['ndcg@10']:.4f} | {v['recall@10']:.4f} | {v['precision@10']:.4f} "
                         f"| {v['coverage@10']:.4f} | {tm.get('fit_seconds', '')} | {tm.get('score_seconds', '')} |")
        sel, single = m["selected"]["ndcg@10"], m[r["best_single_family_tuned"]]["ndcg@10"]
        lines += ["", f"Selected family: **{r['selected_family']}** (validation NDCG@10 {r['best_validation_ndcg@10']}; "
                  f"the default config's {r['incumbent_validation_ndcg@10']}).", "",
                  f"- selected {sel:.4f} vs best single family tuned ({r['best_single_family_tuned']}) {single:.4f}: "
                  f"target >= -1%: **{'met' if r['target_selected_vs_best_single_minus_1pct'] else 'NOT met'}**",
                  f"- vs implicit ALS defaults: **{r['lift_vs_implicit_defaults']:+.1%}** (target +15%: "
                  f"**{'met' if r['target_selected_vs_implicit_defaults_1_15x'] else 'NOT met'}**); vs popularity "
                  f"{r['lift_vs_popularity']:+.1%} ({m['selected']['n_users_evaluated']} users)", "",
                  f"Tuning: {len(r['trials'])} trials in {r['tuning_seconds']} s (by family: {r['tuning_seconds_by_family']}).", "",
                  f"Selected config: `{json.dumps(r['best_config'])}`", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from include.recsys.config.settings import load_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--movielens", default=os.environ.get("RECSYS_MOVIELENS_DIR")
                    or str(ROOT.parent / "shared" / "datasets" / "movielens-latest-small"))
    ap.add_argument("--synthetic", default="m", help="synth preset, or 'none'")
    ap.add_argument("--trials", type=int, default=24, help="random-search budget (MovieLens)")
    ap.add_argument("--synthetic-trials", type=int, default=8, help="random-search budget (synthetic)")
    ap.add_argument("--max-iterations", type=int, default=30)
    ap.add_argument("--out", default=None, help="folder for quality-<date>.json/.md")
    ap.add_argument("--skip-movielens", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    tmp = Path(tempfile.mkdtemp(prefix="recsys-quality-cfg-"))
    base = {"data_dir": tmp, "seed": SEED, "tune_max_iterations": args.max_iterations}
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "command": "python -m bench.quality " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), Python {platform.python_version()}",
        "datasets": {},
    }
    if not args.skip_movielens:
        cfg = load_config({**base, "tune_trials": args.trials})
        result["datasets"]["movielens-latest-small"] = movielens(Path(args.movielens), cfg)
    if args.synthetic != "none":
        cfg = load_config({**base, "tune_trials": args.synthetic_trials})
        result["datasets"][f"synthetic-{args.synthetic}"] = synthetic(args.synthetic, cfg)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"quality-{result['date']}"
        stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
        stem.with_suffix(".md").write_text(_md(result))
        print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
