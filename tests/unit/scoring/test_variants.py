"""A/B variants and a holdout (``include.recsys.scoring.variants``): stable salted assignment, shares
within tolerance, baseline lists for the holdout, the output checks, and the ``variant``
column through the reader, the CLI and HTTP (absent, and nothing changed, without variants)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from include.recsys.config.variants import assign, parse
from include.recsys.scoring.bundle import ModelBundle
from include.recsys.scoring.recommend import recommend, seen_matrix
from include.recsys.scoring.variants import score, share_check
from include.recsys.tables.current import point_current
from include.recsys.tables.layout import TABLE_COLUMNS, version_dir
from include.recsys.tables.reader import RecommendationStore
from include.recsys.tables.versions import write_version
from include.recsys.validation.output import variant_checks

PLAN = parse([{"name": "champion", "model": "alias:champion", "share": 0.49},
                 {"name": "challenger", "model": "candidate", "share": 0.49}], 0.02, "exp-1")


def test_assignment_is_stable_across_nights_and_salted() -> None:
    users = [f"u{i}" for i in range(20_000)]
    night1 = assign(users, PLAN)
    night2 = assign(list(reversed(users)), PLAN)[::-1]  # another night, another order
    assert (night1 == night2).all()
    other = assign(users, parse(PLAN.to_dict()["variants"], 0.02, "exp-2"))
    assert 0.3 < (other != night1).mean() < 0.7  # a new salt reshuffles (about half move)
    ints = assign(list(range(1000)), PLAN)
    assert (ints == assign([str(i) for i in range(1000)], PLAN)).all()  # ids hashed as text


def test_shares_within_tolerance_on_100k_users() -> None:
    arms = assign([f"user-{i}" for i in range(100_000)], PLAN)
    counts = {k: int(v) for k, v in pd.Series(arms).value_counts().items()}
    rows = share_check(counts, PLAN)
    assert all(ok for *_, ok in rows), rows
    assert {r[0] for r in rows} == {"champion", "challenger", "holdout"}
    assert abs(counts["holdout"] / 100_000 - 0.02) < 0.002
    skewed = {"champion": 52_000, "challenger": 46_000, "holdout": 2_000}  # a broken split
    assert [arm for arm, *_, ok in share_check(skewed, PLAN) if not ok] == ["champion", "challenger"]


@pytest.mark.parametrize("bad, match", [
    ([{"name": "a", "model": "candidate", "share": 0.5}], "sum to"),
    ([{"name": "holdout", "model": "candidate", "share": 0.98}], "reserved"),
    ([{"name": "a", "model": "mlflow", "share": 0.98}], "candidate, alias"),
    ([{"name": "a", "share": 0.98}], "lacks"),
])
def test_bad_plans_say_what_is_wrong(bad, match) -> None:
    with pytest.raises(ValueError, match=match):
        parse(bad, 0.02, "s")
    with pytest.raises(ValueError, match="ab_salt"):
        parse([{"name": "a", "model": "candidate", "share": 1.0}], 0.0, "")
    assert parse([], 0.0, "") is None


def _bundle(seed: int, n_users: int = 400, n_items: int = 60) -> ModelBundle:
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items)) < 0.05
    return ModelBundle(
        user_ids=pd.Index([f"u{i}" for i in range(n_users)]), item_ids=pd.Index([f"i{i}" for i in range(n_items)]),
        user_factors=rng.standard_normal((n_users, 6)).astype(np.float32),
        item_factors=rng.standard_normal((n_items, 6)).astype(np.float32),
        item_popularity=dense.sum(axis=0).astype(np.int64), seen=sp.csr_matrix(dense.astype(np.float32)),
    )


def test_each_arm_scored_by_its_model_and_holdout_gets_the_baseline() -> None:
    cand, champ = _bundle(0), _bundle(1)
    plan = parse([{"name": "champion", "model": "alias:champion", "share": 0.45},
                     {"name": "challenger", "model": "candidate", "share": 0.45}], 0.10, "s")
    users = pd.Index([f"u{i}" for i in range(400)] + ["new1", "new2"])
    coo = cand.seen.tocoo()
    seen = pd.DataFrame({"user_id": cand.user_ids[coo.row], "item_id": cand.item_ids[coo.col]})
    table, counts, by_model = score({"champion": (champ, "1"), "challenger": (cand, "2")}, plan, users, seen, 5,
                                       model_name="m", baseline_of=(cand, "2"))
    arms = assign(users, plan)
    assert counts == {a: int((arms == a).sum()) for a in ("champion", "challenger", "holdout")}
    # the pipeline passes a CSR in the candidate's item space; a bundle with other items remaps it
    shuffled = dataclasses.replace(champ, item_ids=champ.item_ids[::-1], item_factors=champ.item_factors[::-1].copy(),
                                   item_popularity=champ.item_popularity[::-1].copy(), id_maps_hash=None)
    coded = score({"champion": (shuffled, "1"), "challenger": (cand, "2")}, plan, users,
                     seen_matrix(cand, users, seen), 5, model_name="m", baseline_of=(cand, "2"))[0]
    pd.testing.assert_frame_equal(coded, table)
    assert table.groupby("user_id")["variant"].nunique().eq(1).all() and len(table) == 5 * len(users)
    for arm, bundle in (("champion", champ), ("challenger", cand)):
        who = users[arms == arm]
        ref = recommend(bundle, who, seen, 5).to_frame(bundle)
        got = table[table["variant"] == arm].sort_values(["user_id", "rank"])
        assert got["item_id"].tolist() == ref.sort_values(["user_id", "rank"])["item_id"].tolist()
        assert set(got["model_version"]) == {"1" if arm == "champion" else "2"}
    hold = table[table["variant"] == "holdout"]
    assert len(hold) and (hold["source"] == "fallback").all()
    order = [f"i{j}" for j in cand.popular_order]
    for u, g in hold.groupby("user_id"):  # popularity order minus the user's seen items
        mine = set(seen.loc[seen["user_id"] == u, "item_id"])
        assert g.sort_values("rank")["item_id"].tolist() == [i for i in order if i not in mine][:5]
    known = np.asarray(users.str.startswith("u"))  # new1 / new2: unknown to both models, fallback
    assert by_model == int(((arms != "holdout") & known).sum())
    checks = {r["check"]: r for r in variant_checks(table, {**plan.to_dict()})}
    assert all(r["success"] for r in checks.values()), checks
    forced = table.assign(variant=np.where(table["variant"] == "holdout", "holdout", "champion"))
    assert not {r["check"]: r for r in variant_checks(forced, plan.to_dict())}["variant_shares"]["success"]
    leaked = table.copy()
    leaked.loc[leaked["variant"] == "holdout", "source"] = "model"
    assert not {r["check"]: r for r in variant_checks(leaked, plan.to_dict())}["holdout_gets_baseline"]["success"]


def _publish(root, with_variants: bool) -> None:
    users = [f"u{i}" for i in range(50)]
    arms = assign(users, PLAN)
    table = pd.DataFrame([{"user_id": u, "rank": r, "item_id": f"i{r}", "score": 1.0 / r,
                           "source": "fallback" if a == "holdout" else "model", "model_name": "m",
                           "model_version": "1", "variant": a} for u, a in zip(users, arms) for r in (1, 2)])
    fb = pd.DataFrame({"rank": [1, 2], "item_id": ["p1", "p2"], "score": [1.0, 0.5]})
    manifest = {"top_n": 2}
    kw = {}
    if with_variants:
        manifest["variants"] = {**PLAN.to_dict(), "shares": PLAN.shares()}
        kw = {"columns": [*TABLE_COLUMNS, "variant"]}
    write_version(root, "v1", table, fb, manifest, **kw)
    point_current(root, "v1")


def test_reader_cli_and_http_return_the_variant(tmp_path, monkeypatch) -> None:
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from include.recsys.cli import app
    from include.recsys.tables.serve import create_app

    monkeypatch.delenv("RECSYS_RECOMMENDATIONS_DIR", raising=False)
    root = tmp_path / "data" / "recommendations"
    _publish(root, with_variants=True)
    assert pd.read_parquet(version_dir(root, "v1")).columns[-1] == "variant"
    store = RecommendationStore(root)
    arm = assign(["u3"], PLAN)[0]
    assert store.variant_of("u3") == arm
    assert store.variant_of("never-seen") == assign(["never-seen"], PLAN)[0]  # the hash, as tonight's run would
    many = store.recommend_many(["u3", "u4"])
    assert many["variant"].tolist() == [arm, arm] + [assign(["u4"], PLAN)[0]] * 2
    body = TestClient(create_app(root, no_auth=True)).get("/recommendations/u3").json()
    assert body["variant"] == arm
    r = CliRunner().invoke(app, ["--data-dir", str(tmp_path / "data"), "recommend", "u3", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["variant"] == arm


def test_without_variants_nothing_changes_for_readers(tmp_path) -> None:
    from fastapi.testclient import TestClient

    from include.recsys.tables.serve import create_app

    root = tmp_path / "recs"
    _publish(root, with_variants=False)
    assert "variant" not in pd.read_parquet(version_dir(root, "v1")).columns
    store = RecommendationStore(root)
    assert store.variant_of("u3") is None and "variant" not in store.recommend_many(["u3"]).columns
    assert "variant" not in TestClient(create_app(root, no_auth=True)).get("/recommendations/u3").json()
