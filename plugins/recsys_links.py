"""Airflow UI links for the retraining project: the MLflow UI in the navigation bar.

The address comes from ``RECSYS_MLFLOW_UI_URL`` (default ``http://127.0.0.1:5000``, where
``make mlflow-ui`` serves it).
"""

from __future__ import annotations

import os

from airflow.plugins_manager import AirflowPlugin


class RecsysLinksPlugin(AirflowPlugin):
    name = "recsys_links"
    external_views = [
        {
            "name": "MLflow",
            "href": os.environ.get("RECSYS_MLFLOW_UI_URL", "http://127.0.0.1:5000"),
            "destination": "nav",
            "url_route": "mlflow",
        }
    ]
