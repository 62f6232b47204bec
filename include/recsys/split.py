"""Leak-free time-based holdout.

Everything strictly before ``cutoff = window.end - holdout_days`` trains; events at or after it
form the holdout. The relevant set of a user is the holdout items they had NOT interacted with
in training (seen items are filtered from every recommender, so they could never be hits).
Users with holdout events but no training events are cold users: counted, not scored here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
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
    is_train = (df["event_ts"] < cutoff).to_numpy()
    train = df.loc[is_train].reset_index(drop=True)
    if train.empty:
        raise ValueError(f"the split leaves no training events before the cutoff {cutoff}")
    later = df.loc[~is_train, ["user_id", "item_id", "event_ts"]]
    # (user, item) pairs as integer keys (one hash pass over the strings, not MultiIndexes);
    # +1 so a missing id (code -1) gets its own key
    u_codes, users = pd.factorize(df["user_id"])
    i_codes, items = pd.factorize(df["item_id"])
    keys = (u_codes.astype(np.int64) + 1) * (len(items) + 1) + (i_codes + 1)
    later_keys = pd.Series(keys[~is_train])
    # first time each (user, item) pair shows up after the cutoff, minus pairs seen in training
    new = ~later_keys.duplicated().to_numpy() & ~later_keys.isin(keys[is_train]).to_numpy()
    holdout = later.loc[new].reset_index(drop=True)
    in_train = np.bincount(u_codes[is_train] + 1, minlength=len(users) + 1) > 0
    hold_users = np.unique(u_codes[~is_train][new])
    warm = int(in_train[hold_users + 1].sum())
    hold_users = pd.Index(hold_users)
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
