"""Unit tests for ``include.recsys.tables.reader`` (RecommendationStore and its CLI)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from include.recsys.cli.read import main
from include.recsys.errors import PublishError
from include.recsys.tables.current import point_current
from include.recsys.tables.layout import TABLE_COLUMNS, version_dir
from include.recsys.tables.reader import RecommendationStore
from include.recsys.tables.versions import write_version


def _table(users, n: int, model_version: str = "3") -> pd.DataFrame:
    rows = [
        (u, r, f"item-{u}-{r}", float(10 - r), "model", "recsys_als", model_version)
        for u in users
        for r in range(1, n + 1)
    ]
    df = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    df["rank"] = df["rank"].astype(np.int16)
    df["score"] = df["score"].astype(np.float32)
    return df.iloc[::-1]  # unsorted on purpose


FALLBACK = pd.DataFrame(
    {"rank": np.array([1, 2, 3], np.int16), "item_id": ["pop1", "pop2", "pop3"], "score": np.float32([1.0, 0.7, 0.2])}
)


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "recs"
    write_version(r, "v1", _table(["u1", "u2"], 3, "1"), FALLBACK, {"model_version": "1"})
    point_current(r, "v1")
    write_version(r, "v2", _table(["u1", "u2", "u3"], 5, "2"), FALLBACK, {"model_version": "2"})
    point_current(r, "v2")
    return r


def test_for_user_known(root) -> None:
    store = RecommendationStore(root)
    assert store.current_version() == "v2"
    rows = store.for_user("u1")
    assert list(rows.columns) == ["rank", "item_id", "score", "source"]
    assert rows["rank"].tolist() == [1, 2, 3, 4, 5]
    assert rows["item_id"].tolist() == [f"item-u1-{r}" for r in range(1, 6)]
    assert set(rows["source"]) == {"model"}
    assert store.for_user("u1", n=2)["item_id"].tolist() == ["item-u1-1", "item-u1-2"]
    # an older version on request
    assert store.for_user("u1", version="v1")["rank"].tolist() == [1, 2, 3]
    assert store.for_user("u3", version="v1")["source"].eq("fallback").all()


def test_for_user_unknown_gets_fallback(root) -> None:
    rows = RecommendationStore(root).for_user("stranger")
    assert rows["item_id"].tolist() == ["pop1", "pop2", "pop3"]
    assert rows["rank"].tolist() == [1, 2, 3]
    assert set(rows["source"]) == {"fallback"}
    assert RecommendationStore(root).for_user(12345, n=1)["item_id"].tolist() == ["pop1"]


def test_for_user_integer_ids(tmp_path) -> None:
    r = tmp_path / "recs"
    table = _table([7, 42, 1000], 3)
    table["user_id"] = table["user_id"].astype("int64")
    write_version(r, "v1", table, FALLBACK, {})
    point_current(r, "v1")
    store = RecommendationStore(r)
    assert store.for_user(42)["item_id"].tolist() == ["item-42-1", "item-42-2", "item-42-3"]
    assert store.for_user(np.int64(7))["source"].eq("model").all()
    assert store.for_user("42")["source"].eq("model").all()  # string that names an int id
    assert store.for_user("abc")["source"].eq("fallback").all()  # cannot be an int id
    assert store.for_user(8)["source"].eq("fallback").all()


def test_manifest_and_versions(root) -> None:
    store = RecommendationStore(root)
    m = store.manifest()
    assert m["version"] == "v2" and m["model_version"] == "2" and m["users"] == 3 and m["rows"] == 15
    assert store.manifest("v1")["rows"] == 6
    vs = store.versions()
    assert [(v["version"], v["current"]) for v in vs] == [("v1", False), ("v2", True)]
    with pytest.raises(PublishError):
        store.manifest("nope")


def test_table(root) -> None:
    t = RecommendationStore(root).table()
    assert list(t.columns) == TABLE_COLUMNS
    assert len(t) == 15 and set(t["model_version"]) == {"2"}
    assert list(zip(t["user_id"], t["rank"]))[:5] == [("u1", r) for r in range(1, 6)]


def test_nothing_published(tmp_path) -> None:
    store = RecommendationStore(tmp_path / "empty")
    with pytest.raises(LookupError, match="nothing is published"):
        store.for_user("u1")
    assert store.versions() == []


def test_cli_user(root, capsys) -> None:
    assert main(["--root", str(root), "user", "u1"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0].split() == ["rank", "item_id", "score", "source"]
    assert len(lines) == 6
    assert lines[1].split()[:2] == ["1", "item-u1-1"] and lines[1].split()[-1] == "model"

    assert main(["--root", str(root), "user", "ghost", "--n", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 3 and out[1].split()[1] == "pop1" and out[1].split()[-1] == "fallback"


def test_cli_integer_user(tmp_path, capsys) -> None:
    r = tmp_path / "recs"
    table = _table([5, 6], 2)
    table["user_id"] = table["user_id"].astype("int64")
    write_version(r, "v1", table, FALLBACK, {})
    point_current(r, "v1")
    assert main(["--root", str(r), "user", "5"]) == 0
    assert "item-5-1" in capsys.readouterr().out
    assert main(["--root", str(r), "user", "abc"]) == 0  # cannot be an int id: fallback
    out = capsys.readouterr().out
    assert "pop1" in out and "fallback" in out


def test_cli_manifest_and_versions(root, capsys) -> None:
    assert main(["--root", str(root), "manifest"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v2"
    assert main(["--root", str(root), "manifest", "--version", "v1"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v1"
    assert main(["--root", str(root), "versions"]) == 0
    out = capsys.readouterr().out
    assert "v1" in out and "v2" in out


def test_cli_nothing_published(tmp_path, capsys) -> None:
    empty = tmp_path / "nothing"
    assert main(["--root", str(empty), "user", "u1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: nothing is published") and str(empty) in err
    assert main(["--root", str(empty), "manifest"]) == 1
    assert "nothing is published" in capsys.readouterr().err
    assert main(["--root", str(empty), "versions"]) == 0
    assert capsys.readouterr().out.strip() == "no versions"


def test_cli_unknown_version_is_an_error(root, capsys) -> None:
    assert main(["--root", str(root), "manifest", "--version", "v9"]) == 1
    assert "v9" in capsys.readouterr().err


def test_table_readable_by_duckdb(root) -> None:
    duckdb = pytest.importorskip("duckdb")
    folder = version_dir(root, "v2")
    # the served table is the part files (README: DuckDB reads version=<id>/part-*.parquet)
    parts = str(folder / "part-*.parquet").replace("'", "''")
    assert duckdb.sql(f"select count(*) from read_parquet('{parts}')").fetchall() == [(15,)]
    got = duckdb.sql(
        f"select item_id, source from read_parquet('{parts}') where user_id = 'u2' order by rank limit 2"
    ).fetchall()
    assert got == [("item-u2-1", "model"), ("item-u2-2", "model")]
    described = duckdb.sql(f"describe select * from read_parquet('{parts}', hive_partitioning=false)")
    cols = [r[0] for r in described.fetchall()]
    assert cols == TABLE_COLUMNS


def test_version_folder_reads_as_the_table_in_pandas(root) -> None:
    # README: "_"-prefixed files (manifest, fallback) are skipped when the folder is read
    df = pd.read_parquet(version_dir(root, "v2"))
    assert list(df.columns) == TABLE_COLUMNS and len(df) == 15
