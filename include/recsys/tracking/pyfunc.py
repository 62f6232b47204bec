"""MLflow "models from code" definition of the recommender (no pickled Python objects).

The model's artifact ``bundle`` is a :class:`~include.recsys.scoring.bundle.ModelBundle` folder:
factors (ALS) or the item x item matrix and training rows (item-kNN, EASE: ``kind`` in its
``bundle.json``), the external user / item ids (index order), item popularity and the
seen-items matrix (every snapshot interaction of the model's users), as ``.npz``
(``allow_pickle=False``) and Parquet. Every family is served by the same ``recommend`` as the
batch table, so the registered model returns the table's lists. (The class keeps its historic
name ``ALSRecommenderModel``: registered versions refer to this file, not to the name.)
``predict`` takes a DataFrame with a ``user_id`` column (external ids; a list or Series works too) and the param ``n`` (default: the pipeline's ``top_n``); it returns one row
per (user, rank): user_id, rank (1..n), item_id, score, source ("model", or "fallback" for
users the model does not know: items by training popularity). Seen items are never returned.

Loading any MLflow model executes code (this file and the logged ``include`` package): load
only from this project's registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

if TYPE_CHECKING:
    import scipy.sparse as sp

    from include.recsys.scoring.bundle import ModelBundle


def _as_ids(model_input, like: pd.Index) -> pd.Index:
    """The requested user ids, de-duplicated in request order, cast to the bundle's id type."""
    if isinstance(model_input, pd.DataFrame):
        values = model_input["user_id"] if "user_id" in model_input else model_input.iloc[:, 0]
    else:
        values = pd.Series(list(model_input) if not isinstance(model_input, pd.Series) else model_input)
    users = pd.Index(pd.unique(values))
    if pd.api.types.is_integer_dtype(like.dtype) and not pd.api.types.is_integer_dtype(users.dtype):
        as_int = pd.to_numeric(users, errors="coerce")
        if not pd.isna(as_int).any():
            users = pd.Index(as_int.astype(like.dtype))
    elif not pd.api.types.is_integer_dtype(like.dtype) and pd.api.types.is_integer_dtype(users.dtype):
        users = users.astype(str)
    return users


def _seen_rows(bundle: ModelBundle, users: pd.Index) -> sp.csr_matrix:
    """The bundle's seen matrix restricted to ``users``, one row per requested user in request
    order (empty for users the model does not know): what ``recommend`` would build from
    ``bundle.seen_pairs(users)``, without turning the pairs into string ids and back."""
    import numpy as np
    import scipy.sparse as sp

    shape = (len(users), len(bundle.item_ids))
    if bundle.seen is None:
        return sp.csr_matrix(shape, dtype=np.float32)
    uidx = bundle.user_ids.get_indexer(users)
    known = uidx >= 0
    sub = bundle.seen[uidx[known]]  # the known users' rows, in request order
    counts = np.zeros(len(users), dtype=np.int64)
    counts[known] = np.diff(sub.indptr)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    return sp.csr_matrix((sub.data, sub.indices, indptr), shape=shape)


class ALSRecommenderModel(PythonModel):
    def load_context(self, context) -> None:
        from include.recsys.scoring.bundle import ModelBundle

        self.bundle = ModelBundle.load(context.artifacts["bundle"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from include.recsys.scoring.recommend import recommend

        n = int((params or {}).get("n", 10))
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        users = _as_ids(model_input, self.bundle.user_ids)
        recs = recommend(self.bundle, users, _seen_rows(self.bundle, users), n)
        return recs.to_frame(self.bundle)

mlflow.models.set_model(ALSRecommenderModel())
