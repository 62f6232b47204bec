"""User-id pseudonymization with a keyed HMAC, and formula-safe CSV cells.

**This is pseudonymization, not anonymization.** ``HMAC-SHA256(key, user_id)`` replaces the id
by a stable token: whoever holds the key can recompute the token of any known id and so
re-identify people, and the recommendations themselves (items, their order) remain personal
data. It keeps raw ids out of what leaves the pipeline (tables, exports); it does not make
the data anonymous in the GDPR sense. Rotate the key and every token changes.

Configuration (off by default):

* ``RECSYS_PSEUDONYMIZE_USER_IDS=true`` switches it on;
* the key comes from, in order: the Airflow connection ``recsys_pseudonymize`` (its password;
  e.g. from a secrets backend), the Airflow Variable ``recsys_pseudonymize_key``, or
  ``RECSYS_PSEUDONYMIZE_KEY``. Enabled without a key (or a key under 16 bytes) is an error,
  never a silent fallback to raw ids.

Readers look a user up by ``pseudonymize_id(user_id, key)``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable
from typing import Any

from include.recsys.errors import PseudonymizationError

ENABLED_ENV = "RECSYS_PSEUDONYMIZE_USER_IDS"

KEY_ENV = "RECSYS_PSEUDONYMIZE_KEY"

CONN_ID = "recsys_pseudonymize"

VARIABLE = "recsys_pseudonymize_key"

PREFIX = "p_"

TOKEN_HEX_CHARS = 32  # 128 bits of the HMAC: collisions are negligible for any user count

MIN_KEY_BYTES = 16


def enabled() -> bool:
    return (os.environ.get(ENABLED_ENV) or "false").strip().lower() in {"1", "true", "yes", "on"}


def _key_bytes(key: str | bytes) -> bytes:
    kb = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if len(kb) < MIN_KEY_BYTES:
        raise PseudonymizationError(f"the pseudonymization key must be at least {MIN_KEY_BYTES} bytes")
    return kb


def load_key() -> bytes:
    """The key from the Airflow connection, the Airflow Variable, or the environment."""
    candidates: list[Any] = []
    try:  # inside Airflow: connection (secrets backend) first, then Variable
        from airflow.sdk import BaseHook, Variable

        try:
            candidates.append(BaseHook.get_connection(CONN_ID).password)
        except Exception:
            pass
        try:
            candidates.append(Variable.get(VARIABLE, default=None))
        except Exception:
            pass
    except Exception:
        pass
    candidates.append(os.environ.get(KEY_ENV))
    for c in candidates:
        if c:
            return _key_bytes(c)
    raise PseudonymizationError(
        f"{ENABLED_ENV} is on but no key is configured (connection '{CONN_ID}', Variable "
        f"'{VARIABLE}' or ${KEY_ENV})"
    )


def pseudonymize_id(user_id: Any, key: str | bytes) -> str:
    """``p_`` + the first 128 bits (hex) of HMAC-SHA256(key, str(user_id))."""
    digest = hmac.new(_key_bytes(key), str(user_id).encode("utf-8"), hashlib.sha256).hexdigest()
    return PREFIX + digest[:TOKEN_HEX_CHARS]


def pseudonymize_ids(user_ids: Iterable[Any], key: str | bytes) -> list[str]:
    kb = _key_bytes(key)
    return [
        PREFIX + hmac.new(kb, str(u).encode("utf-8"), hashlib.sha256).hexdigest()[:TOKEN_HEX_CHARS]
        for u in user_ids
    ]


def pseudonymize_table(table, column: str = "user_id", key: str | bytes | None = None):
    """The hook for where ids leave the pipeline: returns ``table`` unchanged when disabled,
    else a copy with ``column`` replaced by tokens (each distinct id hashed once)."""
    if key is None:
        if not enabled():
            return table
        key = load_key()
    import pandas as pd

    codes, uniques = pd.factorize(table[column], sort=False)
    tokens = pd.Index(pseudonymize_ids(uniques, key))
    out = table.copy()
    out[column] = tokens.take(codes)
    return out

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """Neutralise spreadsheet formula injection (CWE-1236): a string cell starting with
    ``= + - @``, tab or CR gets a leading ``'``. Numbers pass unchanged. (The project has no CSV
    export today; use this in any that is added.)"""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value
