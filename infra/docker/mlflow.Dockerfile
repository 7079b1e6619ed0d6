# syntax=docker/dockerfile:1
# MLflow tracking server: PostgreSQL backend store (psycopg2) and S3-compatible artifacts (boto3, MinIO in dev).
#   docker build -f infra/docker/mlflow.Dockerfile -t ghcr.io/genexflow/mlflow:3.17.2 .
# Credentials come from the environment at run time (Kubernetes Secrets): DB_* or MLFLOW_BACKEND_STORE_URI,
# AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, MLFLOW_S3_ENDPOINT_URL, MLFLOW_ARTIFACTS_DESTINATION.
# Base pinned by exact tag (patch release + Debian release); pin by digest in a mirrored registry.

# BASE_IMAGE: the public image by default; `make images` passes a local Debian bookworm + python3.11 base
# built with mmdebstrap (no registry is needed; docs/infra.md, "Building the images here").
ARG BASE_IMAGE=python:3.11.7-slim-bookworm
# checkov:skip=CKV_DOCKER_7: the base is this build argument; its default is pinned (test_infra_docker.py)

FROM ${BASE_IMAGE} AS build
# Optional pip sources (a mirror, local wheel folders and a proxy's CA bundle, mounted read-only by the
# build); unset by default, so pip uses PyPI. RUN steps see build arguments as environment variables.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY constraints.txt infra/docker/mlflow-requirements.txt ./
RUN pip install --no-cache-dir --only-binary=:all: -c constraints.txt -r mlflow-requirements.txt

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="genexflow MLflow tracking server" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/mlflow \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
RUN groupadd --system --gid 10001 mlflow \
    && useradd --system --uid 10001 --gid mlflow --create-home --home-dir /home/mlflow mlflow
COPY --from=build --chown=root:root /opt/venv /opt/venv
COPY --chown=root:root --chmod=0755 infra/docker/mlflow-entrypoint.py /usr/local/bin/mlflow-entrypoint
WORKDIR /home/mlflow
USER 10001:10001
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
ENTRYPOINT ["mlflow-entrypoint"]
