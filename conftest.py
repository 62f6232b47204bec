"""Test-wide setup: the project root is importable, Airflow and MLflow never touch ~/."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

_tmp = Path(tempfile.mkdtemp(prefix="recsys-tests-"))
atexit.register(shutil.rmtree, _tmp, ignore_errors=True)
os.environ.setdefault("AIRFLOW_HOME", str(_tmp / "airflow"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
os.environ.setdefault("RECSYS_DATA_DIR", str(_tmp / "data"))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# tests use the local SQLite registry under RECSYS_DATA_DIR, never a developer's real server
for _var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RECSYS_MLFLOW_TRACKING_URI"):
    os.environ.pop(_var, None)
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
