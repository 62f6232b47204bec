"""Test-wide setup: the project root is importable, Airflow and MLflow never touch ~/."""

from __future__ import annotations

import atexit
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

# One BLAS kernel on every x86-64 machine: OpenBLAS (numpy's and scipy's, DYNAMIC_ARCH) picks
# its kernels by CPU, and AVX-512 kernels (SkylakeX, picked on AVX-512 Intel and AMD Zen 4 CPUs)
# sum in another order than the AVX2 ones: ALS factors then differ in the last bits and a few
# near-tied items swap places in the top-N, so tests/regression's pinned table would differ by
# machine (measured: 4.2% of item_id values on an AMD EPYC with AVX-512). The AVX2 (Haswell)
# kernels run on every x86-64 CPU the project supports; set before numpy is first imported.
if platform.machine() in ("x86_64", "AMD64"):
    os.environ.setdefault("OPENBLAS_CORETYPE", "Haswell")

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
