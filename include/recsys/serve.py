"""A small read-only HTTP endpoint over the served recommendation table.

    .venv/bin/python -m include.recsys.serve [--root data/recommendations] [--port 8000]

Routes: ``GET /recommendations/{user_id}?n=10`` (the fallback list for unknown users, marked
``source: "fallback"``), ``GET /version`` (the served version and its manifest summary),
``GET /health`` (200 when a version is served and readable, 503 otherwise). It reads through
:class:`~include.recsys.reader.RecommendationStore`, so a new CURRENT is picked up on the next
request and every answer comes from one version (on an object store, within the reader's
``refresh_s``). ``--root`` may be a path or an URL (``s3://bucket/prefix``). Binds 127.0.0.1
by default.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from include.recsys import publish, storage
from include.recsys.reader import RecommendationStore


def create_app(root: Path | str):
    from fastapi import FastAPI, HTTPException, Query

    store = RecommendationStore(root)
    app = FastAPI(title="recsys recommendations", version="1")

    @app.get("/health")
    def health():
        try:
            v = store.current_version()
            store.recommend("__health_check__", n=1)
        except (LookupError, publish.PublishError, storage.StorageError) as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from exc
        return {"status": "ok", "version": v}

    @app.get("/version")
    def version():
        try:
            m = store.manifest()
        except (LookupError, publish.PublishError, storage.StorageError) as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from exc
        keys = ("version", "model_name", "model_version", "created_at", "rows", "users", "top_n", "data_window")
        return {k: m.get(k) for k in keys}

    @app.get("/recommendations/{user_id}")
    def recommendations(
        user_id: str, n: int | None = Query(default=None, ge=1), segment: str | None = None
    ):
        try:
            r = store.recommend(user_id, n=n, segment=segment)
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc
        except (LookupError, publish.PublishError, storage.StorageError) as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from exc
        return {
            "user_id": user_id,
            "version": r.version,
            "source": r.source,
            "items": [{"rank": i + 1, "item_id": it, "score": s} for i, (it, s) in enumerate(zip(r.items, r.scores))],
        }

    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from include.recsys.config import load_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=None)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args(argv)
    uvicorn.run(create_app(args.root or load_config().recommendations_root), host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
