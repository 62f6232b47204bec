"""The Spark backend on a real multi-process cluster (issue 20): ``local-cluster[2,1,1024]`` starts
a standalone master and two worker JVMs, each executor with its own Python workers, so the
training pairs, the scoring rows and the broadcast item factors are serialized and shuffled
between processes (and the ``include`` package is shipped to the executors as a zip), not only
passed between threads as in ``local[n]``. The application runs in its own process (as
spark-submit would run it); its executors' folders (``<SPARK_HOME>/work/<app id>``, where
local-cluster workers put them) are removed afterwards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from include.recsys.config.settings import PROJECT_ROOT


def test_fit_and_score_on_a_local_cluster(tmp_path) -> None:
    out = tmp_path / "result.json"
    from pyspark.find_spark_home import _find_spark_home

    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.integration.spark_cluster_app", "local-cluster[2,1,1024]", str(out)],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["master"] == "local-cluster[2,1,1024]" and result["executors"] == 2, result
    assert result["items_equal"] and result["scores_equal"], result
    assert result["seen_recommended"] == 0 and result["fallback_rows"] == 1, result
    app = os.path.join(_find_spark_home(), "work", result["app_id"])
    try:  # one folder per executor process, each with the executor's own log
        assert sorted(os.listdir(app)) == ["0", "1"], os.listdir(app)
        assert "CoarseGrainedExecutorBackend" in open(os.path.join(app, "0", "stderr")).read()
    finally:
        shutil.rmtree(app, ignore_errors=True)
