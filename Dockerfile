# The `parley` binary (every role; `parley edge|auth|chat|presence` runs one)
# on Debian bookworm. Used by docker-compose.yml; build alone with
#   docker build -t parley .
# The image is not built on the development machines (no Docker there):
# scripts/cluster runs the same processes locally.

# --- build ---------------------------------------------------------------------
# rust-version in Cargo.toml is 1.90; 1.95 is the toolchain the project is
# developed and tested with. The full (buildpack-deps) image has what
# rdkafka-sys needs to build librdkafka (a C compiler, make, zlib headers);
# protobuf code is generated with protox, so no protoc.
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts (BuildKit) keep the crate downloads and the target dir between
# builds; the binary is copied out of the cached target dir.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p parley-server --bin parley \
 && cp target/release/parley /usr/local/bin/parley

# --- run -----------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates for TLS to managed Kafka/Redis/MongoDB; curl for the
# healthchecks (GET /ready on edges); zlib1g is librdkafka's one shared
# library dependency.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/parley --create-home --shell /usr/sbin/nologin parley
COPY --from=builder /usr/local/bin/parley /usr/local/bin/parley
USER parley
WORKDIR /var/lib/parley
# In a container, listen on every interface (the defaults are 127.0.0.1).
# The embedded backends (when no KAFKA_BROKERS/REDIS_URL/MONGODB_URL is set)
# keep their files in PARLEY_DATA_DIR: mount a volume there to keep them.
ENV HOST=0.0.0.0 \
    PORT=8080 \
    PARLEY_DATA_DIR=/var/lib/parley
EXPOSE 8080 50051
ENTRYPOINT ["parley"]
