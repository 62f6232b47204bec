"""Validation time vs ALS training time on one synthetic frame (issue 3: ratio <= 0.5).

    .venv/bin/python -m bench.validation --preset m [--docs]

Generates the preset once (``m``: ~5M events), builds the snapshot frame the pipeline would
(weights, exact-duplicate drop, sorted), then times on the same frame:

* input validation: the GX suite (``validate_interactions``) + the vectorised source/drift
  statistics (``snapshot_statistics``), optionally with Data Docs (``--docs``);
* ALS training: ``include.recsys.backends.implicit.train`` with the default config.

Prints one JSON line: rows, seconds for each, and ratio = validation / training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="m")
    ap.add_argument("--docs", action="store_true", help="also build GX Data Docs")
    args = ap.parse_args(argv)

    import pandas as pd

    from include.recsys.backends.implicit import train
    from include.recsys.config.settings import PipelineConfig
    from include.recsys.core.ids import encode
    from include.recsys.data import synth
    from include.recsys.data.source import add_weights
    from include.recsys.validation.history import snapshot_statistics
    from include.recsys.validation.input import validate_interactions

    cfg = PipelineConfig()
    spec = dataclasses.replace(synth.PRESETS[args.preset], end_date="2026-11-20")
    t0 = time.perf_counter()
    raw = synth.generate(spec)
    raw["event_ts"] = raw["event_ts"].astype("datetime64[us, UTC]")
    df = add_weights(raw, cfg.event_weights).drop_duplicates(ignore_index=True)
    df = df.sort_values(["event_ts", "user_id"], kind="stable", ignore_index=True)
    gen_s = time.perf_counter() - t0
    end = pd.Timestamp("2026-11-21", tz="UTC")
    start = min(df["event_ts"].min().floor("D"), end - pd.Timedelta(days=cfg.window_days))

    import great_expectations  # noqa: F401  (import time is not validation time)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as docs:
        report = validate_interactions(
            df, window_start=start, window_end=end,
            parameters={"event_types": sorted(cfg.event_weights) + ["event", "rating"]},
            docs_dir=docs if args.docs else None,
        )
    coded, users, items = encode(df)  # what the snapshot stage writes beside the rows
    stats = snapshot_statistics(df, end - pd.Timedelta(days=1), (coded["user_idx"].to_numpy(), coded["item_idx"].to_numpy()))
    validation_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    _, train_stats = train(coded, cfg, id_maps=(users, items))
    train_s = time.perf_counter() - t0
    print(json.dumps({
        "preset": args.preset, "rows": len(df), "users": stats["users"], "items": stats["items"],
        "validation_passed": report.success, "data_docs": args.docs,
        "generate_s": round(gen_s, 2), "validation_s": round(validation_s, 2),
        "train_s": round(train_s, 2), "ratio": round(validation_s / train_s, 3),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
