"""Seeded synthetic implicit feedback: the embedded default data.

Shape of the generator (all vectorised, ~10M events/s):

- items belong to latent topics; inside a topic, popularity follows a power law (Zipf), so a
  few items take most events, as in real catalogues;
- each user has a sparse Dirichlet mixture over topics (their taste) and a log-normal activity
  level; an event picks a topic from the user's mixture, then an item of that topic by
  popularity. A share ``noise`` of events comes from global popularity instead. Collaborative
  filtering can learn the tastes, popularity cannot: CF clearly beats popularity;
- users join and items are released over the period (new users and items appear over time);
- event types (view / click / cart / purchase) with their own frequencies;
- an optional share of exact duplicate rows, as an upstream double load would make.

It lands the events as date-partitioned Parquet (``date=YYYY-MM-DD/part-0.parquet``), the
pipeline's default source.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


EVENT_TYPES = np.array(["view", "click", "cart", "purchase"])

EVENT_PROBS = np.array([0.70, 0.18, 0.07, 0.05])


@dataclass(frozen=True)
class SynthSpec:
    """Size and shape of a synthetic data set."""

    n_users: int = 3000
    n_items: int = 1000
    n_topics: int = 20
    events_per_user: float = 40.0
    days: int = 70
    end_date: str = ""  # last day with events (inclusive), YYYY-MM-DD; empty: yesterday (UTC)
    zipf_a: float = 1.1
    taste_concentration: float = 0.15
    noise: float = 0.05
    new_user_share: float = 0.2
    new_item_share: float = 0.1
    duplicate_share: float = 0.005
    n_segments: int = 4  # a user attribute (e.g. region) that correlates with taste
    seed: int = 7

    def resolved_end(self) -> date:
        if self.end_date:
            return date.fromisoformat(self.end_date)
        return (datetime.now(timezone.utc) - timedelta(days=1)).date()

PRESETS: dict[str, SynthSpec] = {
    "tiny": SynthSpec(n_users=400, n_items=150, n_topics=6, events_per_user=30, days=40),
    "default": SynthSpec(),
    "s": SynthSpec(n_users=5_000, n_items=2_000, events_per_user=20),
    "m": SynthSpec(n_users=100_000, n_items=20_000, n_topics=40, events_per_user=50),
    "l": SynthSpec(n_users=140_000, n_items=27_000, n_topics=50, events_per_user=143),
    # ~3x l's events (60M landed, ~48M in the window): the scaling table's largest preset, sized
    # so the nightly run fits a 24 GB machine (issue 21)
    "xl": SynthSpec(n_users=300_000, n_items=50_000, n_topics=60, events_per_user=200),
}


def _sample_by_rows(rng: np.random.Generator, cum: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each entry of ``rows`` draw a column index from that row's cumulative distribution.

    ``cum`` is (R, C) with rows ending at 1. Offsetting row r by r makes the flattened array
    globally sorted, so one searchsorted answers every draw.
    """
    n_rows, n_cols = cum.shape
    flat = (cum + np.arange(n_rows)[:, None]).ravel()
    u = rng.random(len(rows)) * 0.999999 + rows
    idx = np.searchsorted(flat, u, side="right")
    return np.minimum(idx - rows * n_cols, n_cols - 1)


def _id_column(prefix: str, n: int, codes: np.ndarray) -> pd.Series:
    """``prefix + str(code)`` per row as a ``str`` column: the ``n`` distinct ids are formatted
    once and gathered (formatting every row as a numpy unicode array took ~10 GB at preset xl)."""
    return pd.Series(pd.array(np.char.add(prefix, np.arange(n).astype(str)), dtype="str").take(codes))


def generate(spec: SynthSpec) -> pd.DataFrame:
    """Generate the interactions: user_id, item_id (strings), event_ts (UTC), event_type."""
    return generate_with_segments(spec)[0]


