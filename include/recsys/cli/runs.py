"""``recsys card``, and the recent runs ``recsys status`` lists, read from the runs folder.

Every DAG run works in ``<data_dir>/runs/<interval end>/<run id, sanitised>/``; the gate
writes ``gate.json`` there and the run card ``run_card.html`` + ``run_card.json`` (run id,
verdict, what was published).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from include.recsys.cli._common import (
    JSON_OPTION,
    CliError,
    config,
    handle_errors,
    out,
)
from include.recsys.cli._console import emit_json
from include.recsys.core.io import read_json_or_none
from include.recsys.core.paths import RunPaths


def _run_dirs(runs_root: Path) -> list[Path]:
    """Run work folders, newest first (by modification time)."""
    if not runs_root.is_dir():
        return []
    dirs = [d for d in runs_root.glob("*/*") if d.is_dir()]
    return sorted(dirs, key=lambda d: d.stat().st_mtime, reverse=True)


def _when(value: Any) -> str:
    """'2026-11-21 00:00' from an ISO time or an interval folder name (20261121T000000Z)."""
    text = str(value)
    try:
        return datetime.strptime(text, "%Y%m%dT%H%M%SZ").strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return text[:16].replace("T", " ")


def describe(work: Path) -> dict[str, Any]:
    """run id, interval end, gate verdict, published version and run card of one work folder."""
    paths = RunPaths(work)
    card = read_json_or_none(paths.run_card_data) or {}
    gate = card.get("gate") or read_json_or_none(paths.gate) or {}
    published = card.get("published") or {}
    verdict = gate.get("verdict") if isinstance(gate, dict) else None
    if isinstance(gate, dict) and gate.get("forced"):
        verdict = f"{verdict} (forced)"
    return {
        "run_id": card.get("run_id") or work.name,
        "interval_end": _when(card.get("interval_end") or work.parent.name),
        "gate": verdict or "not reached",
        "published": published.get("version") or "-",
        "card": str(paths.run_card) if paths.run_card.exists() else None,
        "work_dir": str(work),
    }


def recent_runs(cfg, limit: int = 5) -> list[dict[str, Any]]:
    return [describe(d) for d in _run_dirs(cfg.runs_root)[:limit]]


def _find(cfg, run: str | None) -> dict[str, Any]:
    """The run named by ``run`` (Airflow run id, its folder name or a published version id;
    None: the newest run with a card)."""
    from include.recsys.tables.manifest import read_manifest

    runs = [describe(d) for d in _run_dirs(cfg.runs_root)]
    if run is None:
        found = next((r for r in runs if r["card"]), None)
        if found is None:
            raise CliError(f"no run card under {cfg.runs_root}: no run reached the gate yet "
                           "(run `make demo`)")
        return found
    wanted = {run}
    try:  # a table version names its run in its manifest
        wanted.add(read_manifest(cfg.recommendations_root, run).get("airflow_run_id") or run)
    except Exception:
        pass
    found = next((r for r in runs if r["run_id"] in wanted or Path(r["work_dir"]).name in wanted
                  or r["published"] == run), None)
    if found is None:
        raise CliError(f"no run {run!r} under {cfg.runs_root} (see `recsys status` for the last runs)")
    if not found["card"]:
        raise CliError(f"run {found['run_id']} has no run card: it failed before the gate "
                       f"(see {found['work_dir']})")
    return found


def card(
    run: str = typer.Argument(
        None, help="Airflow run id, its work-folder name, or a table version (default: the newest run)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Print the path of a run's card (run_card.html: metrics, gate rules, data, lineage).

    Examples: recsys card;  xdg-open "$(recsys card)";  recsys card 20261121T000000Z-3c996ada
    """
    _card(run, as_json=as_json)


@handle_errors
def _card(run: str | None, as_json: bool) -> None:
    found = _find(config(), run)
    if as_json:
        emit_json({k: found[k] for k in ("run_id", "interval_end", "gate", "published", "card")})
        return
    out().line(found["card"])
