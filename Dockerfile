# syntax=docker/dockerfile:1
# The gateway with the demo models: `docker build -t gauntlet . && docker run -p 8000:8000 -p 8001:8001 gauntlet`.
# Multi-stage: the build stage compiles and fetches ONNX Runtime from PyPI (build.rs); the runtime
# stage is debian-slim with the binary, the ONNX Runtime library and the models, run as non-root.

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-pip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src src
COPY benches benches
COPY examples examples
RUN cargo build --release --locked --bin gauntlet \
 && mkdir -p /out/bin /out/lib \
 && cp target/release/gauntlet /out/bin/ \
 && cp target/onnxruntime/libonnxruntime.so.* /out/lib/libonnxruntime.so

FROM debian:bookworm-slim
# CA certificates: the cluster store's TLS (`sslmode=require`) checks the server against them.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --no-create-home --uid 10001 gauntlet
WORKDIR /opt/gauntlet
# The binary finds ONNX Runtime at ../lib/libonnxruntime.so beside itself. Everything under
# /opt/gauntlet is root's and read-only to the gateway; it writes only under /var/lib/gauntlet (a
# volume in Kubernetes, where the root file system is read-only).
COPY --from=build /out/bin/gauntlet bin/gauntlet
COPY --from=build /out/lib/libonnxruntime.so lib/libonnxruntime.so
COPY models models
COPY gauntlet.toml gauntlet.toml
RUN install -d -o 10001 -g 10001 -m 0750 /var/lib/gauntlet /var/lib/gauntlet/state /var/lib/gauntlet/outcomes
USER 10001
ENV GAUNTLET_LISTEN=0.0.0.0:8000 GAUNTLET_GRPC_LISTEN=0.0.0.0:8001 GAUNTLET_LOG_FORMAT=json GAUNTLET_MODELS_DIR=/opt/gauntlet/models \
    GAUNTLET_STATE_DIR=/var/lib/gauntlet/state GAUNTLET_OUTCOMES__DIR=/var/lib/gauntlet/outcomes
EXPOSE 8000 8001
VOLUME /var/lib/gauntlet
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/gauntlet/bin/gauntlet"]
CMD ["serve", "--config", "/opt/gauntlet/gauntlet.toml"]
