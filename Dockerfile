# syntax=docker/dockerfile:1
# The gateway with the demo models: `docker build -t gauntlet . && docker run -p 8000:8000 gauntlet`.
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
RUN useradd --system --no-create-home --uid 10001 gauntlet
WORKDIR /opt/gauntlet
# The binary finds ONNX Runtime at ../lib/libonnxruntime.so beside itself.
COPY --from=build /out/bin/gauntlet bin/gauntlet
COPY --from=build /out/lib/libonnxruntime.so lib/libonnxruntime.so
COPY models models
COPY gauntlet.toml gauntlet.toml
USER 10001
ENV GAUNTLET_LISTEN=0.0.0.0:8000 GAUNTLET_LOG_FORMAT=json
EXPOSE 8000
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/gauntlet/bin/gauntlet"]
CMD ["serve", "--config", "/opt/gauntlet/gauntlet.toml"]
