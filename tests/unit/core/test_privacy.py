"""Pseudonymization (keyed HMAC) and formula-safe CSV cells."""

from __future__ import annotations

import hashlib
import hmac

import pandas as pd
import pytest

from include.recsys.core import privacy as privacy_mod
from include.recsys.core.privacy import (
    ENABLED_ENV,
    KEY_ENV,
    csv_safe,
    load_key,
    pseudonymize_table,
)
from include.recsys.errors import PseudonymizationError

KEY = "k" * 32


def test_pseudonymize_id_is_keyed_hmac() -> None:
    token = privacy_mod.pseudonymize_id("u12", KEY)
    expected = hmac.new(KEY.encode(), b"u12", hashlib.sha256).hexdigest()[:32]
    assert token == "p_" + expected
    assert privacy_mod.pseudonymize_id("u12", KEY) == token  # stable: joins keep working
    assert privacy_mod.pseudonymize_id(12, KEY) == privacy_mod.pseudonymize_id("12", KEY)
    assert privacy_mod.pseudonymize_id("u12", "z" * 32) != token  # another key, another token
    assert privacy_mod.pseudonymize_id("u13", KEY) != token
    assert "u12" not in token


def test_short_key_refused() -> None:
    with pytest.raises(PseudonymizationError, match="at least 16 bytes"):
        privacy_mod.pseudonymize_id("u1", "short")


def test_table_hook_off_by_default(monkeypatch) -> None:
    monkeypatch.delenv(ENABLED_ENV, raising=False)
    df = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "rank": [1, 2, 1]})
    assert pseudonymize_table(df) is df


def test_table_hook_enabled(monkeypatch) -> None:
    monkeypatch.setenv(ENABLED_ENV, "true")
    monkeypatch.setenv(KEY_ENV, KEY)
    df = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "rank": [1, 2, 1]})
    out = pseudonymize_table(df)
    assert out["user_id"].tolist() == [privacy_mod.pseudonymize_id(u, KEY) for u in df["user_id"]]
    assert out["rank"].tolist() == [1, 2, 1] and df["user_id"].tolist() == ["u1", "u1", "u2"]


def test_enabled_without_key_fails_loudly(monkeypatch) -> None:
    monkeypatch.setenv(ENABLED_ENV, "true")
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(PseudonymizationError, match="no key"):
        pseudonymize_table(pd.DataFrame({"user_id": ["u1"]}))


def test_key_from_airflow_connection(monkeypatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_RECSYS_PSEUDONYMIZE", '{"conn_type": "generic", "password": "%s"}' % ("c" * 20))
    assert load_key() == b"c" * 20


@pytest.mark.parametrize(
    ("cell", "safe"),
    [("=HYPERLINK(\"x\")", "'=HYPERLINK(\"x\")"), ("+1", "'+1"), ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"),
     ("\tx", "'\tx"), ("item42", "item42"), (3.5, 3.5), (-1, -1)],
)
def test_csv_safe(cell, safe) -> None:
    assert csv_safe(cell) == safe


def test_published_table_carries_pseudonyms_when_enabled(tmp_path, monkeypatch):
    """The hook in the pipeline: score_shard writes tokens, never the raw ids."""
    import dataclasses

    import pandas as pd

    from include.recsys.config.settings import load_config
    from include.recsys.core.privacy import pseudonymize_id
    from include.recsys.core.run import RunContext
    from include.recsys.data import synth
    from include.recsys.stages.shards import plan_shards, score_shard
    from include.recsys.stages.snapshot import snapshot

    key = "k" * 32
    monkeypatch.setenv("RECSYS_PSEUDONYMIZE_USER_IDS", "true")
    monkeypatch.setenv("RECSYS_PSEUDONYMIZE_KEY", key)
    cfg = load_config({"data_dir": tmp_path, "factors": 4, "iterations": 2, "top_n": 3})
    synth.ensure_default_data(cfg.source, dataclasses.replace(synth.PRESETS["tiny"], end_date="2026-11-20"))
    rc = RunContext("d", "r1", pd.Timestamp("2026-11-20", tz="UTC"), pd.Timestamp("2026-11-21", tz="UTC"))
    snap = snapshot(cfg, rc)
    from include.recsys.backends.implicit import train
    from include.recsys.core.ids import read_id_maps

    maps = read_id_maps(snap["users"], snap["items"], snap["snapshot"])
    bundle, _ = train(pd.read_parquet(snap["snapshot"]), cfg, id_maps=maps)
    model = {"bundle": str(bundle.save(tmp_path / "bundle"))}
    shard = plan_shards(cfg, rc, snap)[0]
    score_shard(cfg, rc, snap, model, {"model_name": "m", "model_version": "1"}, shard)
    staged = next(tmp_path.glob("recommendations/.staging-*/part-00000.parquet"))
    users = set(pd.read_parquet(staged)["user_id"])
    raw = set(pd.read_parquet(snap["snapshot"])["user_id"])
    assert users and not users & raw
    assert pseudonymize_id(sorted(raw)[0], key) in users  # shard 0 holds the smallest raw ids
