# The tender image used by deploy/daemonset.yaml and charts/tender.
#   docker build -t ghcr.io/tender-project/tender:0.1.0 .
# Static enough for distroless/cc: tender links only glibc (rustls with ring, no OpenSSL).
FROM rust:1.85-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tests ./tests
RUN cargo build --release --locked --bin tender \
 && strip target/release/tender

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/tender /usr/local/bin/tender
# The chart and manifest run it as uid 65532 (distroless "nonroot").
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tender"]
CMD ["serve", "--config", "/etc/tender/config.toml"]
