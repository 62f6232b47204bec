"""Leak-free time-based holdout.

Everything strictly before ``cutoff = window.end - holdout_days`` trains; events at or after it
form the holdout. The relevant set of a user is the holdout items they had NOT interacted with
in training (seen items are filtered from every recommender, so they could never be hits).
Users with holdout events but no training events are cold users: counted, not scored here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

log = logging.getLogger(__name__)


@dataclass
class SplitStats:
    cutoff: str
    train_rows: int
    holdout_rows: int
    holdout_pairs_new: int
    holdout_users_warm: int
    holdout_users_cold: int


def time_split(df: pd.DataFrame, cutoff: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame, SplitStats]:
    """Return (train, holdout, stats); holdout keeps one row per new (user, item) pair."""
    is_train = df["event_ts"] < cutoff
    train = df.loc[is_train].reset_index(drop=True)
    later = df.loc[~is_train, ["user_id", "item_id", "event_ts"]]
    if train.empty:
        raise ValueError(f"the split leaves no training events before the cutoff {cutoff}")
    # first time each (user, item) pair shows up after the cutoff, minus pairs seen in training
    later = later.drop_duplicates(["user_id", "item_id"], keep="first")
    seen = pd.MultiIndex.from_frame(train[["user_id", "item_id"]].drop_duplicates())
    pairs = pd.MultiIndex.from_frame(later[["user_id", "item_id"]])
    holdout = later.loc[~pairs.isin(seen)].reset_index(drop=True)
    train_users = pd.Index(train["user_id"].unique())
    hold_users = pd.Index(holdout["user_id"].unique())
    warm = int(hold_users.isin(train_users).sum())
    stats = SplitStats(
        cutoff=cutoff.isoformat(),
        train_rows=len(train),
        holdout_rows=int((~is_train).sum()),
        holdout_pairs_new=len(holdout),
        holdout_users_warm=warm,
        holdout_users_cold=len(hold_users) - warm,
    )
    log.info(
        "split at %s: %d train rows, %d holdout rows -> %d new (user, item) pairs for %d warm "
        "users (%d cold users not scored)",
        cutoff, stats.train_rows, stats.holdout_rows, stats.holdout_pairs_new, warm,
        stats.holdout_users_cold,
    )
    return train, holdout, stats
