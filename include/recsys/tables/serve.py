"""A small read-only HTTP endpoint over the served recommendation table.

    RECSYS_READER_TOKEN_FILE=/run/secrets/reader_token \\
        .venv/bin/python -m include.recsys.tables.serve [--root data/recommendations] [--port 8000]
    .venv/bin/python -m include.recsys.tables.serve --no-auth        # local use only (127.0.0.1)

Routes: ``GET /recommendations/{user_id}?n=10`` (the fallback list for unknown users, marked
``source: "fallback"``), ``GET /version`` (the served version and its manifest summary),
``GET /items/{item_id}/similar?n=10`` (the similar-items table, published beside the
recommendations: ``--similar-root`` or ``<root>/../similar_items``; an unknown item gets the
table's popular-items fallback, ``source: "fallback"``; 503 while none is published),
``GET /health`` (200 when a version is served and readable, 503 otherwise). It reads through
:class:`~include.recsys.tables.reader.RecommendationStore`, so a new CURRENT is picked up on the next
request and every answer comes from one version (on an object store, within the reader's
``refresh_s``). ``--root`` may be a path or an URL (``s3://bucket/prefix``). Binds 127.0.0.1
by default.

Authentication: every route but ``/health`` needs ``Authorization: Bearer <token>``; the token
comes from the file named by ``RECSYS_READER_TOKEN_FILE`` (a mounted secret), else from
``RECSYS_READER_TOKEN``, and is compared in constant time. Without a token the service refuses
to start unless ``--no-auth`` is given, which only binds a loopback address. A per-client token
bucket (``RECSYS_READER_RATE``/s, burst ``RECSYS_READER_BURST``; 0 turns it off) answers 429
with ``Retry-After`` to a client that asks faster; failed logins count against it too.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

# module level, not inside create_app: FastAPI resolves the (string) annotations of the route
# and dependency functions against this module's globals
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from include.recsys.core.uri import normalize
from include.recsys.errors import PublishError, ServeConfigError, StorageError
from include.recsys.tables.reader import RecommendationStore, SimilarItemsStore

log = logging.getLogger(__name__)


TOKEN_ENV, TOKEN_FILE_ENV = "RECSYS_READER_TOKEN", "RECSYS_READER_TOKEN_FILE"

RATE_ENV, BURST_ENV = "RECSYS_READER_RATE", "RECSYS_READER_BURST"

MIN_TOKEN_CHARS = 16  # shorter secrets are guessable; generate with `openssl rand -hex 32`

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def load_token(env: Mapping[str, str] | None = None) -> str | None:
    """The bearer token: the file named by ``RECSYS_READER_TOKEN_FILE``, else
    ``RECSYS_READER_TOKEN``; None when neither is set. Never logged."""
    env = os.environ if env is None else env
    path = (env.get(TOKEN_FILE_ENV) or "").strip()
    if path:
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            raise ServeConfigError(f"{TOKEN_FILE_ENV}={path} cannot be read: {exc.strerror or exc}") from None
        if not token:
            raise ServeConfigError(f"{TOKEN_FILE_ENV}={path} is empty: write the token into it")
    else:
        token = (env.get(TOKEN_ENV) or "").strip() or None
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ServeConfigError(
            f"the reader token has {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
            "(e.g. `openssl rand -hex 32`)"
        )
    return token


class RateLimiter:
    """Token buckets per client: ``rate`` requests per second on average, ``burst`` at once.

    In-process only: with several server processes each enforces its own limit (put a proxy's
    limiter in front for a global one). Idle buckets are dropped so memory stays bounded.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate < 0 or burst < 1:
            raise ValueError(f"rate must be >= 0 and burst >= 1, got rate={rate}, burst={burst}")
        self.rate, self.burst, self._clock = float(rate), int(burst), clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, client: str) -> float:
        """0.0 when ``client`` may go on (one token taken), else the seconds until it may."""
        if self.rate == 0:
            return 0.0
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(client, (float(self.burst), now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                wait = 0.0
            else:
                self._buckets[client] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
            if len(self._buckets) > 10_000:  # forget clients whose bucket is full again
                full = self.burst / self.rate
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full}
        return wait


def _limiter_from_env() -> RateLimiter:
    rate, burst = os.environ.get(RATE_ENV, "50"), os.environ.get(BURST_ENV, "100")
    try:
        return RateLimiter(float(rate), int(burst))
    except ValueError as exc:
        raise ServeConfigError(
            f"{RATE_ENV}={rate!r} / {BURST_ENV}={burst!r}: need a rate >= 0 (0: no limit) and an "
            f"integer burst >= 1 ({exc})"
        ) from None

_ERROR = {"content": {"application/json": {"schema": {
    "type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}}}}

_RESPONSES = {
    401: {"description": "Missing or wrong bearer token", **_ERROR},
    429: {"description": "Too many requests from this client; see Retry-After",
          "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait"}}, **_ERROR},
    503: {"description": "No readable version is served", **_ERROR},
}


def _guard(expected: bytes | None, limiter: RateLimiter):
    """The dependency of every route but ``/health``: the rate limit, then the bearer token
    (``expected``; None: no token asked)."""
    bearer = HTTPBearer(auto_error=False, description="RECSYS_READER_TOKEN")

    def guard(request: Request, cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        # limit first: wrong-token guesses are throttled like any other request
        wait = limiter.acquire(request.client.host if request.client else "unknown")
        if wait > 0:
            raise HTTPException(429, "too many requests from this client", {"Retry-After": str(math.ceil(wait))})
        if expected is None:
            return
        given = cred.credentials.encode() if cred and cred.scheme.lower() == "bearer" else b""
        if not hmac.compare_digest(given, expected):
            raise HTTPException(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    return guard


def create_app(
    root: Path | str, token: str | None = None, *, no_auth: bool = False, limiter: RateLimiter | None = None,
    similar_root: Path | str | None = None,
):
    """The FastAPI app. ``token``: the bearer token every route but ``/health`` requires;
    ``no_auth=True`` (and no token) serves without one. One of the two must be given.
    ``similar_root``: the similar-items table (default: ``similar_items`` beside ``root``)."""
    if not token and not no_auth:
        raise ServeConfigError(
            f"no reader token: set {TOKEN_FILE_ENV} (a secrets file) or {TOKEN_ENV}, or start "
            "with --no-auth for local use"
        )
    store = RecommendationStore(root)
    from include.recsys.core.uri import similar_root as _similar_root

    similar_store = SimilarItemsStore(similar_root or _similar_root(normalize(root)))
    app = FastAPI(title="recsys recommendations", version="1")
    guard = _guard(token.encode() if token else None, limiter or _limiter_from_env())
    guarded = {"dependencies": [Depends(guard)], "responses": _RESPONSES}

    @app.get("/health", responses={503: _RESPONSES[503]})
    def health():
        try:
            v = store.current_version()
            store.recommend("__health_check__", n=1)
        except (LookupError, PublishError, StorageError) as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from exc
        return {"status": "ok", "version": v}

    @app.get("/version", **guarded)
    def version():
        try:
            m = store.manifest()
        except (LookupError, PublishError, StorageError) as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from exc
        keys = ("version", "model_name", "model_version", "created_at", "rows", "users", "top_n", "data_window")
        return {k: m.get(k) for k in keys}

    @app.get("/recommendations/{user_id}", **guarded)
    def recommendations(
        user_id: str, n: int | None = Query(default=None, ge=1), segment: str | None = None
    ):
        try:
            r = store.recommend(user_id, n=n, segment=segment)
            variant = store.variant_of(user_id, r.version)
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc
        except (LookupError, PublishError, StorageError) as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from exc
        body = {
            "user_id": user_id,
            "version": r.version,
            "source": r.source,
            "items": [{"rank": i + 1, "item_id": it, "score": s} for i, (it, s) in enumerate(zip(r.items, r.scores))],
        }
        if variant is not None:  # only tables with A/B variants: log it with the exposure
            body["variant"] = variant
        return body

    @app.get("/items/{item_id}/similar", **guarded)
    def similar_items(item_id: str, n: int | None = Query(default=None, ge=1)):
        try:
            r = similar_store.similar(item_id, n=n)
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc
        except (LookupError, PublishError, StorageError) as exc:
            raise HTTPException(status_code=503, detail=f"similar items: {exc}") from exc
        return {
            "item_id": item_id,
            "version": r.version,
            "source": r.source,
            "items": [{"rank": i + 1, "item_id": it, "score": s} for i, (it, s) in enumerate(zip(r.items, r.scores))],
        }

    return app


def run(
    root: Path | str, host: str = "127.0.0.1", port: int = 8000, token: str | None = None, no_auth: bool = False
) -> None:
    """Serve ``root`` until stopped. ``token`` None: read from the environment
    (:func:`load_token`). Raises :class:`ServeConfigError` when it cannot start safely."""
    import uvicorn

    token = token or load_token()
    if no_auth and not token and host not in LOOPBACK:
        raise ServeConfigError(f"--no-auth serves only a loopback address (127.0.0.1), not {host}: set a token")
    app = create_app(root, token, no_auth=no_auth)
    log.info("serving %s on %s:%d (%s)", root, host, port, "bearer token required" if token else "NO AUTH, local use")
    uvicorn.run(app, host=host, port=port)


def main(argv: list[str] | None = None) -> int:
    from include.recsys.config.settings import load_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=None)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--no-auth", action="store_true", help="serve without a token (loopback only)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        run(args.root or load_config().recommendations_root, args.host, args.port, no_auth=args.no_auth)
    except ServeConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
