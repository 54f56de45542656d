# creditd container image: built with the Rust toolchain, run on Debian slim
# as a non-root user. How to run it, and what was verified: docs/OPERATIONS.md,
# "Container"; scripts/check-container-recipe runs this recipe's build command,
# ENV, USER, ENTRYPOINT, CMD and HEALTHCHECK without a container runtime.
#
#   docker build -t creditd .
#   docker run -d --name creditd --stop-timeout 30 \
#     -v /srv/creditd/etc:/etc/creditd:ro -v creditd-data:/data \
#     -p 6479:6479 -p 6480:6480 creditd
#
# The image listens on 0.0.0.0, and creditd refuses to listen beyond loopback
# without [[tokens]] in its config: mount a directory holding a creditd.toml
# with tokens over /etc/creditd. The example config baked in has none, so the
# image alone stops at start with that reason; `-e CREDITD_INSECURE=1` is the
# explicit way to try it without tokens.

# Build and runtime stages share the Debian release (bookworm), so the binary
# links against the same glibc it runs with.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p creditd

FROM debian:bookworm-slim
# A fixed numeric uid, so that the owner of a bind-mounted data dir can be
# set on the host (chown 10001:10001) and Kubernetes' runAsNonRoot can
# verify the USER below.
RUN groupadd --gid 10001 creditd \
 && useradd --no-log-init --uid 10001 --gid creditd --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin creditd \
 && mkdir -p /data /etc/creditd \
 && chown creditd:creditd /data
COPY --from=build /src/target/release/creditd /usr/local/bin/creditd
COPY docs/examples/creditd.toml /etc/creditd/creditd.toml
# Settings as CREDITD_* variables rather than flags, so that `docker run -e`
# can change each one (a flag would win over its variable).
ENV CREDITD_CONFIG=/etc/creditd/creditd.toml \
    CREDITD_DATA_DIR=/data \
    CREDITD_LISTEN=0.0.0.0:6479 \
    CREDITD_HTTP=0.0.0.0:6480
USER 10001:10001
WORKDIR /data
VOLUME /data
EXPOSE 6479 6480
# SIGTERM: /readyz goes 503, accepting stops, connections drain for up to
# CREDITD_SHUTDOWN_GRACE_S (10 s), the journal is flushed, exit 0. Give the
# runtime a longer stop timeout than that (docker stop -t 30). SIGHUP
# (docker kill -s HUP) reloads the config, as CONFIG RELOAD does.
STOPSIGNAL SIGTERM
# GET /healthz with bash alone (the slim image has no curl), on the port of
# CREDITD_HTTP. Kubernetes ignores HEALTHCHECK: use its httpGet probes.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${CREDITD_HTTP##*:} && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && read -r status <&3 && [[ $status == HTTP/1.?' 200 '* ]]"]
ENTRYPOINT ["/usr/local/bin/creditd"]
CMD []
