#!/bin/sh
# Start the MLflow tracking server from environment variables (set from Kubernetes Secrets/ConfigMaps).
# Nothing secret is passed on the command line of a long-running process except the backend URI, which
# MLflow only accepts as an argument; keep `ps` access on the node restricted accordingly.
set -eu
: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI (postgresql://user:pw@host:5432/mlflow)}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION (e.g. s3://mlflow-artifacts)}"
exec mlflow server \
    --backend-store-uri "${MLFLOW_BACKEND_STORE_URI}" \
    --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION}" \
    --serve-artifacts \
    --host "${MLFLOW_HOST:-0.0.0.0}" \
    --port "${MLFLOW_PORT:-5000}" \
    --workers "${MLFLOW_WORKERS:-2}" \
    --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-localhost,127.0.0.1,mlflow,mlflow.genexflow.svc,mlflow.genexflow.svc.cluster.local}" \
    "$@"
