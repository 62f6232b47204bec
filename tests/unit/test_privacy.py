"""Pseudonymization (keyed HMAC) and formula-safe CSV cells."""

from __future__ import annotations

import hashlib
import hmac

import pandas as pd
import pytest

from include.recsys import privacy

KEY = "k" * 32


def test_pseudonymize_id_is_keyed_hmac() -> None:
    token = privacy.pseudonymize_id("u12", KEY)
    expected = hmac.new(KEY.encode(), b"u12", hashlib.sha256).hexdigest()[:32]
    assert token == "p_" + expected
    assert privacy.pseudonymize_id("u12", KEY) == token  # stable: joins keep working
    assert privacy.pseudonymize_id(12, KEY) == privacy.pseudonymize_id("12", KEY)
    assert privacy.pseudonymize_id("u12", "z" * 32) != token  # another key, another token
    assert privacy.pseudonymize_id("u13", KEY) != token
    assert "u12" not in token


def test_short_key_refused() -> None:
    with pytest.raises(privacy.PseudonymizationError, match="at least 16 bytes"):
        privacy.pseudonymize_id("u1", "short")


def test_table_hook_off_by_default(monkeypatch) -> None:
    monkeypatch.delenv(privacy.ENABLED_ENV, raising=False)
    df = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "rank": [1, 2, 1]})
    assert privacy.pseudonymize_table(df) is df


def test_table_hook_enabled(monkeypatch) -> None:
    monkeypatch.setenv(privacy.ENABLED_ENV, "true")
    monkeypatch.setenv(privacy.KEY_ENV, KEY)
    df = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "rank": [1, 2, 1]})
    out = privacy.pseudonymize_table(df)
    assert out["user_id"].tolist() == [privacy.pseudonymize_id(u, KEY) for u in df["user_id"]]
    assert out["rank"].tolist() == [1, 2, 1] and df["user_id"].tolist() == ["u1", "u1", "u2"]


def test_enabled_without_key_fails_loudly(monkeypatch) -> None:
    monkeypatch.setenv(privacy.ENABLED_ENV, "true")
    monkeypatch.delenv(privacy.KEY_ENV, raising=False)
    with pytest.raises(privacy.PseudonymizationError, match="no key"):
        privacy.pseudonymize_table(pd.DataFrame({"user_id": ["u1"]}))


def test_key_from_airflow_connection(monkeypatch) -> None:
    monkeypatch.delenv(privacy.KEY_ENV, raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_RECSYS_PSEUDONYMIZE", '{"conn_type": "generic", "password": "%s"}' % ("c" * 20))
    assert privacy.load_key() == b"c" * 20


@pytest.mark.parametrize(
    ("cell", "safe"),
    [("=HYPERLINK(\"x\")", "'=HYPERLINK(\"x\")"), ("+1", "'+1"), ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"),
     ("\tx", "'\tx"), ("item42", "item42"), (3.5, 3.5), (-1, -1)],
)
def test_csv_safe(cell, safe) -> None:
    assert privacy.csv_safe(cell) == safe


def test_published_table_carries_pseudonyms_when_enabled(tmp_path, monkeypatch):
    """The hook in the pipeline: score_shard writes tokens, never the raw ids."""
    import dataclasses

    import pandas as pd

    from include.recsys import pipeline, synth
    from include.recsys.config import load_config
    from include.recsys.privacy import pseudonymize_id

    key = "k" * 32
    monkeypatch.setenv("RECSYS_PSEUDONYMIZE_USER_IDS", "true")
    monkeypatch.setenv("RECSYS_PSEUDONYMIZE_KEY", key)
    cfg = load_config({"data_dir": tmp_path, "factors": 4, "iterations": 2, "top_n": 3})
    synth.ensure_default_data(cfg.source, dataclasses.replace(synth.PRESETS["tiny"], end_date="2026-11-20"))
    rc = pipeline.RunContext("d", "r1", pd.Timestamp("2026-11-20", tz="UTC"), pd.Timestamp("2026-11-21", tz="UTC"))
    snap = pipeline.snapshot(cfg, rc)
    from include.recsys.train import train

    bundle, _ = train(pd.read_parquet(snap["snapshot"]), cfg)
    model = {"bundle": str(bundle.save(tmp_path / "bundle"))}
    shard = pipeline.plan_shards(cfg, rc, snap)[0]
    pipeline.score_shard(cfg, rc, snap, model, {"model_name": "m", "model_version": "1"}, shard)
    staged = next(tmp_path.glob("recommendations/.staging-*/part-00000.parquet"))
    users = set(pd.read_parquet(staged)["user_id"])
    raw = set(pd.read_parquet(snap["snapshot"])["user_id"])
    assert users and not users & raw
    assert pseudonymize_id(sorted(raw)[0], key) in users  # shard 0 holds the smallest raw ids
