# syntax=docker/dockerfile:1
# Herald container image.
#   docker build -t herald:dev .
#   docker run --rm -p 8080:8080 -e HERALD_JWT_SECRET=... -e HERALD_API_KEY=... herald:dev
# (Bound to 0.0.0.0, herald refuses to start without a JWT key: PROTOCOL.md section 7.)

# --- build ------------------------------------------------------------------
FROM rust:1-bookworm AS chef
# cargo-chef reduces the workspace to its manifests (a "recipe"), so the dependency
# build below is a layer that changes only when Cargo.toml / Cargo.lock change, not on
# every source edit. It stubs every target (benches, tests, the proto member) itself,
# which a hand-written "copy Cargo.toml + fake main.rs" step would have to track.
RUN cargo install cargo-chef --locked --version 0.1.77
WORKDIR /build

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /build/recipe.json recipe.json
# Dependency-caching layer.
RUN cargo chef cook --release --recipe-path recipe.json --bin herald
COPY . .
RUN cargo build --release --locked --bin herald \
 && install -D -m 0755 target/release/herald /out/herald

# --- runtime ----------------------------------------------------------------
# debian-slim rather than distroless: the Kubernetes preStop hook runs /bin/sleep
# (k8s/base/deployment.yaml), and herald has no sleep subcommand of its own.
FROM debian:bookworm-slim
# ca-certificates: rustls-native-certs reads the system store for tls:// NATS URLs.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /out/herald /usr/local/bin/herald
# Numeric uid:gid so Kubernetes' runAsNonRoot can verify it without an /etc/passwd
# entry. herald writes nothing to disk, so the root filesystem can be read-only.
USER 10001:10001
ENV HERALD_LISTEN=0.0.0.0:8080 \
    HERALD_LOG_FORMAT=json
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/herald"]
CMD ["serve"]
