"""The output set checks give the same results whether the snapshot pairs come as strings or as
categoricals (how ``pipeline.validate_output`` reads them: Parquet dictionaries)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from include.recsys.validation.history import load_bounds
from include.recsys.validation.output import set_checks


def _table() -> pd.DataFrame:
    rows = [(u, r, f"i{(k + r) % 9}", 1.0 - r / 10) for k, u in enumerate(["a", "b", "c"]) for r in (1, 2, 3)]
    rows.append(("d", 1, "i_unknown", 0.5))  # an item outside the catalog
    t = pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score"])
    return t.astype({"user_id": "str", "item_id": "str", "rank": "int32", "score": "float32"})


@pytest.mark.parametrize("with_missing", [False, True])
def test_categorical_seen_gives_the_same_checks(with_missing: bool) -> None:
    rng = np.random.default_rng(1)
    seen = pd.DataFrame({
        "user_id": pd.Series([f"{u}" for u in rng.choice(list("abcez"), 200)], dtype="str"),
        "item_id": pd.Series([f"i{k}" for k in rng.integers(0, 12, 200)], dtype="str"),
    })
    if with_missing:
        seen.loc[[3, 50], "item_id"] = None
        seen.loc[[7], "user_id"] = None
    cat = seen.astype("category")
    plain = set_checks(_table(), top_n=3, seen=seen, current=None, bounds=load_bounds())
    coded = set_checks(_table(), top_n=3, seen=cat, current=None, bounds=load_bounds())
    assert coded == plain
    assert any(not r["success"] for r in plain[0])  # the checks did find problems to compare
