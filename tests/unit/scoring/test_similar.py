"""The similar-items table: exact kernel vs a numpy reference, the FAISS option, rules, its
validation, and publishing/reading it through the reader, the CLI and HTTP."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from include.recsys.core.uri import similar_root
from include.recsys.errors import OutputValidationError
from include.recsys.scoring import similar as sim
from include.recsys.stages.similar import write_table
from include.recsys.tables.current import point_current
from include.recsys.tables.layout import version_dir
from include.recsys.tables.manifest import verify_version
from include.recsys.tables.reader import SimilarItemsStore
from include.recsys.tables.versions import read_version_table
from include.recsys.validation.similar import validate_similar_table


def _brute(vf: np.ndarray, k: int, allowed: np.ndarray | None = None):
    """Cosine of every pair in float64, itself and excluded items left out, (score desc, id asc)."""
    v = vf.astype(np.float64)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    v = v / np.where(norms > 0, norms, 1.0)
    s = v @ v.T
    n = len(v)
    allowed = np.ones(n, bool) if allowed is None else allowed
    items = np.full((n, k), -1)
    for i in range(n):
        cand = np.flatnonzero(allowed & (np.arange(n) != i))
        order = cand[np.lexsort((cand, -s[i, cand]))][:k]
        items[i, : len(order)] = order
    return items, s


@pytest.mark.parametrize("k", [1, 7, 40])
def test_exact_equals_numpy_reference(k: int) -> None:
    rng = np.random.default_rng(k)
    vf = rng.standard_normal((57, 6)).astype(np.float32)
    vf[5] = 0.0  # an untrained item: cosine 0 to everything
    items, scores = sim.exact(vf, k, block_size=8)
    ref, s = _brute(vf, k)
    np.testing.assert_array_equal(items, ref)
    np.testing.assert_allclose(scores, np.take_along_axis(s, ref, axis=1), atol=1e-5)
    assert not (items == np.arange(57)[:, None]).any()


def test_exact_with_rules_and_a_tiny_allowed_set() -> None:
    rng = np.random.default_rng(0)
    vf = rng.standard_normal((30, 4)).astype(np.float32)
    allowed = np.zeros(30, bool)
    allowed[[2, 3, 11, 20]] = True
    items, scores = sim.exact(vf, 5, allowed)
    ref, _ = _brute(vf, 5, allowed)
    np.testing.assert_array_equal(items, ref)
    assert (items[2, :3] >= 0).all() and items[2, 3] == -1  # 3 allowed others, then padding
    assert np.isin(items[items >= 0], [2, 3, 11, 20]).all()


def test_faiss_recall_and_rules() -> None:
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((20, 16))
    vf = (centers[rng.integers(0, 20, 1500)] + 0.3 * rng.standard_normal((1500, 16))).astype(np.float32)
    allowed = rng.random(1500) > 0.1
    ex, _ = sim.exact(vf, 10, allowed)
    ap, sc = sim.approximate(vf, 10, allowed, threads=1)
    assert sim.recall_at_k(ap, ex) >= 0.95
    assert np.isin(ap[ap >= 0], np.flatnonzero(allowed)).all()
    assert not (ap == np.arange(1500)[:, None]).any()
    assert (np.diff(sc, axis=1)[np.isfinite(sc[:, 1:])] <= 1e-6).all()
    with pytest.raises(ValueError, match="similar_items_engine"):
        sim.compute(vf, 10, engine="annoy")


def _published(tmp_path, allowed=None):
    rng = np.random.default_rng(2)
    ids = pd.Index([f"i{i}" for i in range(25)])
    vf = rng.standard_normal((25, 5)).astype(np.float32)
    items, scores = sim.exact(vf, 4, allowed)
    fb = sim.fallback_frame(ids, np.arange(25)[::-1], 4, allowed)
    root = similar_root(tmp_path / "data" / "recommendations")
    write_table(root, "v1", ids, items, scores, fb, {"data_window": {"end": "2026-12-01"}})
    return root, ids, items, fb


def test_publish_validate_and_read(tmp_path) -> None:
    allowed = np.ones(25, bool)
    allowed[[0, 7]] = False
    root, ids, items, fb = _published(tmp_path, allowed)
    assert root == tmp_path / "data" / "similar_items"
    table = read_version_table(version_dir(root, "v1"))
    assert list(table.columns) == sim.COLUMNS and len(table) == 25 * 4
    validate_similar_table(table, top_k=4, catalog=ids, allowed=allowed, fallback=fb)
    bad = table.copy()
    bad.loc[3, "similar_item_id"] = "i7"
    with pytest.raises(OutputValidationError, match="similar_no_excluded_items|exclude"):
        validate_similar_table(bad, top_k=4, catalog=ids, allowed=allowed, fallback=fb)
    with pytest.raises(OutputValidationError, match="itself"):
        validate_similar_table(table.assign(similar_item_id=table["item_id"]), top_k=4, catalog=ids)
    manifest = point_current(root, "v1") and verify_version(root, "v1", checksum=True)
    assert manifest["columns"] == sim.COLUMNS and manifest["keys"] == 25 and manifest["top_k"] == 4
    store = SimilarItemsStore(root)
    r = store.similar("i3", n=2)
    assert r.items == [ids[j] for j in items[3, :2]] and r.source == "model" and r.version == "v1"
    unknown = store.similar("nope")
    assert unknown.source == "fallback" and unknown.items == fb["similar_item_id"].tolist()
    assert "i0" not in unknown.items and "i7" not in unknown.items


def test_cli_and_http(tmp_path, monkeypatch) -> None:
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from include.recsys.cli import app
    from include.recsys.tables.serve import RateLimiter, create_app

    for var in ("RECSYS_DATA_DIR", "RECSYS_RECOMMENDATIONS_DIR", "RECSYS_SIMILAR_ITEMS_DIR"):
        monkeypatch.delenv(var, raising=False)
    root, ids, items, _ = _published(tmp_path)
    point_current(root, "v1")
    cli = CliRunner()
    r = cli.invoke(app, ["--data-dir", str(tmp_path / "data"), "similar", "i3", "-n", "3", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [x["item_id"] for x in out["items"]] == [ids[j] for j in items[3, :3]] and out["known"]
    r = cli.invoke(app, ["--data-dir", str(tmp_path / "data"), "similar", "nope"])
    assert r.exit_code == 2 and "--fallback" in r.stderr
    token = "t" * 32
    client = TestClient(create_app(tmp_path / "data" / "recommendations", token, limiter=RateLimiter(0, 1)))
    assert client.get("/items/i3/similar").status_code == 401
    res = client.get("/items/i3/similar?n=2", headers={"Authorization": f"Bearer {token}"})
    assert res.status_code == 200
    body = res.json()
    assert body["version"] == "v1" and [x["item_id"] for x in body["items"]] == [ids[j] for j in items[3, :2]]
    limited = TestClient(create_app(tmp_path / "data" / "recommendations", token, limiter=RateLimiter(0.001, 1)))
    assert limited.get("/items/i3/similar", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert limited.get("/items/i3/similar", headers={"Authorization": f"Bearer {token}"}).status_code == 429
    empty = TestClient(create_app(tmp_path / "other" / "recommendations", no_auth=True))
    assert empty.get("/items/i3/similar").status_code == 503
