"""The read side under change: CURRENT moving, bad n, corrupt pointers, batch lookups, the
HTTP endpoint and the CLI's JSON output."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from include.recsys.cli.read import main
from include.recsys.errors import PublishError
from include.recsys.tables.current import history, point_current, read_current, rollback
from include.recsys.tables.layout import LOG_DIR, version_dir
from include.recsys.tables.reader import RecommendationStore
from include.recsys.tables.versions import write_version

N = 3


def _table(tag: str, users=("u1", "u2")) -> pd.DataFrame:
    rows = [
        {"user_id": u, "rank": r, "item_id": f"{tag}-{u}-{r}", "score": 1.0 / r, "source": "model",
         "model_name": "m", "model_version": tag}
        for u in users for r in range(1, N + 1)
    ]
    return pd.DataFrame(rows)


FALLBACK = pd.DataFrame({"rank": [1, 2, 3], "item_id": ["pop1", "pop2", "pop3"], "score": [1.0, 0.5, 0.2]})


def _publish(root, tag: str, **kw) -> None:
    write_version(root, tag, _table(tag, **kw), FALLBACK, {"top_n": N})
    point_current(root, tag)


def test_store_follows_current_when_it_moves(tmp_path):
    _publish(tmp_path, "v1")
    store = RecommendationStore(tmp_path)
    assert store.recommend("u1").items == ["v1-u1-1", "v1-u1-2", "v1-u1-3"]
    _publish(tmp_path, "v2")
    r = store.recommend("u1")
    assert r.version == "v2" and r.items[0] == "v2-u1-1"
    rollback(tmp_path)
    assert store.recommend("u2").version == "v1"


def test_n_is_validated(tmp_path):
    _publish(tmp_path, "v1")
    store = RecommendationStore(tmp_path)
    assert len(store.recommend("u1", n=2).items) == 2
    for bad in (0, -1):
        with pytest.raises(ValueError, match="positive integer"):
            store.recommend("u1", n=bad)
    with pytest.raises(ValueError, match="exceeds the 3 recommendations stored"):
        store.recommend("u1", n=4)


def test_unknown_user_gets_fallback_with_source(tmp_path):
    _publish(tmp_path, "v1")
    r = RecommendationStore(tmp_path).recommend("stranger", n=2)
    assert r.source == "fallback" and r.items == ["pop1", "pop2"] and r.scores == [1.0, 0.5]


def test_corrupt_current_is_healed_from_the_log_else_a_clear_error(tmp_path):
    _publish(tmp_path, "v1")
    (tmp_path / "CURRENT").write_text("garbage\n")
    # the commit log is the truth: the reader serves its newest commit and repairs CURRENT
    assert RecommendationStore(tmp_path).recommend("u1").version == "v1"
    assert (tmp_path / "CURRENT").read_text() == "v1\n"
    # without a log (a CURRENT written by hand) a corrupt CURRENT is a clear error
    shutil.rmtree(tmp_path / LOG_DIR)
    (tmp_path / "CURRENT").write_text("garbage\n")
    with pytest.raises(LookupError, match="CURRENT .* is corrupt: it names 'garbage'"):
        RecommendationStore(tmp_path).recommend("u1")
    (tmp_path / "CURRENT").write_text("")
    with pytest.raises(LookupError, match="corrupt"):
        RecommendationStore(tmp_path).recommend("u1")


def test_version_without_manifest_is_refused(tmp_path):
    _publish(tmp_path, "v1")
    (version_dir(tmp_path, "v1") / "_manifest.json").unlink()
    with pytest.raises(PublishError, match="no manifest"):
        RecommendationStore(tmp_path).recommend("u1")
    assert main(["--root", str(tmp_path), "user", "u1"]) == 1


def test_recommend_many_one_version(tmp_path):
    _publish(tmp_path, "v1")
    df = RecommendationStore(tmp_path).recommend_many(["u2", "ghost", "u1"], n=2)
    assert df["user_id"].tolist() == ["u2", "u2", "ghost", "ghost", "u1", "u1"]
    assert df["rank"].tolist() == [1, 2, 1, 2, 1, 2]
    assert df.loc[df.user_id == "ghost", "source"].eq("fallback").all()
    assert df.loc[df.user_id == "u1", "item_id"].tolist() == ["v1-u1-1", "v1-u1-2"]


def test_cli_json_and_errors(tmp_path, capsys):
    _publish(tmp_path, "v1")
    assert main(["--root", str(tmp_path), "user", "u1", "--n", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"user_id": "u1", "items": ["v1-u1-1", "v1-u1-2"], "scores": [1.0, 0.5], "source": "model", "version": "v1"}
    assert main(["--root", str(tmp_path), "users", "u1", "u2", "--n", "1", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["item_id"] for x in lines] == ["v1-u1-1", "v1-u2-1"]
    assert main(["--root", str(tmp_path), "user", "u1", "--n", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: n must be a positive integer") and "Traceback" not in err
    assert main(["--root", str(tmp_path), "versions", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["version"] == "v1"


def test_cli_rollback(tmp_path, capsys):
    _publish(tmp_path, "v1")
    _publish(tmp_path, "v2")
    assert main(["--root", str(tmp_path), "rollback"]) == 0
    assert "CURRENT -> v1" in capsys.readouterr().out
    assert read_current(tmp_path) == "v1"
    assert history(tmp_path)[-1]["reason"] == "rollback"


def test_cli_log_and_verify(tmp_path, capsys):
    _publish(tmp_path, "v1")
    _publish(tmp_path, "v2")
    assert main(["--root", str(tmp_path), "log", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [(e["seq"], e["version"], e["previous"]) for e in entries] == [(1, "v1", None), (2, "v2", "v1")]
    assert main(["--root", str(tmp_path), "log"]) == 0
    assert "v2" in capsys.readouterr().out
    assert main(["--root", str(tmp_path), "verify", "--checksum"]) == 0
    assert capsys.readouterr().out.strip() == "version v2: 2 files intact (sizes and sha256)"
    (version_dir(tmp_path, "v1") / "part-00000.parquet").write_bytes(b"x")
    assert main(["--root", str(tmp_path), "verify", "--version", "v1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: version v1 does not verify: part-00000.parquet has 1 bytes") and "Traceback" not in err


def test_http_endpoint(tmp_path):
    from fastapi.testclient import TestClient

    from include.recsys.tables.serve import create_app

    client = TestClient(create_app(tmp_path, no_auth=True))
    assert client.get("/health").status_code == 503  # nothing published yet
    _publish(tmp_path, "v1")
    assert client.get("/health").json() == {"status": "ok", "version": "v1"}
    body = client.get("/recommendations/u1", params={"n": 2}).json()
    assert body["source"] == "model" and [x["item_id"] for x in body["items"]] == ["v1-u1-1", "v1-u1-2"]
    assert client.get("/recommendations/ghost").json()["source"] == "fallback"
    assert client.get("/recommendations/u1", params={"n": 0}).status_code == 422
    assert client.get("/recommendations/u1", params={"n": 9}).status_code == 422
    _publish(tmp_path, "v2")
    assert client.get("/version").json()["version"] == "v2"
    assert client.get("/recommendations/u1").json()["items"][0]["item_id"] == "v2-u1-1"
