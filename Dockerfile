# syntax=docker/dockerfile:1
# The im-server binary in a small image: built in the official Rust image, run in Debian slim
# as an unprivileged user. Build: `docker build -t web-im .`; run:
# `docker run -p 8080:8080 -v im-data:/var/lib/im web-im`.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Only the server; the workspace's benches, fuzzers and xtask stay out of the image.
RUN cargo build --release --locked -p im-server \
 && install -D -m 0755 target/release/im-server /out/im-server

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/im --create-home im
COPY --from=build /out/im-server /usr/local/bin/im-server
USER im
WORKDIR /var/lib/im
ENV IM_LISTEN=0.0.0.0:8080 \
    IM_DATA_DIR=/var/lib/im
VOLUME ["/var/lib/im"]
EXPOSE 8080
# bash's /dev/tcp keeps curl out of the image.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/im-server"]
