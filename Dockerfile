# syntax=docker/dockerfile:1
# surgeguard image: built with the rust:1 toolchain, run on Debian 12 slim.
#   docker build -t surgeguard .
#   docker run --rm surgeguard check-config /etc/surgeguard/default.toml

# rust:1 on bookworm, so the binary links against the same glibc and OpenSSL as the runtime
# image below (plain rust:1 follows the newest Debian). librdkafka is built from rdkafka-sys's
# bundled source; the image already has gcc, make, pkg-config, libssl-dev and zlib.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin surgeguard \
    && install -D -m 0755 target/release/surgeguard /out/surgeguard

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin surgeguard
COPY --from=build /out/surgeguard /usr/local/bin/surgeguard
COPY pipelines/ /etc/surgeguard/
USER surgeguard
EXPOSE 8480
ENTRYPOINT ["surgeguard"]
# The API on the container's interfaces (publish it with -p 127.0.0.1:8480:8480).
CMD ["run", "--config", "/etc/surgeguard/default.toml", "--api-listen", "0.0.0.0:8480"]
