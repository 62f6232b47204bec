# The project's Airflow image: the official apache/airflow image (pinned) plus requirements.txt,
# resolved against the project's lock (constraints.txt), plus the DAGs and the library.
# Used by docker-compose.yaml (dev binds dags/, plugins/ and include/ over the copies) and by
# Kubernetes (the official Helm chart runs this image unchanged). Nothing secret is copied:
# keys and passwords come from the environment (.env / Kubernetes secrets) at run time.
FROM apache/airflow:3.3.2-python3.11

# the commit the image was built from, tagged on every MLflow run as code_version
# (docker compose build --build-arg RECSYS_CODE_VERSION=$(git rev-parse HEAD))
ARG RECSYS_CODE_VERSION=unknown
ENV PYTHONPATH=/opt/airflow \
    RECSYS_CODE_VERSION=${RECSYS_CODE_VERSION} \
    RECSYS_DATA_DIR=/opt/airflow/data \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    GX_ANALYTICS_ENABLED=false \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# backend=spark: a Java runtime for pyspark (the default JRE: 17 on bookworm, 21 on trixie; Spark
# 4.2 runs on both) and an optimized BLAS for MLlib's ALS (else it falls back to Java BLAS)
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends default-jre-headless libopenblas0 \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
ENV JAVA_HOME=/usr/lib/jvm/default-java

USER airflow
COPY --chown=airflow:0 requirements.txt constraints.txt /opt/airflow/project/
# apache-airflow is pinned again so that pip can never swap the image's Airflow for another one
RUN pip install --no-cache-dir "apache-airflow==3.3.2" \
        -r /opt/airflow/project/requirements.txt -c /opt/airflow/project/constraints.txt

COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/
COPY --chown=airflow:0 include/ /opt/airflow/include/
# numba's on-disk cache of the scoring kernels, so no task compiles them (~8 s) on a new image
RUN cd /opt/airflow && python -c "from include.recsys.scoring.topk import warm_up; warm_up()"

# Mount points of the shared data volume and the MLflow artifact volume: a new named volume
# takes this ownership, so the airflow user (uid 50000, gid 0) can write to it.
USER root
RUN mkdir -p /opt/airflow/data /opt/mlflow/artifacts \
    && chown -R airflow:0 /opt/airflow/data /opt/mlflow \
    && chmod -R g+rwX /opt/airflow/data /opt/mlflow
USER airflow
