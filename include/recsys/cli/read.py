"""The table reader's own command line (no MLflow or Airflow needed).

    python -m include.recsys.cli.read [--root R] user|users|manifest|versions|log|verify|rollback

One user's list, several users', a manifest, the versions, the commit log, a version's
integrity, and CURRENT moved back (the table only: ``recsys rollback`` moves the model too).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import pandas as pd

from include.recsys.errors import PublishError, StorageError
from include.recsys.tables.current import history, rollback
from include.recsys.tables.manifest import verify_version
from include.recsys.tables.reader import RecommendationStore, _default_root


def _print_frame(df: pd.DataFrame, title: str | None = None) -> None:
    """A rich table on a terminal, plain aligned text otherwise (pipes, files, tests)."""
    if sys.stdout.isatty():
        try:
            from rich.console import Console
            from rich.table import Table

            t = Table(title=title)
            for c in df.columns:
                t.add_column(str(c), justify="right" if df[c].dtype.kind in "if" else "left")
            for row in df.itertuples(index=False):
                t.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row])
            Console().print(t)
            return
        except ImportError:
            pass
    print(df.to_string(index=False))


def _print_log(entries: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(entries, indent=2, default=str))
        return
    if not entries:
        print("no commits")
        return
    rows = [
        {
            "seq": e.get("seq"), "at": e.get("at"), "version": e.get("version"), "previous": e.get("previous"),
            "data_end": (e.get("data_window") or {}).get("end"), "model_version": e.get("model_version"),
            "reason": e.get("reason"), "override": e.get("override") or "",
        }
        for e in entries
    ]
    _print_frame(pd.DataFrame(rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m include.recsys.cli.read", description=__doc__.split("\n")[0])
    p.add_argument("--root", default=os.environ.get("RECSYS_RECOMMENDATIONS_DIR") or None)
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("user", help="recommendations for one user from CURRENT")
    u.add_argument("user_id")
    u.add_argument("--n", type=int, default=None)
    u.add_argument("--version", default=None)
    u.add_argument("--json", action="store_true", help="print JSON")
    u.add_argument("--segment", default=None, help="segment of an unknown user (fallback list)")
    us = sub.add_parser("users", help="recommendations for several users (one version)")
    us.add_argument("user_ids", nargs="+")
    us.add_argument("--n", type=int, default=None)
    us.add_argument("--version", default=None)
    us.add_argument("--json", action="store_true", help="print JSON lines")
    m = sub.add_parser("manifest", help="the manifest of a version (default: CURRENT)")
    m.add_argument("--version", default=None)
    v = sub.add_parser("versions", help="complete versions, oldest first")
    v.add_argument("--json", action="store_true")
    lg = sub.add_parser("log", help="the commit log: every move of CURRENT, oldest first")
    lg.add_argument("--json", action="store_true")
    vf = sub.add_parser("verify", help="check that every file a version's manifest lists is intact")
    vf.add_argument("--version", default=None)
    vf.add_argument("--checksum", action="store_true", help="also compare sha256 (reads every byte)")
    rb = sub.add_parser("rollback", help="point CURRENT back (default: to the previous version)")
    rb.add_argument("--to", default=None)
    args = p.parse_args(argv)
    store = RecommendationStore(args.root or _default_root())
    try:
        if args.cmd == "user":
            r = store.recommend(args.user_id, n=args.n, version=args.version, segment=args.segment)
            if args.json:
                print(json.dumps(r._asdict(), default=str))
            else:
                _print_frame(store.for_user(args.user_id, n=args.n, version=args.version, segment=args.segment),
                             title=f"{args.user_id} ({r.source}, version {r.version})")
        elif args.cmd == "users":
            df = store.recommend_many(args.user_ids, n=args.n, version=args.version)
            if args.json:
                for rec in df.to_dict(orient="records"):
                    print(json.dumps(rec, default=str))
            else:
                _print_frame(df)
        elif args.cmd == "manifest":
            print(json.dumps(store.manifest(args.version), indent=2))
        elif args.cmd == "versions":
            vs = store.versions()
            if args.json:
                print(json.dumps(vs, indent=2))
            else:
                _print_frame(pd.DataFrame(vs)) if vs else print("no versions")
        elif args.cmd == "log":
            _print_log(history(store.root), args.json)
        elif args.cmd == "verify":
            version = args.version or store.current_version()
            m = verify_version(store.root, version, checksum=args.checksum)
            what = "sizes and sha256" if args.checksum else "sizes"
            print(f"version {version}: {len(m.get('files', [])) + 1} files intact ({what})")
        else:
            print(f"CURRENT -> {rollback(store.root, args.to)}")
    except (LookupError, ValueError, PublishError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