def generate_with_segments(spec: SynthSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The interactions and a user attribute table (user_id, segment).

    A user's segment is their dominant taste topic folded onto ``n_segments`` values, with
    20% of users assigned at random: segment popularity is informative but imperfect, as a
    region or a sign-up channel is in real data.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(spec.seed)
    end = spec.resolved_end()
    period_end = pd.Timestamp(end, tz="UTC") + pd.Timedelta(days=1)
    period_start = period_end - pd.Timedelta(days=spec.days)
    span_s = spec.days * 86400

    # items: topic, popularity rank inside the topic, release time
    item_topic = rng.integers(0, spec.n_topics, spec.n_items)
    pop = 1.0 / np.power(rng.permutation(spec.n_items) + 1.0, spec.zipf_a)
    item_release = np.where(
        rng.random(spec.n_items) < spec.new_item_share, rng.uniform(0.3, 0.9, spec.n_items), 0.0
    )
    # per-topic cumulative popularity (items of other topics get zero mass)
    topic_mass = np.zeros((spec.n_topics, spec.n_items))
    topic_mass[item_topic, np.arange(spec.n_items)] = pop
    topic_mass /= np.maximum(topic_mass.sum(axis=1, keepdims=True), 1e-12)
    topic_cum = np.cumsum(topic_mass, axis=1)
    global_cum = np.cumsum(pop / pop.sum())

    # users: taste mixture, activity, join time
    taste = rng.dirichlet(np.full(spec.n_topics, spec.taste_concentration), spec.n_users)
    taste_cum = np.cumsum(taste, axis=1)
    activity = rng.lognormal(0.0, 0.8, spec.n_users)
    activity *= spec.events_per_user / activity.mean()
    n_events = np.maximum(rng.poisson(activity), 1)
    user_join = np.where(
        rng.random(spec.n_users) < spec.new_user_share, rng.uniform(0.5, 0.95, spec.n_users), 0.0
    )

    users = np.repeat(np.arange(spec.n_users), n_events)
    topics = _sample_by_rows(rng, taste_cum, users)
    items = _sample_by_rows(rng, topic_cum, topics)
    noisy = rng.random(len(users)) < spec.noise
    items[noisy] = np.minimum(
        np.searchsorted(global_cum, rng.random(int(noisy.sum())), side="right"), spec.n_items - 1
    )
    # time: uniform after the later of the user's join and the item's release
    start_frac = np.maximum(user_join[users], item_release[items])
    frac = start_frac + (1.0 - start_frac) * rng.random(len(users))
    offsets = np.minimum((frac * span_s).astype(np.int64), span_s - 1)
    ts = period_start + pd.to_timedelta(offsets, unit="s")
    etype = np.searchsorted(np.cumsum(EVENT_PROBS), rng.random(len(users)), side="right")

    df = pd.DataFrame(
        {
            "user_id": _id_column("u", spec.n_users, users),
            "item_id": _id_column("i", spec.n_items, items),
            "event_ts": ts.astype("datetime64[us, UTC]"),
            "event_type": pd.Series(pd.array(EVENT_TYPES, dtype="str").take(etype)),
        }
    )
    if spec.duplicate_share > 0:
        dup = df.sample(frac=spec.duplicate_share, random_state=spec.seed)
        df = pd.concat([df, dup], ignore_index=True)
    df = df.sort_values("event_ts", kind="stable", ignore_index=True)
    log.info(
        "generated %d events for %d users x %d items over %d days in %.2fs",
        len(df), spec.n_users, spec.n_items, spec.days, time.perf_counter() - t0,
    )
    seg_rng = np.random.default_rng(spec.seed + 1)
    seg = np.argmax(taste, axis=1) % max(spec.n_segments, 1)
    noisy_seg = seg_rng.random(spec.n_users) < 0.2
    seg[noisy_seg] = seg_rng.integers(0, max(spec.n_segments, 1), int(noisy_seg.sum()))
    segments = pd.DataFrame(
        {
            "user_id": pd.Series(np.char.add("u", np.arange(spec.n_users).astype(str)), dtype="str"),
            "segment": pd.Series(np.char.add("region-", seg.astype(str)), dtype="str"),
        }
    )
    return df, segments


def land_partitioned(df: pd.DataFrame, root: Path | str) -> list[Path]:
    """Write ``df`` as ``root/date=YYYY-MM-DD/part-0.parquet`` (replacing those partitions)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    day = df["event_ts"].dt.strftime("%Y-%m-%d")
    written: list[Path] = []
    for d, part in df.groupby(day, sort=True):
        folder = root / f"date={d}"
        folder.mkdir(exist_ok=True)
        tmp = folder / ".part-0.parquet.tmp"
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), tmp)
        tmp.replace(folder / "part-0.parquet")
        written.append(folder / "part-0.parquet")
    return written


def ensure_default_data(root: Path | str, spec: SynthSpec | None = None) -> dict:
    """Generate and land the default data set unless ``root`` already holds partitions.

    Returns a description (spec, number of partitions, first and last day). Idempotent.
    """
    import json

    root = Path(root)
    marker = root / "_synth.json"
    parts = sorted(root.glob("date=*/part-0.parquet")) if root.exists() else []
    if parts:
        info = json.loads(marker.read_text()) if marker.exists() else {}
        info.update(
            partitions=len(parts),
            first_day=parts[0].parent.name[5:],
            last_day=parts[-1].parent.name[5:],
        )
        return info
    spec = spec or SynthSpec()
    df, segments = generate_with_segments(spec)
    written = land_partitioned(df, root)
    if spec.n_segments > 0:  # the user attribute table, beside the interactions
        segments.to_parquet(root.parent / "user_segments.parquet", index=False)
    info = {
        "spec": {**asdict(spec), "end_date": spec.resolved_end().isoformat()},
        "rows": len(df),
        "partitions": len(written),
        "first_day": written[0].parent.name[5:],
        "last_day": written[-1].parent.name[5:],
    }
    marker.write_text(json.dumps(info, indent=2))
    log.info("landed %d rows in %d partitions under %s", len(df), len(written), root)
    return info
