# syntax=docker/dockerfile:1
# genexflow pipeline-component image, CUDA (training, Triton-side steps on GPU nodes). Build from the root:
#   docker build -f infra/docker/component-cuda.Dockerfile -t ghcr.io/genexflow/genexflow:0.1.0-cuda .
# The CUDA user-space libraries (cuBLAS, cuDNN, NCCL, runtime) come as the pinned nvidia-* wheels that the
# CUDA torch wheel depends on; the driver comes from the node through the NVIDIA container toolkit, so the
# base stays the same slim Python as the CPU image (one interpreter build for both).
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
COPY constraints.txt ./
# constraints.txt pins the CPU build (torch==2.13.0+cpu): drop that one line, keep every other pin.
RUN grep -v '^torch==' constraints.txt > constraints-cuda.txt \
    && pip install --no-cache-dir --only-binary=:all: "torch==2.13.0"
COPY pyproject.toml setup.py README.md ./
COPY src ./src
COPY cli ./cli
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
COPY monitoring ./monitoring
RUN pip install --no-cache-dir -c constraints-cuda.txt . \
    && python -c "import genexflow, torch; assert torch.version.cuda, 'expected a CUDA torch build'"

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="genexflow (CUDA)" \
      org.opencontainers.image.description="genexflow library, CLI and KFP components, CUDA torch" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/genexflow \
    MPLCONFIGDIR=/tmp/matplotlib \
    GENEXFLOW_HOME=/tmp/genexflow \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN groupadd --system --gid 10001 genexflow \
    && useradd --system --uid 10001 --gid genexflow --create-home --home-dir /home/genexflow genexflow
COPY --from=build --chown=root:root /opt/venv /opt/venv
WORKDIR /home/genexflow
USER 10001:10001
HEALTHCHECK --interval=60s --timeout=20s --retries=3 CMD ["python", "-c", "import genexflow"]
ENTRYPOINT ["genexflow"]
CMD ["--help"]
