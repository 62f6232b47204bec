"""Shared helpers of the fault-injection tests: small recommendation tables whose every cell
names its version (so a read can tell whether it mixed versions), and child-process workers
(``python -m tests.faults._helpers <worker> ...``)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from include.recsys import publish as pub

USERS = [f"u{i}" for i in range(1, 7)]
TOP_N = 5


def table(tag: str, users=USERS, n: int = TOP_N) -> pd.DataFrame:
    rows = [
        (u, r, f"{tag}:item{r}", float(n - r), "model", "recsys_als", tag)
        for u in users
        for r in range(1, n + 1)
    ]
    df = pd.DataFrame(rows, columns=pub.TABLE_COLUMNS)
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
    return pub.write_version(root, version, table(version), fallback(version), {"model_version": version}, **kw)


def publish(root, version: str) -> bool:
    write(root, version)
    return pub.point_current(root, version)


# --- child-process workers ------------------------------------------------------------------


def slow_write(root: str, version: str) -> None:
    """write_version with one part per user and a pause after each part, announcing
    ``PART <i>`` on stdout, so the parent can SIGKILL it mid-write."""
    real = pub.write_part

    def slow_part(*args, **kwargs):
        out = real(*args, **kwargs)
        print(f"PART {out['path']}", flush=True)
        time.sleep(0.5)
        return out

    pub.write_part = slow_part
    write(root, version, rows_per_part=TOP_N)  # 6 users -> 6 parts, ~3 s
    print("DONE", flush=True)


def poll_reader(root: str, stop_file: str, out_file: str) -> None:
    """Read CURRENT's recommendations in a loop until ``stop_file`` exists; record every version
    seen and every error or mixed read in ``out_file`` (JSON)."""
    from include.recsys.reader import RecommendationStore

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
    {"slow_write": slow_write, "poll_reader": poll_reader}[sys.argv[1]](*sys.argv[2:])
