# syntax=docker/dockerfile:1
# Triton serving image for CPU nodes (and for checking the serving path where no GPU exists): the
# tritonserver 2.51 that the nvidia-pytriton wheel bundles, with its python backend only, set up exactly as
# the local launcher does (genexflow.serving.triton_server): the Python 3.11 backend stub copied into
# backends/python, the server venv first on PATH (model.py imports onnxruntime/numpy from it), the wheel's
# bundled libraries on LD_LIBRARY_PATH. Models use the "local" repository target (backend "python" +
# model.py running the ONNX graph with onnxruntime); the GPU image is triton.Dockerfile (NGC).
#   docker build -f infra/docker/triton-cpu.Dockerfile -t ghcr.io/genexflow/triton:0.1.0-cpu .
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
# nvidia-pytriton pins numpy<2: the server gets these exact pins, not the project's constraints.txt.
COPY serving/triton-constraints.txt ./constraints.txt
# The wheel keeps one backend stub per Python minor version apart; the backend needs the 3.11 one in
# backends/python (the others are dropped).
RUN pip install --no-cache-dir --only-binary=:all: -c constraints.txt nvidia-pytriton onnxruntime "numpy<2" \
    && ts=/opt/venv/lib/python3.11/site-packages/pytriton/tritonserver \
    && cp "$ts/python_backend_stubs/3.11/triton_python_backend_stub" "$ts/backends/python/" \
    && chmod 0755 "$ts/backends/python/triton_python_backend_stub" \
    && rm -rf "$ts/python_backend_stubs"

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="genexflow Triton server (CPU, python backend)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV TRITON_HOME=/opt/venv/lib/python3.11/site-packages/pytriton/tritonserver
ENV PATH=/opt/venv/bin:$TRITON_HOME/bin:$PATH \
    LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/nvidia_pytriton.libs \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/triton
RUN groupadd --system --gid 10001 triton \
    && useradd --system --uid 10001 --gid triton --create-home --home-dir /home/triton triton
COPY --from=build --chown=root:root /opt/venv /opt/venv
COPY --chown=10001:10001 infra/docker/triton/models /models
WORKDIR /home/triton
USER 10001:10001
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]
# Explicit model control (models load by name; a half-copied version is never picked up by a poll); no
# auto-complete (the python backend would start an extra stub per model); no CUDA pinned-memory pool.
ENTRYPOINT ["tritonserver", "--model-repository=/models", \
            "--backend-directory=/opt/venv/lib/python3.11/site-packages/pytriton/tritonserver/backends", \
            "--cache-directory=/opt/venv/lib/python3.11/site-packages/pytriton/tritonserver/caches", \
            "--model-control-mode=explicit", "--load-model=*", "--disable-auto-complete-config", \
            "--strict-readiness=true", "--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0", \
            "--exit-timeout-secs=30"]
