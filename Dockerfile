# keras-jobs image: API (default CMD) and Celery worker (`keras-jobs worker`) share this image.
# The TensorFlow build is the TF_EXTRA build argument, one of the project's extras:
#   gpu (default): tensorflow[and-cuda], several GB; also runs on hosts without a GPU (TF falls
#                  back to the CPU). GPU access needs the NVIDIA Container Toolkit, see
#                  docker-compose.gpu.yml.
#   cpu:           tensorflow-cpu, a much smaller image (docker-compose.yml builds this one).
#   docker build --build-arg TF_EXTRA=cpu -t keras-jobs:cpu .
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    KJ_HOME=/data

WORKDIR /opt/keras-jobs

# Non-root runtime user; /data (KJ_HOME, artifact volume) belongs to it. A named volume mounted on
# /data starts out with this ownership.
RUN groupadd --system --gid 10001 kj \
    && useradd --system --uid 10001 --gid kj --home-dir /home/kj --create-home \
        --shell /usr/sbin/nologin kj \
    && mkdir -p /data \
    && chown kj:kj /data

# 1) Dependencies only (TensorFlow + CUDA wheels are several GB): install the project from its
#    metadata with empty package stubs, then drop the stub. This layer is rebuilt only when
#    pyproject.toml / README.md change, not on every source edit.
COPY pyproject.toml README.md ./
ARG TF_EXTRA=gpu
# DL3013 (pin pip versions) does not apply: this installs the local project, whose dependency
# versions are pinned in pyproject.toml (TensorFlow exactly).
# An unknown extra would only be a pip warning, and an image without TensorFlow: refuse it.
# hadolint ignore=DL3013
RUN case "${TF_EXTRA}" in cpu|gpu) ;; \
        *) echo "TF_EXTRA must be cpu or gpu, not '${TF_EXTRA}'" >&2; exit 1 ;; esac \
    && mkdir -p app worker migrations keras_jobs \
    && touch app/__init__.py worker/__init__.py migrations/__init__.py keras_jobs/__init__.py \
    && pip install --no-cache-dir ".[${TF_EXTRA}]" \
    && pip uninstall --yes keras-jobs \
    && rm -rf app worker migrations keras_jobs build ./*.egg-info

# 2) The application itself; dependencies are already in place.
COPY app ./app
COPY keras_jobs ./keras_jobs
COPY worker ./worker
COPY migrations ./migrations
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info

# Numeric uid:gid (the kj user above) so that the host and runtimes can resolve it.
USER 10001:10001

EXPOSE 8000

# Liveness of the API process (GET /healthz). The worker service overrides this in compose.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# API only; workers run as their own containers (`keras-jobs worker`).
CMD ["keras-jobs", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-worker"]
