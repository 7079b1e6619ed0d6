# syntax=docker/dockerfile:1
# genexflow pipeline-component image, CPU. Build from the repository root:
#   docker build -f infra/docker/component-cpu.Dockerfile -t ghcr.io/genexflow/genexflow:0.1.0-cpu .
# Stage 1 builds a virtualenv from wheels only (no compiler needed: every pinned dependency ships a
# manylinux wheel); stage 2 copies that venv onto a clean base and runs as an unprivileged user.
# Base pinned by exact tag (patch release + Debian release); pin by digest in a mirrored registry.

FROM python:3.11.7-slim-bookworm AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY constraints.txt ./
# CPU torch first, from the CPU wheel index: a bare torch requirement would pull the CUDA build.
RUN pip install --no-cache-dir --only-binary=:all: --index-url "${TORCH_INDEX_URL}" "torch==2.13.0+cpu"
COPY pyproject.toml setup.py README.md ./
COPY src ./src
COPY cli ./cli
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
COPY monitoring ./monitoring
RUN pip install --no-cache-dir -c constraints.txt . \
    && python -c "import genexflow, genexflow.components, genexflow.serving"

FROM python:3.11.7-slim-bookworm
LABEL org.opencontainers.image.title="genexflow (CPU)" \
      org.opencontainers.image.description="genexflow library, CLI and KFP components, CPU torch" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/genexflow \
    MPLCONFIGDIR=/tmp/matplotlib \
    GENEXFLOW_HOME=/tmp/genexflow
RUN groupadd --system --gid 10001 genexflow \
    && useradd --system --uid 10001 --gid genexflow --create-home --home-dir /home/genexflow genexflow
COPY --from=build --chown=root:root /opt/venv /opt/venv
WORKDIR /home/genexflow
USER 10001:10001
# A batch/pipeline image: nothing listens, so the health check only proves the package imports.
HEALTHCHECK --interval=60s --timeout=20s --retries=3 CMD ["python", "-c", "import genexflow"]
ENTRYPOINT ["genexflow"]
CMD ["--help"]
