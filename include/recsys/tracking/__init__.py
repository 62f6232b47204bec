"""MLflow: runs, the model registry and its aliases, dataset lineage, the pyfunc flavor and
the tuning history."""
