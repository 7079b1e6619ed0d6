#!/usr/bin/env python3
"""Start the MLflow tracking server from environment variables (Kubernetes Secrets / ConfigMaps).

Backend store: MLFLOW_BACKEND_STORE_URI, or assembled from DB_USER, DB_PASSWORD (or DB_PASSWORD_FILE),
DB_HOST, DB_PORT, DB_NAME (password URL-quoted, driver pinned to psycopg2). Artifacts:
MLFLOW_ARTIFACTS_DESTINATION (e.g. s3://mlflow-artifacts; S3/MinIO credentials via AWS_* and
MLFLOW_S3_ENDPOINT_URL, read by boto3 from the environment).
"""

import os
import sys
from pathlib import Path
from urllib.parse import quote


def backend_uri() -> str:
    uri = os.environ.get("MLFLOW_BACKEND_STORE_URI")
    if uri:
        return uri
    password = os.environ.get("DB_PASSWORD")
    if password is None and os.environ.get("DB_PASSWORD_FILE"):
        password = Path(os.environ["DB_PASSWORD_FILE"]).read_text().strip()
    missing = [k for k in ("DB_USER", "DB_HOST", "DB_NAME") if not os.environ.get(k)]
    if missing or password is None:
        sys.exit("mlflow-entrypoint: set MLFLOW_BACKEND_STORE_URI or DB_USER/DB_PASSWORD/DB_HOST/DB_NAME "
                 f"(missing: {', '.join(missing + ([] if password is not None else ['DB_PASSWORD']))})")
    return (f"postgresql+psycopg2://{quote(os.environ['DB_USER'], safe='')}:{quote(password, safe='')}"
            f"@{os.environ['DB_HOST']}:{os.environ.get('DB_PORT', '5432')}/{os.environ['DB_NAME']}")


def main() -> None:
    artifacts = os.environ.get("MLFLOW_ARTIFACTS_DESTINATION")
    if not artifacts:
        sys.exit("mlflow-entrypoint: set MLFLOW_ARTIFACTS_DESTINATION (e.g. s3://mlflow-artifacts)")
    argv = ["mlflow", "server", "--backend-store-uri", backend_uri(), "--artifacts-destination", artifacts,
            "--serve-artifacts", "--host", os.environ.get("MLFLOW_HOST", "0.0.0.0"),  # nosec B104 - in-pod
            "--port", os.environ.get("MLFLOW_PORT", "5000"), "--workers", os.environ.get("MLFLOW_WORKERS", "2"),
            "--allowed-hosts", os.environ.get("MLFLOW_ALLOWED_HOSTS", "localhost,127.0.0.1,mlflow,mlflow.genexflow.svc,"
                                              "mlflow.genexflow.svc.cluster.local"),
            *sys.argv[1:]]
    os.execvp(argv[0], argv)  # nosec B606 B607 - fixed program, argv list


if __name__ == "__main__":
    main()
