"""Atomic file I/O: every file the pipeline writes appears whole or not at all.

A writer writes a temp file beside the target and renames it over the target (``os.replace``
is atomic on POSIX), so a reader or a killed writer never sees half a file. ``fsync=True``
also makes the bytes and the rename durable (the publish protocol needs that; work-folder
files do not: a rerun rewrites them)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


@contextmanager
def atomic_path(path: Path | str, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path``, on error it goes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        if fsync:
            fsync_file(tmp)
        os.replace(tmp, path)
        if fsync:
            fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path | str, data: bytes | str, *, fsync: bool = False) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_path(path, fsync=fsync) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return Path(path)


def write_json(path: Path | str, obj: Any) -> Path:
    """``obj`` as indented JSON (``str`` for what JSON lacks, e.g. timestamps), atomically."""
    return atomic_write(path, json.dumps(obj, indent=2, default=str))


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text())


def read_json_or_none(path: Path | str) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable (optional inputs)."""
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def write_parquet(df: pd.DataFrame, path: Path | str) -> Path:
    """Write a Parquet file atomically (temp name, then rename)."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(path)


def work_parquet_options(schema: Any) -> dict[str, Any]:
    """``pq.write_table`` / ``pq.ParquetWriter`` keywords for a large work-folder file
    (snapshot, split) with Arrow ``schema``.

    Statistics only for the non-string columns: a reader of these files prunes row groups on
    ``event_ts`` (the leak check reads its max) and never on an id, yet min/max statistics of
    dictionary string columns compare every distinct string per page and took about half of
    the write time. Dictionary pages only for the string columns: timestamps, weights and
    codes are near-unique per row, so trying a dictionary for them is wasted work. The
    values, the row order and the schema a reader gets back are unchanged.
    """
    import pyarrow as pa

    def is_string(t: Any) -> bool:
        t = t.value_type if pa.types.is_dictionary(t) else t
        return pa.types.is_string(t) or pa.types.is_large_string(t)

    strings = [f.name for f in schema if is_string(f.type)]
    return {
        "write_statistics": [f.name for f in schema if not is_string(f.type)] or False,
        "use_dictionary": strings or False,
    }


def fsync_file(path: Path | str) -> None:
    """Make the file's bytes durable."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path | str) -> None:
    """Make the folder's entries (a new, renamed or removed file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path | str) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
