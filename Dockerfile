# The opsfleet image: a release build in the Rust image, then only the binary, CA certificates
# and the fleet's config on a slim Debian, run as an unprivileged user.
#
#   docker build --build-arg CONFIG=fleet.toml -t opsfleet .
#
# CONFIG is a path inside the build context; the image holds it at /etc/opsfleet/fleet.toml,
# where the rendered ECS task definitions and the Kubernetes manifests point.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Only the binary: no tests, benches or load generator.
RUN cargo build --release --locked --bin opsfleet \
 && strip target/release/opsfleet

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/opsfleet /usr/local/bin/opsfleet
ARG CONFIG=examples/fleet.toml
COPY ${CONFIG} /etc/opsfleet/fleet.toml
USER 10001:10001
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/usr/local/bin/opsfleet", "healthcheck", "--address", "127.0.0.1:9090"]
ENTRYPOINT ["/usr/local/bin/opsfleet"]
CMD ["worker", "--config", "/etc/opsfleet/fleet.toml", "--metrics-addr", "0.0.0.0:9090"]
