"""Shared helpers of the fault-injection tests: small recommendation tables whose every cell
names its version (so a read can tell whether it mixed versions), and child-process workers
(``python -m tests.faults._helpers <worker> ...``)."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from include.recsys.tables.current import point_current, read_current
from include.recsys.tables.layout import LOG_DIR, TABLE_COLUMNS
from include.recsys.tables.retention import cleanup
from include.recsys.tables.versions import write_version

USERS = [f"u{i}" for i in range(1, 7)]
TOP_N = 5


def table(tag: str, users=USERS, n: int = TOP_N) -> pd.DataFrame:
    rows = [
        (u, r, f"{tag}:item{r}", float(n - r), "model", "recsys_als", tag)
        for u in users
        for r in range(1, n + 1)
    ]
    df = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    df["rank"] = df["rank"].astype(np.int16)
    df["score"] = df["score"].astype(np.float32)
    return df


def fallback(tag: str, n: int = 3) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rank": np.arange(1, n + 1, dtype=np.int16),
            "item_id": [f"{tag}:pop{r}" for r in range(1, n + 1)],
            "score": np.linspace(1.0, 0.5, n).astype(np.float32),
        }
    )


def write(root, version: str, **kw) -> Path:
    return write_version(root, version, table(version), fallback(version), {"model_version": version}, **kw)


def publish(root, version: str) -> bool:
    write(root, version)
    return point_current(root, version)


def backdate(folder: Path, seconds: float) -> None:
    """Set the mtime of ``folder`` and everything in it ``seconds`` back (an abandoned write)."""
    import os

    t = time.time() - seconds
    for p in [folder, *folder.rglob("*")]:
        os.utime(p, (t, t))


def set_commit_time(root, at: str, index: int = -1) -> None:
    """Backdate commit ``index`` of the log to ``at`` (tests only: a commit is never edited
    in production), as if CURRENT had moved then."""
    path = sorted((Path(root) / LOG_DIR).glob("*.json"))[index]
    entry = json.loads(path.read_text())
    entry["at"] = at
    path.write_text(json.dumps(entry))


# --- child-process workers ------------------------------------------------------------------


def slow_write(root: str, version: str) -> None:
    """write_version with one part per user and a pause after each part, announcing
    ``PART <i>`` on stdout, so the parent can SIGKILL it mid-write."""
    from include.recsys.tables import versions

    real = versions.write_part

    def slow_part(*args, **kwargs):
        out = real(*args, **kwargs)
        print(f"PART {out['path']}", flush=True)
        time.sleep(0.5)
        return out

    versions.write_part = slow_part  # write_version looks it up at call time
    write(root, version, rows_per_part=TOP_N)  # 6 users -> 6 parts, ~3 s
    print("DONE", flush=True)


def cycle(root: str, version: str, keep: str = "1") -> None:
    """One nightly publish as the pipeline does it: write the version unless it is served
    already, serve it, apply retention. The crash tests run it with ``$RECSYS_CRASH_AT``."""
    if read_current(root) != version:
        write(root, version)
    point_current(root, version)
    cleanup(root, keep=int(keep))
    print("DONE", flush=True)


@contextlib.contextmanager
def moto_s3(bucket: str):
    """A moto S3 server on a free local port with ``bucket``; yields the storage options
    (endpoint and credentials) that ``$RECSYS_STORAGE_OPTIONS`` hands to a child process."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        opts = {"endpoint_url": f"http://{host}:{port}", "key": "testing", "secret": "testing"}
        boto3.client(
            "s3", endpoint_url=opts["endpoint_url"], aws_access_key_id="testing",
            aws_secret_access_key="testing", region_name="us-east-1",
        ).create_bucket(Bucket=bucket)
        yield opts
    finally:
        server.stop()


def poll_reader(root: str, stop_file: str, out_file: str) -> None:
    """Read CURRENT's recommendations in a loop until ``stop_file`` exists; record every version
    seen and every error or mixed read in ``out_file`` (JSON)."""
    from include.recsys.tables.reader import RecommendationStore

    store = RecommendationStore(root)
    seen: list[str] = []
    problems: list[str] = []
    while not Path(stop_file).exists():
        try:
            rows = store.for_user("u3")
            tags = {i.split(":")[0] for i in rows["item_id"]}
            full = store.table()
            full_tags = set(full["model_version"])
            if len(tags) != 1 or rows["rank"].tolist() != list(range(1, TOP_N + 1)):
                problems.append(f"mixed or partial user read: {sorted(tags)} {rows['rank'].tolist()}")
            if len(full_tags) != 1 or len(full) != len(USERS) * TOP_N:
                problems.append(f"mixed or partial table read: {sorted(full_tags)} rows={len(full)}")
            seen.append(tags.pop())
            if len(seen) == 1:
                Path(out_file + ".ready").touch()
        except Exception as exc:  # noqa: BLE001 - every error is a finding
            problems.append(f"{type(exc).__name__}: {exc}")
        time.sleep(0.002)  # leave the publisher some CPU on small machines
    Path(out_file).write_text(json.dumps({"seen": seen, "problems": problems}))


if __name__ == "__main__":
    {"slow_write": slow_write, "poll_reader": poll_reader, "cycle": cycle}[sys.argv[1]](*sys.argv[2:])
