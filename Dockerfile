# syntax=docker/dockerfile:1
# gpu-queue: one image for the webhook, queue controller, API and the `gpu-queue` CLI.
#
#   docker build -t gpu-queue:dev .
#   docker run --rm --read-only -p 8443:8443 -v "$PWD/dev-certs:/etc/gpu-queue/tls:ro" gpu-queue:dev
#
# The builder stage builds wheels for the package and every dependency (a compiler would live here
# only, should a dependency ever lack a binary wheel) and installs them into a venv; the final
# image copies only that venv, so it carries no compiler, no pip cache and no source tree.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Dependencies first, so a code change does not rebuild them: pyproject.toml alone resolves them.
COPY pyproject.toml setup.py README.md ./
RUN mkdir webhook && touch webhook/__init__.py \
 && pip wheel --wheel-dir /wheels . \
 && rm -rf /wheels/gpu_queue-*.whl webhook build ./*.egg-info
COPY webhook ./webhook
# The venv gets no pip of its own: the builder's pip installs into it, offline, from the wheels.
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/gpu-queue \
 && pip --python /opt/gpu-queue/bin/python install --no-index --find-links=/wheels gpu-queue \
 && /opt/gpu-queue/bin/gpu-queue --help >/dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="gpu-queue" \
      org.opencontainers.image.description="Queue-aware admission webhook for JupyterHub GPU pods" \
      org.opencontainers.image.licenses="BSD-3-Clause"
# A fixed numeric user: runAsNonRoot can check it, and a passwd entry keeps getpass/expanduser sane.
RUN groupadd --system --gid 10001 gpu-queue \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin gpu-queue
COPY --from=builder /opt/gpu-queue /opt/gpu-queue
# Bytecode was compiled at install time and nothing is written at run time, so the root filesystem
# can be read-only (mount an emptyDir at /tmp should a library ever want a temp dir).
ENV PATH=/opt/gpu-queue/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 10001:10001
# 8443: HTTPS (admission, API, health). 8080: plain HTTP /metrics, /healthz, /readyz.
EXPOSE 8443 8080
ENTRYPOINT ["gpu-queue"]
CMD ["serve"]
