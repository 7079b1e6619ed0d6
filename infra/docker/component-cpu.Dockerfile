# syntax=docker/dockerfile:1
# genexflow pipeline-component image, CPU. Build from the repository root:
#   docker build -f infra/docker/component-cpu.Dockerfile -t ghcr.io/genexflow/genexflow:0.1.0-cpu .
# Stage 1 builds a virtualenv of the dependencies (no compiler needed: every pinned dependency ships a
# wheel or is pure Python) and the genexflow wheel; stage 2 copies that venv onto a clean base, installs the
# wheel into it and runs as an unprivileged user.
# Base pinned by exact tag (patch release + Debian release); pin by digest in a mirrored registry.

# BASE_IMAGE: the public image by default; `make images` passes a local Debian bookworm + python3.11 base
# built with mmdebstrap (no registry is needed; docs/infra.md, "Building the images here").
ARG BASE_IMAGE=python:3.11.7-slim-bookworm
# checkov:skip=CKV_DOCKER_7: the base is this build argument; its default is pinned (test_infra_docker.py)

# The dependency list alone (pyproject.toml also holds tool settings that change often): the layers that
# install the dependencies are rebuilt only when this list or constraints.txt changes.
FROM ${BASE_IMAGE} AS requirements
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
        > requirements.txt

FROM ${BASE_IMAGE} AS build
# Optional pip sources (a mirror, local wheel folders and a proxy's CA bundle, mounted read-only by the
# build); unset by default, so pip uses PyPI. RUN steps see build arguments as environment variables.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# CPU torch first, from the CPU wheel index: a bare torch requirement would pull the CUDA build. Pinned
# here (= constraints.txt's pin) so that this ~1 GB layer does not depend on the other pins.
RUN pip install --no-cache-dir --only-binary=:all: --index-url "${TORCH_INDEX_URL}" "torch==2.13.0+cpu"
COPY constraints.txt ./
# The dependencies (pinned by constraints.txt) before the code, in their own layers: a code change rebuilds
# only the small genexflow wheel, not the ~2 GB of dependencies.
COPY --from=requirements /src/requirements.txt ./
RUN pip install --no-cache-dir -c constraints.txt -r requirements.txt
COPY pyproject.toml setup.py README.md ./
COPY src ./src
COPY cli ./cli
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
COPY monitoring ./monitoring
RUN pip wheel --no-cache-dir --no-deps -w /wheels -c constraints.txt .

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="genexflow (CPU)" \
      org.opencontainers.image.description="genexflow library, CLI and KFP components, CPU torch" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/genexflow \
    MPLCONFIGDIR=/tmp/matplotlib \
    GENEXFLOW_HOME=/tmp/genexflow \
    GIT_PYTHON_REFRESH=quiet
RUN groupadd --system --gid 10001 genexflow \
    && useradd --system --uid 10001 --gid genexflow --create-home --home-dir /home/genexflow genexflow
COPY --from=build --chown=root:root /opt/venv /opt/venv
# genexflow itself on top of the unchanged dependency layer. The wheel is COPYed, not bind-mounted: a COPY's
# cache key is the copied content, while buildah keys a RUN --mount=from=build step on its text alone, so a
# code change kept the previous build's genexflow in the image (tests/test_infra_images.py caught it).
COPY --from=build /wheels/ /tmp/wheels/
RUN pip install --no-cache-dir --no-deps --no-index /tmp/wheels/genexflow-*.whl \
    && rm -rf /tmp/wheels \
    && python -c "import genexflow, genexflow.components, genexflow.serving"
WORKDIR /home/genexflow
USER 10001:10001
# A batch/pipeline image: nothing listens, so the health check only proves the package imports.
HEALTHCHECK --interval=60s --timeout=20s --retries=3 CMD ["python", "-c", "import genexflow"]
ENTRYPOINT ["genexflow"]
CMD ["--help"]
