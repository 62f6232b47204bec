"""The read side: recommendations for users from the served version, manifests, versions.

Python::

    from include.recsys.tables.reader import RecommendationStore
    store = RecommendationStore("data/recommendations")
    store.recommend("u42", n=10)         # UserRecs(user_id, items, scores, source, version): ~µs
    store.recommend_many(["u1", "u2"])   # DataFrame user_id, rank, item_id, score, source
    store.for_user("u42")                # DataFrame rank, item_id, score, source
    store.manifest(); store.versions()

CLI::

    python -m include.recsys.tables.reader user u42 [--n 10] [--json]
    python -m include.recsys.tables.reader users u1 u2 u3 [--n 5] [--json]
    python -m include.recsys.tables.reader manifest [--version V]
    python -m include.recsys.tables.reader versions [--json]
    python -m include.recsys.tables.reader log [--json]           # every commit (move of CURRENT)
    python -m include.recsys.tables.reader verify [--version V] [--checksum]
    python -m include.recsys.tables.reader rollback [--to V]      # CURRENT only; see the rollback DAG

How it reads: a version is loaded once into memory (ids dictionary-encoded, one offset per
user), after which a lookup is a dict probe plus an array slice. Every call checks CURRENT and
the commit log's folder with one ``stat`` each; when either changed (CURRENT is replaced, never
edited; a commit adds a ``_log/`` entry), the store resolves the served version again
(:func:`include.recsys.tables.current.read_current`: the log's newest commit, rolling CURRENT forward
if a publisher died before replacing it), loads it and switches in one assignment, so an
answer never mixes versions.
Unknown users get the version's fallback list (``source == "fallback"``).

The root may also be an object-store URL (``s3://bucket/prefix``, ``memory://x``; see
:mod:`include.recsys.tables.storage`): files are read through fsspec, and CURRENT (one GET) is
re-read at most every ``refresh_s`` seconds (default 5) instead of on every call, so a new
version is picked up within that delay; lookups stay in-memory.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from include.recsys.core.uri import is_remote, normalize
from include.recsys.errors import PublishError, StorageError
from include.recsys.tables.current import read_current
from include.recsys.tables.layout import (
    CURRENT,
    FALLBACK,
    LOG_DIR,
    _store,
    _vrel,
    version_dir,
)
from include.recsys.tables.manifest import read_manifest
from include.recsys.tables.versions import list_versions, read_parts, read_version_table


class UserRecs(NamedTuple):
    user_id: Any
    items: list
    scores: list
    source: str  # "model" or "fallback"
    version: str


@dataclass
class _Loaded:
    """One version in memory. (A long class: the arrays, their loader and the lookup belong
    together; each method is short.)"""

    version: str
    manifest: dict[str, Any]
    index: dict[Any, int]  # user_id -> position
    users: np.ndarray  # user ids in table order
    offsets: np.ndarray  # rows of user p: offsets[p]:offsets[p+1]
    item_codes: np.ndarray  # int32 codes into item_dict
    item_dict: np.ndarray  # object array of item ids
    scores: np.ndarray  # float32
    source_model: np.ndarray  # bool per row
    fallback: dict[str, tuple[list, list]]  # segment ("" = global) -> (items, scores)
    max_n: int
    int_ids: bool
    variants: np.ndarray | None = None  # A/B arm per user (table order); None: no variants
    plan: Any = None  # the manifest's VariantPlan: the arm of a user the table does not hold

    @classmethod
    def open(cls, root: Path | str, version: str) -> _Loaded:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        manifest = read_manifest(root, version)  # refuses versions without manifest
        columns = ["user_id", "item_id", "score", "source", "rank"]
        if manifest.get("variants"):  # the column exists only when variants are configured
            columns.append("variant")
        try:
            store = _store(root)
            if store is not None:
                vrel = _vrel(version)
                names = [f["path"] for f in manifest.get("files", [])] or [
                    n for n in store.listdir(vrel) if n.startswith("part-") and n.endswith(".parquet")
                ]
                table = read_parts(store, [f"{vrel}/{n}" for n in names], columns)
                fb = pd.read_parquet(io.BytesIO(store.read_bytes(f"{vrel}/{FALLBACK}")))
            else:
                folder = version_dir(root, version)
                files = [folder / f["path"] for f in manifest.get("files", [])] or sorted(folder.glob("part-*.parquet"))
                table = pa.concat_tables([pq.read_table(f, columns=columns) for f in files])
                fb = pd.read_parquet(folder / FALLBACK)
        except (OSError, pa.ArrowException, StorageError) as exc:
            raise PublishError(f"version {version} is unreadable: {exc}") from exc
        users_col = table.column("user_id").combine_chunks()
        int_ids = pa.types.is_integer(users_col.type)
        if int_ids:
            users_all = users_col.to_numpy()
            starts = np.flatnonzero(np.r_[True, users_all[1:] != users_all[:-1]])
            users = users_all[starts]
        else:
            enc = pc.dictionary_encode(users_col)
            codes = enc.indices.to_numpy()
            starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
            users = np.asarray(enc.dictionary.to_pylist(), dtype=object)[codes[starts]]
        offsets = np.r_[starts, len(users_col)].astype(np.int64)
        items = pc.dictionary_encode(table.column("item_id").combine_chunks())
        return cls(
            version=version,
            manifest=manifest,
            index={u: i for i, u in enumerate(users.tolist())},
            users=users,
            offsets=offsets,
            item_codes=items.indices.to_numpy().astype(np.int32),
            item_dict=np.asarray(items.dictionary.to_pylist(), dtype=object),
            scores=table.column("score").to_numpy().astype(np.float32),
            source_model=pc.equal(table.column("source"), "model").to_numpy(zero_copy_only=False),
            fallback={
                str(seg): (g["item_id"].tolist(), g["score"].astype(float).tolist())
                for seg, g in (
                    fb if "segment" in fb.columns else fb.assign(segment="")
                ).fillna({"segment": ""}).sort_values("rank").groupby("segment", sort=False)
            },
            max_n=int(manifest.get("top_n") or (np.diff(offsets).max(initial=0))),
            int_ids=int_ids,
            **_variant_fields(table, starts, manifest),
        )

    def key(self, user_id: Any) -> Any:
        """The user id as the table types it (None when it cannot be one of its ids)."""
        if self.int_ids:
            try:
                return int(user_id)
            except (TypeError, ValueError):
                return None
        return str(user_id)

    def lookup(self, user_id: Any, n: int, segment: str | None = None) -> UserRecs:
        pos = self.index.get(self.key(user_id))
        if pos is None:
            items, scores = self.fallback.get(segment or "") or self.fallback.get("", ([], []))
            return UserRecs(user_id, items[:n], scores[:n], "fallback", self.version)
        lo = self.offsets[pos]
        hi = min(self.offsets[pos + 1], lo + n)
        src = "model" if self.source_model[lo] else "fallback"
        return UserRecs(
            user_id, self.item_dict[self.item_codes[lo:hi]].tolist(), self.scores[lo:hi].tolist(), src, self.version
        )


class SimilarItems(NamedTuple):
    item_id: Any
    items: list
    scores: list
    source: str  # "model" (the item's own list) or "fallback" (an unknown item: popular items)
    version: str


@dataclass
class _LoadedSimilar:
    """One version of the similar-items table in memory (lists per ``item_id``)."""

    version: str
    manifest: dict[str, Any]
    index: dict[Any, int]
    offsets: np.ndarray
    similar: np.ndarray  # object array of similar item ids, table order
    scores: np.ndarray
    fallback: tuple[list, list]
    max_n: int
    int_ids: bool

    @classmethod
    def open(cls, root: Path | str, version: str) -> _LoadedSimilar:
        import pyarrow as pa

        manifest = read_manifest(root, version)
        try:
            folder = version_dir(root, version)
            table = pd.DataFrame(read_version_table(str(folder) if is_remote(root) else folder,
                                                            ["item_id", "rank", "similar_item_id", "score"]))
            store = _store(root)
            raw = (store.read_bytes(f"{_vrel(version)}/{FALLBACK}") if store is not None
                   else (folder / FALLBACK).read_bytes())
            fb = pd.read_parquet(io.BytesIO(raw)).sort_values("rank")
        except (OSError, pa.ArrowException, StorageError) as exc:
            raise PublishError(f"similar-items version {version} is unreadable: {exc}") from exc
        keys = table["item_id"].to_numpy()
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, np.int64)
        return cls(
            version=version, manifest=manifest,
            index={k: i for i, k in enumerate(keys[starts].tolist())},
            offsets=np.r_[starts, len(keys)].astype(np.int64),
            similar=table["similar_item_id"].to_numpy(dtype=object),
            scores=table["score"].to_numpy(np.float32),
            fallback=(fb["similar_item_id"].tolist(), fb["score"].astype(float).tolist()),
            max_n=int(manifest.get("top_k") or np.diff(np.r_[starts, len(keys)]).max(initial=0)),
            int_ids=table["item_id"].dtype.kind in "iu",
        )

    def lookup(self, item_id: Any, n: int) -> SimilarItems:
        key = item_id
        if self.int_ids:
            try:
                key = int(item_id)
            except (TypeError, ValueError):
                key = None
        else:
            key = str(item_id)
        pos = self.index.get(key)
        if pos is None:
            items, scores = self.fallback
            return SimilarItems(item_id, items[:n], scores[:n], "fallback", self.version)
        lo = self.offsets[pos]
        hi = min(self.offsets[pos + 1], lo + n)
        return SimilarItems(item_id, self.similar[lo:hi].tolist(), self.scores[lo:hi].tolist(), "model",
                            self.version)


def _variant_fields(table: Any, starts: np.ndarray, manifest: dict[str, Any]) -> dict[str, Any]:
    """``variants`` (each user's arm) and ``plan`` of a table with A/B variants; {} without."""
    if not manifest.get("variants") or "variant" not in table.column_names:
        return {}
    from include.recsys.config.variants import VariantPlan

    arms = np.asarray(table.column("variant").to_pylist(), dtype=object)
    return {"variants": arms[starts], "plan": VariantPlan.from_dict(manifest["variants"])}


class RecommendationStore:
    """Reads the recommendation tables under ``root`` (see the module docstring). (A long class:
    the reader's whole public API in one place; each method is short.)"""

    _loader: Any = None  # _Loaded (set below the class); SimilarItemsStore: _LoadedSimilar

    def __init__(
        self, root: Path | str, refresh_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.root: Path | str = normalize(root)  # a Path, or an object-store URL
        self.refresh_s = float(refresh_s)  # object stores: how often CURRENT is re-read
        self._remote = is_remote(self.root)
        self._clock = clock  # injectable: tests step time instead of sleeping
        self._checked = float("-inf")
        self._loaded: dict[str, _Loaded] = {}
        self._current: tuple[Any, str] | None = None
        self._lock = threading.Lock()

    # --- versions and pointer ----------------------------------------------------------
    def _current_remote(self) -> str:
        """CURRENT of an object store: one GET at most every ``refresh_s`` seconds."""
        now = self._clock()
        cached = self._current
        if cached is not None and now - self._checked < self.refresh_s:
            return cached[1]
        version = read_current(self.root)
        if version is None:
            _store(self.root).check_reachable()  # a missing bucket says so
            raise LookupError(f"nothing is published under {self.root} yet (no CURRENT)")
        if cached is None or cached[1] != version:
            store = _store(self.root)
            if not store.listdir(_vrel(version)):
                raise LookupError(
                    f"CURRENT under {self.root} is corrupt: it names {version!r}, which is not a version folder"
                )
        self._current, self._checked = (None, version), now
        return version

    def current_version(self) -> str:
        """The served version, re-read only when CURRENT was replaced (one stat per call;
        on an object store one GET per ``refresh_s``)."""
        if self._remote:
            return self._current_remote()
        try:
            st = os.stat(self.root / CURRENT)
        except FileNotFoundError:
            st = None
        try:  # a commit adds a log entry, hence changes the folder: then CURRENT may lag behind
            lg = os.stat(self.root / LOG_DIR)
        except FileNotFoundError:
            lg = None
        if st is None and lg is None:
            raise LookupError(f"nothing is published under {self.root} yet (no CURRENT)")
        stamp = tuple((s.st_ino, s.st_mtime_ns, s.st_size) if s else None for s in (st, lg))
        cached = self._current
        if cached is not None and cached[0] == stamp:
            return cached[1]
        version = read_current(self.root)
        if version is None and st is None:
            raise LookupError(f"nothing is published under {self.root} yet (no CURRENT)")
        if not version or not version_dir(self.root, version).is_dir():
            raise LookupError(
                f"CURRENT under {self.root} is corrupt: it names {version!r}, which is not a version folder"
            )
        self._current = (stamp, version)
        return version

    def manifest(self, version: str | None = None) -> dict[str, Any]:
        return read_manifest(self.root, version or self.current_version())

    def versions(self) -> list[dict[str, Any]]:
        return list_versions(self.root)

    def _version(self, version: str | None) -> _Loaded:
        version = version or self.current_version()
        loaded = self._loaded.get(version)
        if loaded is None:
            with self._lock:
                loaded = self._loaded.get(version) or (self._loader or _Loaded).open(self.root, version)
                # keep the served version and at most one other in memory
                self._loaded = {v: x for v, x in self._loaded.items() if v == self._current_or_none()}
                self._loaded[version] = loaded
        return loaded

    def _current_or_none(self) -> str | None:
        return self._current[1] if self._current else None

    def _check_n(self, loaded: _Loaded, n: int | None) -> int:
        if n is None:
            return loaded.max_n
        if not isinstance(n, (int, np.integer)) or n <= 0:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if n > loaded.max_n:
            raise ValueError(f"n={n} exceeds the {loaded.max_n} recommendations stored per user in version {loaded.version}")
        return int(n)

    # --- lookups -------------------------------------------------------------------------
    def recommend(
        self, user_id: Any, n: int | None = None, version: str | None = None, segment: str | None = None
    ) -> UserRecs:
        """Top-n of one user from CURRENT (or ``version``). An unknown user gets the fallback
        list of ``segment`` when given and known to the table, else the global one."""
        loaded = self._version(version)
        return loaded.lookup(user_id, self._check_n(loaded, n), segment)

    def recommend_many(self, user_ids: list[Any], n: int | None = None, version: str | None = None) -> pd.DataFrame:
        """Long-format recommendations of many users, all from one version (with a ``variant``
        column when the table has A/B variants)."""
        loaded = self._version(version)
        n = self._check_n(loaded, n)
        rows = [loaded.lookup(u, n) for u in user_ids]
        df = pd.DataFrame(
            {
                "user_id": [r.user_id for r in rows for _ in r.items],
                "rank": [k for r in rows for k in range(1, len(r.items) + 1)],
                "item_id": [i for r in rows for i in r.items],
                "score": np.array([s for r in rows for s in r.scores], dtype=np.float32),
                "source": [r.source for r in rows for _ in r.items],
            }
        )
        if loaded.plan is not None:
            arms = [self._arm(loaded, u) for u in user_ids]
            df["variant"] = [a for a, r in zip(arms, rows) for _ in r.items]
        return df

    def variant_of(self, user_id: Any, version: str | None = None) -> str | None:
        """The A/B arm of ``user_id`` in CURRENT (or ``version``): its ``variant`` column, or
        for a user the table does not hold the arm the salted hash gives (what the nightly run
        would assign); None when the table has no variants."""
        return self._arm(self._version(version), user_id)

    @staticmethod
    def _arm(loaded: _Loaded, user_id: Any) -> str | None:
        if loaded.plan is None:
            return None
        pos = loaded.index.get(loaded.key(user_id))
        if pos is not None:
            return str(loaded.variants[pos])
        from include.recsys.config.variants import assign

        return str(assign([user_id], loaded.plan)[0])

    def for_user(
        self, user_id: Any, n: int | None = None, version: str | None = None, segment: str | None = None
    ) -> pd.DataFrame:
        """Ranked recommendations of one user as a DataFrame (rank, item_id, score, source)."""
        r = self.recommend(user_id, n, version, segment)
        return pd.DataFrame(
            {
                "rank": np.arange(1, len(r.items) + 1),
                "item_id": r.items,
                "score": np.asarray(r.scores, dtype=np.float32),
                "source": r.source,
            }
        )

    def table(self, version: str | None = None) -> pd.DataFrame:
        """The whole table of a version (default: the served one)."""
        folder = version_dir(self.root, version or self.current_version())
        if self._remote:
            return read_version_table(str(folder))
        # partitioning=None: no extra hive column from the "version=<id>" folder name
        return pd.read_parquet(sorted(folder.glob("part-*.parquet")), partitioning=None)


class SimilarItemsStore(RecommendationStore):
    """Reads the similar-items table (``item_id, rank, similar_item_id, score``) under its own
    root (:func:`include.recsys.scoring.similar.similar_root`), with the same CURRENT and version
    handling as :class:`RecommendationStore`::

        store = SimilarItemsStore("data/similar_items")
        store.similar("i17", n=5)   # SimilarItems(item_id, items, scores, source, version)
    """

    _loader = _LoadedSimilar

    def similar(self, item_id: Any, n: int | None = None, version: str | None = None) -> SimilarItems:
        """The top-n items similar to ``item_id``; an item the table does not hold gets the
        table's fallback list (popular allowed items, ``source == "fallback"``)."""
        loaded = self._version(version)
        return loaded.lookup(item_id, self._check_n(loaded, n))

    def knows(self, item_id: Any, version: str | None = None) -> bool:
        """Whether the table holds a list for ``item_id``."""
        return self.similar(item_id, 1, version).source == "model"


def _default_root() -> Path | str:
    from include.recsys.config.settings import load_config

    return load_config().recommendations_root
