# syntax=docker/dockerfile:1
# One image, every binary; the Kubernetes manifests choose one with `command`:
#   /usr/local/bin/rtc-gateway | rtc-balancer | rtc-socket | rtc-loadtest
#
# Builder: Rust plus what rdkafka (cmake, a C toolchain, zlib, libcurl headers) and Pingora need.
FROM rust:1.89-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libcurl4-openssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p rtc-gateway -p rtc-balancer -p rtc-socket -p rtc-loadtest \
 && mkdir -p /out \
 && cp target/release/rtc-gateway target/release/rtc-balancer target/release/rtc-socket \
       target/release/rtc-loadtest /out/

# Runtime: Debian slim (glibc, libgcc and zlib, which the binaries link: check with ldd); no
# shell is needed at run time, every entry point is the exec form.
FROM debian:bookworm-slim
COPY --from=builder /out/ /usr/local/bin/
# Non-root, numeric so that runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8080 8081 8090 9090
CMD ["/usr/local/bin/rtc-socket"]
