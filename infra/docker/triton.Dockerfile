# syntax=docker/dockerfile:1
# Triton serving image: the official NGC tritonserver (24.10 = Triton 2.51.0, the same server version as
# the local nvidia-pytriton launcher) with the genexflow model-repository layout:
#   /models/<model>/config.pbtxt
#   /models/<model>/<version>/model.onnx        (platform onnxruntime_onnx, TensorRT EP on GPU)
# In Kubernetes the repository is a volume mounted over /models; for a self-contained image, build with
#   docker build -f infra/docker/triton.Dockerfile --build-arg MODEL_REPOSITORY=<dir> -t <image> .
# (the default bakes in the empty layout under infra/docker/triton/models).
FROM nvcr.io/nvidia/tritonserver:24.10-py3
ARG MODEL_REPOSITORY=infra/docker/triton/models
LABEL org.opencontainers.image.title="genexflow Triton server" \
      org.opencontainers.image.licenses="Apache-2.0"
# triton-server (uid 1000) is the unprivileged user the NGC image ships.
COPY --chown=1000:1000 ${MODEL_REPOSITORY} /models
USER 1000:1000
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]
# Explicit model control: models are loaded by name (the deploy step calls the repository API), so a half-
# copied version directory is never picked up by a poll.
ENTRYPOINT ["tritonserver", "--model-repository=/models", "--model-control-mode=explicit", \
            "--load-model=*", "--strict-readiness=true", "--exit-timeout-secs=30"]
