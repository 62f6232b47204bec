"""Where tables live: local folders as Path, object stores as "<scheme>://..." URLs."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

DIR_NAME = "similar_items"


def similar_root(recommendations_root: Any, configured: str = "") -> Any:
    """Where the similar-items table lives: ``configured`` (a folder or URL) when set, else
    ``similar_items`` beside the recommendations root (a sibling folder or URL prefix)."""
    from pathlib import Path

    from include.recsys.core.uri import is_remote, normalize

    if configured:
        return normalize(configured)
    if is_remote(recommendations_root):
        return f"{str(recommendations_root).rstrip('/').rsplit('/', 1)[0]}/{DIR_NAME}"
    return Path(recommendations_root).parent / DIR_NAME


# "s3://b/p", and "s3:/b/p" (what pathlib makes of an URL someone wrapped in Path()); not "C:/x"
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):/+(.*)$")


_LOCAL_SCHEMES = {"file", "local"}


def normalize(root: Path | str) -> Path | str:
    """A local root as a ``Path``; an object-store root as a URL ``"<scheme>://<path>"`` (str).

    ``file://`` URLs are local paths. A URL that went through ``Path()`` (``s3:/bucket``) is
    repaired, so modules that wrap the root in ``Path`` still reach the right store.
    """
    text = os.fspath(root)
    m = _URL.match(text)
    if not m:
        return Path(text)
    scheme, rest = m.group(1).lower(), m.group(2).rstrip("/")
    if scheme in _LOCAL_SCHEMES:
        return Path("/" + rest)
    return f"{scheme}://{rest}"


def is_remote(root: Path | str) -> bool:
    """True when ``root`` is an object-store URL (not a local path)."""
    return isinstance(normalize(root), str)


