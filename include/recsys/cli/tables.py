"""``recsys status | versions | recommend | similar | rollback``: the published tables."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import typer

from include.recsys.cli._common import (
    EXIT_NOT_FOUND,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    JSON_OPTION,
    CliError,
    config,
    handle_errors,
    out,
)
from include.recsys.cli._console import emit_json, print_ranked
from include.recsys.cli.runs import recent_runs


def _served(root: Path | str) -> str:
    """The served version; CliError(2) when nothing is published under ``root``."""
    from include.recsys.tables.current import read_current

    current = read_current(root)
    if current is None:
        raise CliError(f"nothing is published under {root} yet (no CURRENT): run `make demo` first")
    return current


def _registry(cfg) -> dict[str, Any]:
    """champion / challenger of the registered model; never creates an MLflow store."""
    info: dict[str, Any] = {"name": cfg.model_name, "champion": None, "challenger": None}
    uri = cfg.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        info["note"] = "no MLflow store yet"
        return info
    try:
        from include.recsys.tracking.registry import CHALLENGER, CHAMPION, alias_version

        info["champion"] = alias_version(cfg, CHAMPION)
        info["challenger"] = alias_version(cfg, CHALLENGER)
    except Exception as exc:  # status must still show the table when MLflow is down
        info["note"] = f"MLflow unavailable: {' '.join(str(exc).split())[:160]}"
    return info


def _freshness(root: Path | str) -> dict[str, Any]:
    from include.recsys.tables import freshness

    try:
        res = freshness.check(root, freshness.FreshnessSettings.from_env())
    except Exception as exc:
        return {"ok": None, "problems": [f"freshness not checked: {exc}"]}
    return {"ok": res.ok, "age_hours": res.age_hours, "published_at": res.published_at,
            "problems": res.problems}


def _span(d: dict[str, Any] | None) -> str:
    if not d:
        return "-"
    return f"{str(d.get('start'))[:16].replace('T', ' ')} -> {str(d.get('end'))[:16].replace('T', ' ')} UTC"


def status(as_json: bool = JSON_OPTION) -> None:
    """What is served now: CURRENT, its data interval, the model behind it, freshness, last runs.

    Example: recsys status;  recsys status --json | jq .current
    """
    _status(as_json=as_json)


@handle_errors
def _status(as_json: bool) -> None:
    from include.recsys.tables.manifest import read_manifest

    cfg = config()
    root = cfg.recommendations_root
    current = _served(root)
    m = read_manifest(root, current)
    info = {
        "root": str(root), "current": current, "created_at": m.get("created_at"),
        "data_interval": m.get("data_interval"), "data_window": m.get("data_window"),
        "rows": m.get("rows"), "users": m.get("users"), "top_n": m.get("top_n"),
        "gate": m.get("gate"), "model": {**_registry(cfg), "version": m.get("model_version")},
        "freshness": _freshness(root), "runs": recent_runs(cfg, limit=5),
    }
    if as_json:
        emit_json(info)
        return
    o = out()
    model, fresh, gate = info["model"], info["freshness"], info["gate"] or {}
    aliases = ", ".join(f"{a}: {model[a] or '-'}" for a in ("champion", "challenger"))
    o.line(f"CURRENT        {current}  ({str(info['created_at'])[:19].replace('T', ' ')} UTC)", "bold")
    o.line(f"data interval  {_span(info['data_interval'])}  (training window {_span(info['data_window'])})")
    o.line(f"table          {info['rows']:,} rows, {info['users']:,} users, top {info['top_n']}; "
           f"gate {gate.get('verdict', '-')} on {gate.get('metric', '-')}"
           + (" (FORCED)" if gate.get("forced") else ""))
    o.line(f"model          {model['name']} version {model['version']} ({aliases})"
           + (f"  [{model['note']}]" if model.get("note") else ""))
    if fresh["ok"]:
        o.line(f"freshness      ok: published {fresh['age_hours']:.1f} h ago", "green")
    else:
        o.line(f"freshness      STALE: {'; '.join(fresh['problems'])}", "bold red")
    o.line(f"root           {root}")
    if info["runs"]:
        o.line()
        o.table(info["runs"], ["run_id", "interval_end", "gate", "published"],
                title="last runs (newest first)")
        o.line("run cards: recsys card [RUN]  (the newest by default)", "dim")


def versions(as_json: bool = JSON_OPTION) -> None:
    """Complete table versions, oldest first; the served one is marked.

    Example: recsys versions;  recsys versions --json
    """
    _versions(as_json=as_json)


@handle_errors
def _versions(as_json: bool) -> None:
    from include.recsys.tables.versions import list_versions

    root = config().recommendations_root
    rows = list_versions(root)
    if not rows:
        raise CliError(f"no versions under {root}: nothing is published yet (run `make demo` first)")
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        r["served"] = "CURRENT" if r.get("current") else ""
    out().table(rows, ["version", "created_at", "rows", "users", "model_version", "served"])


def recommend(
    user_id: str = typer.Argument(..., help="The user id as the table stores it."),
    n: int = typer.Option(
        None, "-n", "--n", min=1, help="How many (default: all stored, the table's top N)."
    ),
    version: str = typer.Option(None, "--version", help="Read this version instead of CURRENT."),
    fallback: bool = typer.Option(
        False, "--fallback", help="For an unknown user, show the fallback list instead of failing."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Top-N recommendations of one user from the served table.

    An unknown user fails with exit code 2 (the HTTP service would answer the popularity
    fallback list; --fallback shows that list). Example: recsys recommend u42 -n 5
    """
    _recommend(user_id, n, version, fallback, as_json=as_json)


