"""MLflow "models from code" definition of the ALS recommender (no pickled Python objects).

``predict`` takes a DataFrame with a ``user_id`` column (external ids) and the param ``n``;
it returns one row per (user, rank): user_id, rank, item_id, score, source. Users unknown to
the model get the popularity fallback; items the user interacted with in training are
filtered. Loading any MLflow model executes code: load only from this project's registry.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class ALSRecommenderModel(PythonModel):
    def load_context(self, context) -> None:
        from include.recsys.recommend import ModelBundle

        self.bundle = ModelBundle.load(context.artifacts["bundle"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from include.recsys.recommend import recommend

        n = int((params or {}).get("n", 10))
        users = pd.Index(pd.unique(model_input["user_id"]))
        recs = recommend(self.bundle, users, self.bundle.seen_pairs(users), n)
        return recs.to_frame(self.bundle)


mlflow.models.set_model(ALSRecommenderModel())
