# syntax=docker/dockerfile:1.7
# One image with the six service binaries and `trackunit`; each Deployment / compose service
# runs one of them (`command: ["/usr/local/bin/<service>"]`). Stages:
#   build   – compiles the workspace's binaries once (scripts/container-build.sh, the same
#             script CI runs without Docker, see docs/deployment.md)
#   models  – the offline engine's ONNX models and libonnxruntime.so from their PyPI wheels
#             (scripts/fetch-models.sh, pinned sha256)
#   runtime – debian-slim, CA certificates, Tesseract (the engine's fallback), non-root user
ARG RUST_VERSION=1.90

FROM rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang pkg-config python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    scripts/container-build.sh /out

FROM python:3.11-slim-bookworm AS models
COPY scripts/fetch-models.sh /usr/local/bin/fetch-models.sh
RUN TRACKUNIT_MODELS_DIR=/models bash /usr/local/bin/fetch-models.sh

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tesseract-ocr tesseract-ocr-eng \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 trackunit \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin trackunit \
 && mkdir -p /var/lib/trackunit && chown 10001:10001 /var/lib/trackunit
COPY --from=build /out/ /
COPY --from=models /models/ /opt/trackunit/models/
ENV LOG_FORMAT=json \
    HTTP_ADDR=0.0.0.0:8080 \
    TRACKUNIT_MODELS_DIR=/opt/trackunit/models \
    TRACKUNIT_DATA_DIR=/var/lib/trackunit
USER 10001:10001
WORKDIR /var/lib/trackunit
EXPOSE 8080
# Binaries (scripts/container-build.sh installs exactly these):
#   /usr/local/bin/graph-gateway
#   /usr/local/bin/tu-ingestion-service
#   /usr/local/bin/tu-media-access-service
#   /usr/local/bin/svc-messaging-bridge
#   /usr/local/bin/svc-analysis-orchestrator
#   /usr/local/bin/svc-ai-vision-adapter
#   /usr/local/bin/trackunit
ENTRYPOINT ["/usr/local/bin/trackunit"]
CMD ["up"]
