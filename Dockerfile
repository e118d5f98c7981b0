# syntax=docker/dockerfile:1
# The whole service in one image: TorchServe (Java 17) and the feedback service,
# with the demo model trained and archived at build time so that it serves at once.
# How to build and run it: README.md, "Running in a container".

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY finetune finetune
COPY serving serving
COPY handlers handlers
RUN python -m venv /opt/abn \
    && /opt/abn/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/abn/bin/pip install --no-cache-dir .
ENV PATH=/opt/abn/bin:$PATH
WORKDIR /var/lib/abn
RUN abn train --out runs/demo \
    && abn package runs/demo/checkpoint.pt --model-store runs/model_store \
    && mkdir -p runs/feedback

FROM python:3.11-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/abn abn
COPY --from=build /opt/abn /opt/abn
COPY --from=build --chown=abn:abn /var/lib/abn /var/lib/abn
ENV PATH=/opt/abn/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ABN_FEEDBACK_STORE=runs/feedback/feedback.db
USER abn
WORKDIR /var/lib/abn
# gRPC inference, gRPC management, feedback, the attention editor (HTTP, its metrics too), the feedback service's
# Prometheus metrics, TorchServe's
EXPOSE 7070 7071 7072 7073 7074 8082
VOLUME ["/var/lib/abn/runs/model_store", "/var/lib/abn/runs/feedback"]
# tini as PID 1: it forwards `docker stop`'s SIGTERM and reaps what TorchServe's workers leave behind
ENTRYPOINT ["/usr/bin/tini", "--"]
HEALTHCHECK --interval=30s --timeout=20s --start-period=120s --retries=3 \
    CMD ["abn", "health", "--model", "abn"]
CMD ["abn", "up", "--token-file", "runs/feedback/token"]
