"""Where the published tables live: a local folder (the default) or an object-store URL via fsspec.

``RECSYS_RECOMMENDATIONS_DIR`` (``PipelineConfig.recommendations_dir``) is either a path
(``/srv/recs``, ``data/recommendations``) or a URL whose scheme fsspec knows (``s3://bucket/prefix``,
``memory://name``, ``gs://...`` with its package installed). Paths keep the local code path of
:mod:`include.recsys.tables.versions` (staging folder + rename, fsync, flock). URLs go through
:class:`ObjectStore`, a thin layer over an fsspec filesystem with the few operations publishing
needs: whole-object reads and writes, a listing that bypasses fsspec's listing cache, deletes,
and conditional writes (S3 ``If-None-Match: *`` / ``If-Match: <etag>``) for compare-and-swap.

Credentials and endpoints never live in code: fsspec storage options come from
``RECSYS_STORAGE_OPTIONS`` (a JSON object, e.g. ``{"endpoint_url": "http://127.0.0.1:9000"}``),
and s3fs/botocore also read the standard ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_ENDPOINT_URL`` / ``AWS_DEFAULT_REGION`` variables and ``~/.aws``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from include.recsys.core.uri import normalize
from include.recsys.errors import StorageError, WriteConflict

log = logging.getLogger(__name__)


OPTIONS_ENV = "RECSYS_STORAGE_OPTIONS"

#: "0" turns conditional writes off, for S3-compatible stores that reject If-Match/If-None-Match
#: (then publishers must be serialised by Airflow: max_active_runs=1 and a pool of one slot).
CONDITIONAL_ENV = "RECSYS_STORAGE_CONDITIONAL_WRITES"


def storage_options() -> dict[str, Any]:
    """fsspec storage options from ``$RECSYS_STORAGE_OPTIONS`` (JSON object; empty when unset)."""
    raw = os.environ.get(OPTIONS_ENV, "").strip()
    if not raw:
        return {}
    try:
        opts = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"${OPTIONS_ENV} is not valid JSON: {exc}") from None
    if not isinstance(opts, dict):
        raise ValueError(f"${OPTIONS_ENV} must be a JSON object, got {type(opts).__name__}")
    return opts


def conditional_writes_enabled() -> bool:
    return os.environ.get(CONDITIONAL_ENV, "1").strip().lower() not in {"0", "false", "no", "off"}

# stores without server-side preconditions (memory://, ...) get compare-and-swap within one
# process only; memory:// lives in one process anyway
_LOCAL_CAS = threading.Lock()


@dataclass
class ObjectStore:
    """One object-store root: ``url`` (``s3://bucket/prefix``), its fsspec ``fs`` and ``path``.
    (A long class: every store operation the tables use, each method short.)"""

    url: str
    fs: Any
    path: str
    _s3: bool = field(default=False, repr=False)

    @classmethod
    def open(cls, url: str) -> ObjectStore:
        import fsspec.core

        url = str(normalize(url))
        try:
            fs, path = fsspec.core.url_to_fs(url, **storage_options())
        except (ValueError, ImportError) as exc:
            raise ValueError(f"cannot open recommendations root {url!r}: {exc}") from exc
        return cls(url=url, fs=fs, path=path.rstrip("/"), _s3=type(fs).__name__ == "S3FileSystem")

    # --- names -------------------------------------------------------------------------
    def key(self, rel: str = "") -> str:
        return f"{self.path}/{rel}" if rel else self.path

    def url_of(self, rel: str = "") -> str:
        return f"{self.url}/{rel}" if rel else self.url

    def _fail(self, what: str, rel: str, exc: BaseException) -> StorageError:
        return StorageError(f"{what} {self.url_of(rel)} failed: {type(exc).__name__}: {exc}")

    # --- reads ---------------------------------------------------------------------------
    def read_bytes(self, rel: str) -> bytes:
        """The whole object (one GET, no cache). FileNotFoundError when it does not exist."""
        try:
            # s3fs answers "not found" from a cached listing of the folder that predates the
            # object (another process wrote it since): forget that listing first
            self.fs.invalidate_cache(self.key(rel))
            return self.fs.cat_file(self.key(rel))
        except FileNotFoundError:
            raise
        except Exception as exc:  # connection refused, access denied, ... -> one clear error
            raise self._fail("reading", rel, exc) from exc

    def read_tagged(self, rel: str) -> tuple[bytes, str | None]:
        """Content and entity tag (S3 ETag; None on stores without one) read as one pair."""
        if not self._s3:
            return self.read_bytes(rel), None
        key = self.key(rel)
        for attempt in range(5):
            try:
                self.fs.invalidate_cache(key)
                # s3fs reads an opened object with If-Match on its ETag: content and tag agree
                with self.fs.open(key, "rb") as fh:
                    return fh.read(), fh.details.get("ETag")
            except FileNotFoundError:
                raise
            except Exception as exc:
                # replaced between the HEAD and the GET (a concurrent publish): read it again
                if type(exc).__name__ == "FileExpired" and attempt < 4:
                    continue
                raise self._fail("reading", rel, exc) from exc
        raise AssertionError("unreachable")

    def read_many(self, rels: list[str], *, missing_ok: bool = True) -> dict[str, bytes]:
        """rel -> content of several objects, fetched concurrently where the store can (s3fs).
        Missing objects are left out (``missing_ok``) or raise FileNotFoundError."""
        if not rels:
            return {}
        keys = {self.key(r): r for r in rels}
        for folder in {k.rsplit("/", 1)[0] for k in keys}:
            self.fs.invalidate_cache(folder)  # see read_bytes
        try:
            got = self.fs.cat(list(keys), on_error="omit" if missing_ok else "raise")
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise self._fail("reading", rels[0], exc) from exc
        out = {}
        for k, v in got.items():
            rel = keys.get(k) or keys.get(self.fs._strip_protocol(k))
            if rel is not None and not isinstance(v, BaseException):
                out[rel] = v
        return out

    def exists(self, rel: str) -> bool:
        key = self.key(rel)
        try:
            self.fs.invalidate_cache(key)
            return bool(self.fs.exists(key))
        except Exception as exc:
            raise self._fail("checking", rel, exc) from exc

    def listdir(self, rel: str = "") -> list[str]:
        """Names of the direct children of ``rel`` ("folders" included), sorted; [] if none."""
        key = self.key(rel)
        try:
            self.fs.invalidate_cache(key)
            names = self.fs.ls(key, detail=False, refresh=True) if self._s3 else self.fs.ls(key, detail=False)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise self._fail("listing", rel, exc) from exc
        return sorted(n.rstrip("/").rsplit("/", 1)[-1] for n in names)

    def sizes(self, rel: str) -> dict[str, int]:
        """name -> size of the objects directly under ``rel``."""
        key = self.key(rel)
        try:
            self.fs.invalidate_cache(key)
            infos = self.fs.ls(key, detail=True)
        except FileNotFoundError:
            return {}
        except Exception as exc:
            raise self._fail("listing", rel, exc) from exc
        return {i["name"].rstrip("/").rsplit("/", 1)[-1]: int(i.get("size") or 0) for i in infos if i.get("type") == "file"}

    def newest_mtime(self, rel: str) -> float | None:
        """POSIX time of the newest object under ``rel`` (recursively; None when empty), from
        the store's own clock (S3 ``LastModified``): how long ago a writer last wrote there."""
        key = self.key(rel)
        try:
            self.fs.invalidate_cache(key)
            infos = self.fs.find(key, detail=True)
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise self._fail("listing", rel, exc) from exc
        times = [_mtime(i) for i in infos.values()]
        return max((t for t in times if t is not None), default=None)

    def check_reachable(self) -> None:
        """StorageError when the root's bucket does not exist, is not accessible or the store
        cannot be reached (checked on S3 only; other stores answer through their first read)."""
        if not self._s3:
            return
        bucket = self.path.split("/", 1)[0]
        try:
            self.fs.invalidate_cache(bucket)
            ok = self.fs.exists(bucket)
        except Exception as exc:
            raise self._fail("checking", "", exc) from exc
        if not ok:
            raise StorageError(f"bucket {bucket!r} of {self.url} does not exist or is not accessible")

    # --- writes --------------------------------------------------------------------------
    def write_bytes(
        self, rel: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None,
        expect: bytes | None = None,
    ) -> None:
        """One PUT of ``data`` (atomic on S3: readers see the old or the new object).

        Conditional forms raise :class:`WriteConflict` when they lose: ``if_absent`` (the
        object must not exist: S3 ``If-None-Match: *``) and ``if_match`` (its ETag must still be
        this: S3 ``If-Match``). On stores without ETags, ``expect`` (the content read before)
        is compared under a process lock instead: exact for memory://, best effort elsewhere.
        """
        key = self.key(rel)
        conditional = (if_absent or if_match is not None) and conditional_writes_enabled()
        try:
            if self._s3 and conditional:
                kw = {"mode": "create"} if if_absent else {"IfMatch": if_match}
                self._s3_conditional_put(rel, key, data, kw)
            elif not self._s3 and (if_absent or expect is not None):
                with _LOCAL_CAS:
                    try:
                        now = self.fs.cat_file(key)
                    except FileNotFoundError:
                        now = None
                    if (if_absent and now is not None) or (expect is not None and now != expect):
                        raise WriteConflict(f"{self.url_of(rel)} changed since it was read")
                    self.fs.pipe_file(key, data)
            else:
                self.fs.pipe_file(key, data)
            self.fs.invalidate_cache(key)
        except WriteConflict:
            raise
        except Exception as exc:  # FileNotFoundError here: no such bucket
            raise self._fail("writing", rel, exc) from exc

    def _s3_conditional_put(self, rel: str, key: str, data: bytes, kw: dict[str, Any]) -> None:
        try:
            self.fs.pipe_file(key, data, **kw)
        except FileExistsError as exc:  # 412 on If-None-Match
            raise WriteConflict(f"{self.url_of(rel)} already exists") from exc
        except OSError as exc:
            # s3fs maps a 412 on If-Match to a generic OSError: tell it apart by its text
            text = f"{exc} {exc.__cause__ or ''}"
            if "PreconditionFailed" in text or "412" in text or "precondition" in text.lower():
                raise WriteConflict(f"{self.url_of(rel)} changed since it was read") from exc
            raise

    def delete(self, rel: str, *, recursive: bool = False) -> None:
        key = self.key(rel)
        try:
            self.fs.rm(key, recursive=recursive)
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise self._fail("deleting", rel, exc) from exc
        finally:
            self.fs.invalidate_cache(key)


def _mtime(info: dict[str, Any]) -> float | None:
    """Modification time of an fsspec ``info`` dict: s3fs ``LastModified`` (datetime), the
    memory filesystem's ``created`` (float), local ``mtime``."""
    for k in ("LastModified", "mtime", "created", "last_modified"):
        v = info.get(k)
        if v is None:
            continue
        if hasattr(v, "timestamp"):
            return float(v.timestamp())
        try:
            return float(v)
        except (TypeError, ValueError):
            continue
    return None
