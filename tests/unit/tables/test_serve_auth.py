"""The HTTP reader's lock: bearer token (env or secrets file, constant-time compare), the
refusal to start open, the per-client rate limit, a truthful OpenAPI document, and a token
that never reaches the logs."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from include.recsys.errors import ServeConfigError
from include.recsys.tables.current import point_current
from include.recsys.tables.reader import RecommendationStore
from include.recsys.tables.serve import (
    BURST_ENV,
    RATE_ENV,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    RateLimiter,
    create_app,
    load_token,
    main,
    run,
)
from include.recsys.tables.versions import write_version

TOKEN = "s3cr3t-reader-token-0123456789abcdef"


def _publish(root, tag: str = "v1") -> None:
    table = pd.DataFrame(
        [{"user_id": u, "rank": r, "item_id": f"{tag}-{u}-{r}", "score": 1.0 / r, "source": "model",
          "model_name": "m", "model_version": "1"} for u in ("u1", "u2") for r in (1, 2, 3)]
    )
    fallback = pd.DataFrame({"rank": [1, 2, 3], "item_id": ["p1", "p2", "p3"], "score": [1.0, 0.5, 0.2]})
    write_version(root, tag, table, fallback, {"top_n": 3})
    point_current(root, tag)


@pytest.fixture()
def client(tmp_path):
    from fastapi.testclient import TestClient

    _publish(tmp_path)
    return TestClient(create_app(tmp_path, TOKEN, limiter=RateLimiter(0, 1)))


def _auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_no_token_and_wrong_token_are_401(client):
    for path in ("/recommendations/u1", "/version"):
        r = client.get(path)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json() == {"detail": "missing or wrong bearer token"}
        assert client.get(path, headers=_auth(TOKEN + "x")).status_code == 401
        assert client.get(path, headers=_auth(TOKEN[:-1])).status_code == 401
        assert client.get(path, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
        assert client.get(path, headers={"Authorization": TOKEN}).status_code == 401
    assert client.get("/health").json() == {"status": "ok", "version": "v1"}  # open for probes


def test_right_token_gives_the_in_process_readers_rows(client, tmp_path):
    body = client.get("/recommendations/u1", params={"n": 2}, headers=_auth()).json()
    direct = RecommendationStore(tmp_path).recommend("u1", n=2)
    assert body["version"] == direct.version == "v1"
    assert [(x["item_id"], x["score"]) for x in body["items"]] == list(zip(direct.items, direct.scores))
    assert client.get("/recommendations/ghost", headers=_auth()).json()["source"] == "fallback"
    assert client.get("/version", headers=_auth()).json()["version"] == "v1"


def test_refuses_to_start_without_a_token(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv(TOKEN_FILE_ENV, raising=False)
    with pytest.raises(ServeConfigError, match="no reader token: set RECSYS_READER_TOKEN_FILE"):
        create_app(tmp_path)
    assert main(["--root", str(tmp_path), "--port", "1"]) == 2  # before binding anything
    with pytest.raises(ServeConfigError, match="loopback"):
        run(tmp_path, host="0.0.0.0", no_auth=True)


def test_no_auth_is_explicit_and_local(tmp_path):
    from fastapi.testclient import TestClient

    _publish(tmp_path)
    open_client = TestClient(create_app(tmp_path, no_auth=True))
    assert open_client.get("/recommendations/u1").status_code == 200


def test_token_from_env_or_secrets_file(tmp_path):
    assert load_token({}) is None
    assert load_token({TOKEN_ENV: f"  {TOKEN}\n"}) == TOKEN
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    # the file wins: a mounted secret is the production way
    assert load_token({TOKEN_FILE_ENV: str(secret), TOKEN_ENV: "x" * 20}) == TOKEN
    with pytest.raises(ServeConfigError, match="cannot be read"):
        load_token({TOKEN_FILE_ENV: str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ServeConfigError, match="is empty"):
        load_token({TOKEN_FILE_ENV: str(tmp_path / "empty")})
    with pytest.raises(ServeConfigError, match="at least 16"):
        load_token({TOKEN_ENV: "short"})


def test_rate_limit_per_client_with_retry_after(tmp_path):
    from fastapi.testclient import TestClient

    _publish(tmp_path)
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    app = create_app(tmp_path, TOKEN, limiter=limiter)
    a = TestClient(app, client=("10.0.0.1", 1234))
    b = TestClient(app, client=("10.0.0.2", 1234))
    assert [a.get("/version", headers=_auth()).status_code for _ in range(3)] == [200, 200, 200]
    r = a.get("/version", headers=_auth())
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert a.get("/version").status_code == 429  # wrong-token guesses are throttled too
    assert b.get("/version", headers=_auth()).status_code == 200  # another client has its own bucket
    assert a.get("/health").status_code == 200  # probes are never limited
    now[0] += 0.5  # 2/s: one request back after half a second
    assert a.get("/version", headers=_auth()).status_code == 200
    assert a.get("/version", headers=_auth()).status_code == 429


def test_bad_rate_limit_settings_refuse_to_start(tmp_path, monkeypatch):
    monkeypatch.setenv(RATE_ENV, "fast")
    with pytest.raises(ServeConfigError, match="RECSYS_READER_RATE='fast'"):
        create_app(tmp_path, TOKEN)
    monkeypatch.setenv(RATE_ENV, "5")
    monkeypatch.setenv(BURST_ENV, "0")
    with pytest.raises(ServeConfigError, match="integer burst >= 1"):
        create_app(tmp_path, TOKEN)


def test_openapi_declares_401_and_429_and_bearer(client):
    doc = client.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path in ("/recommendations/{user_id}", "/version"):
        op = doc["paths"][path]["get"]
        assert {"401", "429", "503"} <= set(op["responses"]), path
        assert op["security"] == [{"HTTPBearer": []}]
        assert "Retry-After" in op["responses"]["429"]["headers"]
    assert "security" not in doc["paths"]["/health"]["get"]


def test_token_never_appears_in_logs(client, caplog, tmp_path, monkeypatch):
    caplog.set_level(logging.DEBUG)
    client.get("/recommendations/u1", headers=_auth())
    client.get("/recommendations/u1", headers=_auth(TOKEN + "wrong"))
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: logging.getLogger("uvicorn").info("started %s", kw))
    run(tmp_path, port=8123)
    assert "bearer token required" in caplog.text  # the start-up line was captured
    assert TOKEN not in caplog.text and TOKEN[:12] not in caplog.text
