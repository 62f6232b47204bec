"""The read side: recommendations for a user from the served version, manifests, versions.

Python::

    from include.recsys.reader import RecommendationStore
    store = RecommendationStore("data/recommendations")
    store.for_user("u42")            # DataFrame: rank, item_id, score, source
    store.manifest()                 # dict of the served version

CLI::

    python -m include.recsys.reader user u42 [--n 10] [--root data/recommendations]
    python -m include.recsys.reader manifest [--version V]
    python -m include.recsys.reader versions

A store resolves CURRENT once per call and then reads only that immutable version folder, so
one answer never mixes versions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from include.recsys import publish


class RecommendationStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def current_version(self) -> str:
        v = publish.read_current(self.root)
        if v is None:
            raise LookupError(f"nothing is published under {self.root} yet (no CURRENT)")
        return v

    def manifest(self, version: str | None = None) -> dict[str, Any]:
        return publish.read_manifest(self.root, version or self.current_version())

    def versions(self) -> list[dict[str, Any]]:
        return publish.list_versions(self.root)

    def table(self, version: str | None = None) -> pd.DataFrame:
        """The whole table of a version (default: the served one)."""
        folder = publish.version_dir(self.root, version or self.current_version())
        # partitioning=None: no extra hive column from the "version=<id>" folder name
        return pd.read_parquet(sorted(folder.glob("part-*.parquet")), partitioning=None)

    def for_user(self, user_id: Any, n: int | None = None, version: str | None = None) -> pd.DataFrame:
        """Ranked recommendations of one user; the version's fallback list if the user is unknown."""
        import pyarrow as pa
        import pyarrow.dataset as ds

        version = version or self.current_version()
        folder = publish.version_dir(self.root, version)
        dataset = ds.dataset(sorted(folder.glob("part-*.parquet")), format="parquet")
        id_type = dataset.schema.field("user_id").type
        try:  # cast now: an expression's cast would only fail later, inside the scan
            key = ds.scalar(pa.scalar(user_id).cast(id_type))
        except Exception:  # e.g. "abc" for an integer id column: certainly unknown
            key = None
        rows = (
            dataset.to_table(
                filter=ds.field("user_id") == key,
                columns=["rank", "item_id", "score", "source"],
            ).to_pandas()
            if key is not None
            else pd.DataFrame()
        )
        if rows.empty:
            rows = pd.read_parquet(folder / "_fallback.parquet")[["rank", "item_id", "score"]]
            rows["source"] = "fallback"
        rows = rows.sort_values("rank", ignore_index=True)
        return rows.head(n) if n else rows


def _default_root() -> Path:
    from include.recsys.config import load_config

    return load_config().recommendations_root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m include.recsys.reader", description=__doc__.split("\n")[0])
    p.add_argument("--root", default=os.environ.get("RECSYS_RECOMMENDATIONS_DIR") or None)
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("user", help="recommendations for one user from CURRENT")
    u.add_argument("user_id")
    u.add_argument("--n", type=int, default=None)
    u.add_argument("--version", default=None)
    m = sub.add_parser("manifest", help="the manifest of a version (default: CURRENT)")
    m.add_argument("--version", default=None)
    sub.add_parser("versions", help="complete versions, oldest first")
    args = p.parse_args(argv)
    store = RecommendationStore(args.root or _default_root())
    try:
        if args.cmd == "user":
            uid: Any = args.user_id
            df = store.for_user(uid, n=args.n, version=args.version)
            if df["source"].eq("fallback").all() and uid.lstrip("-").isdigit():
                alt = store.for_user(int(uid), n=args.n, version=args.version)
                df = alt if not alt["source"].eq("fallback").all() else df
            print(df.to_string(index=False))
        elif args.cmd == "manifest":
            print(json.dumps(store.manifest(args.version), indent=2))
        else:
            vs = store.versions()
            print(pd.DataFrame(vs).to_string(index=False) if vs else "no versions")
    except (LookupError, publish.PublishError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
