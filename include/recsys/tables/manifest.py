"""A version's manifest (``_manifest.json``, written last): what it holds, and the check that
every file it lists is still there with its recorded size and sha256."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from include.recsys.core.io import file_sha256
from include.recsys.errors import PublishError, StorageError
from include.recsys.tables.layout import (
    FALLBACK,
    MANIFEST,
    SCHEMA_VERSION,
    TABLE_COLUMNS,
    _store,
    _vrel,
    version_dir,
)
from include.recsys.tables.storage import ObjectStore

log = logging.getLogger(__name__)


def _full_manifest(
    version: str, parts: list[dict[str, Any]], manifest: dict[str, Any], fallback: dict[str, Any],
    columns: list[str] | None = None,
) -> dict[str, Any]:
    """The manifest: what the caller gave, plus every file with the size and sha256 that
    :func:`verify_version` checks (``fallback``: ``_fallback.parquet``'s own entry)."""
    return {
        **manifest,
        "schema_version": SCHEMA_VERSION,
        "version": version,
        "columns": columns or TABLE_COLUMNS,
        "files": [{k: p[k] for k in ("path", "rows", "sha256", "size") if k in p} for p in parts],
        "fallback": fallback,
        "rows": int(sum(p["rows"] for p in parts)),
        **({"users": int(sum(p["users"] for p in parts))} if all("users" in p for p in parts)
           else {"keys": int(sum(p.get("keys", 0) for p in parts))}),
        "created_at": datetime.now(timezone.utc).isoformat(),
    }


def read_manifest(root: Path | str, version: str) -> dict[str, Any]:
    """The manifest of a complete version; PublishError when it has none (incomplete/absent)."""
    store = _store(root)
    if store is not None:
        try:
            raw = store.read_bytes(f"{_vrel(version)}/{MANIFEST}")
        except FileNotFoundError:
            raise PublishError(f"version {version} has no manifest: it is incomplete or absent") from None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise PublishError(f"the manifest of version {version} is corrupt: {exc}") from None
    path = version_dir(root, version) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PublishError(f"version {version} has no manifest: it is incomplete or absent") from None
    except ValueError as exc:
        raise PublishError(f"the manifest of version {version} is corrupt: {exc}") from None


def verify_version(root: Path | str, version: str, *, checksum: bool = False) -> dict[str, Any]:
    """The manifest of ``version`` once every file it lists (parts and ``_fallback.parquet``)
    exists with the recorded size, and with ``checksum`` the recorded sha256 too. Raises
    :class:`PublishError` naming the first missing or changed file (or the missing manifest)."""
    manifest = read_manifest(root, version)
    listed = [*manifest.get("files", []), manifest.get("fallback") or {"path": FALLBACK}]
    store = _store(root)
    if store is not None:
        sizes = store.sizes(_vrel(version))
        found = {f["path"]: sizes.get(f["path"]) for f in listed}
    else:
        folder = version_dir(root, version)
        found = {f["path"]: _size_or_none(folder / f["path"]) for f in listed}
    for f in listed:
        size = found[f["path"]]
        if size is None:
            raise PublishError(f"version {version} does not verify: {f['path']} is missing")
        if "size" in f and size != f["size"]:
            raise PublishError(
                f"version {version} does not verify: {f['path']} has {size} bytes, its manifest says {f['size']}"
            )
    if checksum:
        _verify_sha256(root, store, version, [f for f in listed if f.get("sha256")])
    return manifest


def _size_or_none(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _verify_sha256(root: Path | str, store: ObjectStore | None, version: str, listed: list[dict[str, Any]]) -> None:
    for f in listed:
        if store is not None:
            digest = hashlib.sha256(store.read_bytes(f"{_vrel(version)}/{f['path']}")).hexdigest()
        else:
            digest = file_sha256(version_dir(root, version) / f["path"])
        if digest != f["sha256"]:
            raise PublishError(f"version {version} does not verify: the sha256 of {f['path']} differs from its manifest's")


def _verify_problem(root: Path | str, version: str | None) -> str | None:
    """Why ``version`` does not verify, or None when it does."""
    if not version:
        return "no version"
    try:
        verify_version(root, version)
    except (PublishError, StorageError) as exc:
        return str(exc)
    return None


def _manifests(root: Path | str) -> list[dict[str, Any]]:
    """The manifests of the complete versions under ``root`` (any order)."""
    store = _store(root)
    if store is not None:
        rels = [f"{n}/{MANIFEST}" for n in store.listdir() if n.startswith("version=")]
        out = []
        for rel, raw in sorted(store.read_many(rels).items()):
            try:
                out.append(json.loads(raw))
            except ValueError:
                log.warning("skipping %s: corrupt manifest", store.url_of(rel))
        return out
    return [
        json.loads((d / MANIFEST).read_text())
        for d in sorted(Path(root).glob("version=*"))
        if (d / MANIFEST).exists()
    ]