@handle_errors
def _recommend(user_id: str, n: int | None, version: str | None, fallback: bool, as_json: bool) -> None:
    from include.recsys.tables.reader import RecommendationStore

    store = RecommendationStore(config().recommendations_root)
    version = version or _served(store.root)
    known = _known_user(store, user_id, version)
    if not known and not fallback:
        raise CliError(f"user {user_id!r} is not in version {version}: unknown users are served the "
                       "fallback list (add --fallback to see it)")
    r = store.recommend(user_id, n=n, version=version)
    variant = store.variant_of(user_id, version)  # None unless the table has A/B variants
    head = {"user_id": user_id, "version": r.version, "source": r.source, "known": known,
            **({"variant": variant} if variant is not None else {})}
    what = "popularity fallback (unknown user)" if not known else f"source: {r.source}"
    what += f" - variant {variant}" if variant is not None else ""
    print_ranked(head, r.items, r.scores, f"user {user_id} - version {r.version} - {what}", as_json)


def _known_user(store, user_id: str, version: str) -> bool:
    """Whether the table has rows for ``user_id`` (the reader answers unknown users with the
    fallback list, which a person asking about one user must be told)."""
    loaded = store._version(version)  # the loaded version: its id index (no public accessor yet)
    return loaded.index.get(loaded.key(user_id)) is not None


def similar(
    item_id: str = typer.Argument(..., help="The item id."),
    n: int = typer.Option(None, "-n", "--n", min=1, help="How many (default: all stored, the table's top K)."),
    version: str = typer.Option(None, "--version", help="Read this version instead of CURRENT."),
    fallback: bool = typer.Option(
        False, "--fallback", help="For an unknown item, show the fallback list (popular items) instead of failing."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Items most similar to ITEM_ID (cosine of the model's item factors), from the published
    similar-items table (RECSYS_SIMILAR_ITEMS_DIR, default: similar_items beside the
    recommendations).

    Example: recsys similar i17 -n 5;  recsys similar i17 --json
    """
    _similar(item_id, n, version, fallback, as_json=as_json)


def _similar_root(cfg) -> Path | str:
    from include.recsys.core.uri import similar_root

    return similar_root(cfg.recommendations_root, getattr(cfg, "similar_items_dir", "") or "")


@handle_errors
def _similar(item_id: str, n: int | None, version: str | None, fallback: bool, as_json: bool) -> None:
    from include.recsys.tables.current import read_current
    from include.recsys.tables.reader import SimilarItemsStore

    root = _similar_root(config())
    if read_current(root) is None:
        raise CliError(f"no similar-items table published under {root}: the nightly run builds it "
                       f"(similar_items task), so item {item_id!r} cannot be looked up yet", EXIT_NOT_FOUND)
    store = SimilarItemsStore(root)
    version = version or store.current_version()
    r = store.similar(item_id, n=n, version=version)
    known = r.source == "model"
    if not known and not fallback:
        raise CliError(f"item {item_id!r} is not in similar-items version {version}: unknown items are "
                       "served the popular-items fallback (add --fallback to see it)")
    head = {"item_id": item_id, "version": r.version, "source": r.source, "known": known}
    what = "popular-items fallback (unknown item)" if not known else "cosine of item factors"
    print_ranked(head, r.items, r.scores, f"similar to {item_id} - version {r.version} - {what}", as_json)


def rollback(
    version: str = typer.Argument(
        None, help="The version to serve again (default: the one served before CURRENT)."
    ),
    reason: str = typer.Option(
        ..., "--reason", "-r", help="Why (recorded with the move of the champion alias)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Serve an earlier table version again, and move the `champion` alias back with it.

    A commit in the table's log, like a publish. Examples: recsys rollback --reason "bad
    recommendations for new users";  recsys rollback 20261120T000000Z-1a2b3c4d -r "pin"
    """
    _rollback(version, reason, as_json=as_json)


@handle_errors
def _rollback(version: str | None, reason: str, as_json: bool) -> None:
    from include.recsys.core.run import RunContext
    from include.recsys.stages.rollback import rollback as rollback_both
    from include.recsys.tables.current import read_current
    from include.recsys.tables.versions import list_versions
    from include.recsys.tracking.mlflow import default_actor

    cfg = config()
    root = cfg.recommendations_root
    before = _served(root)
    if version is not None and version not in {v["version"] for v in list_versions(root)}:
        raise CliError(f"version {version} is not a complete version under {root} (see `recsys versions`)")
    if version == before:
        raise CliError(f"version {version} is already served", EXIT_REFUSED)
    now = datetime.now(timezone.utc)
    rc = RunContext("recsys_cli", default_actor(), now, now)
    try:
        result = rollback_both(cfg, rc, version, reason)
    except Exception as exc:
        moved = read_current(root)
        if moved != before:  # the table moved, the alias did not: say how to finish
            raise CliError(f"CURRENT moved {before} -> {moved}, but the champion alias did not follow "
                           f"({' '.join(str(exc).split())[:200]}); run the same command again when "
                           "MLflow is reachable", EXIT_UNAVAILABLE) from exc
        raise
    if as_json:
        emit_json(result)
        return
    model = (f"champion -> model version {result['model_version']}" if result.get("model_version")
             else "no model version in its manifest")
    out().line(f"rolled back: CURRENT {result['from']} -> {result['to']} ({model}); reason: {reason}", "bold")
