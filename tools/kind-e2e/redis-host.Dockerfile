# Fallback for tools/kind-e2e/redis.Dockerfile when no Debian mirror answers inside a build:
# the same Debian package (redis-server / redis-tools, bookworm) as installed on this Debian host,
# copied in by scripts/kind-up.sh (binaries plus the shared libraries the base lacks).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY bin/ /usr/bin/
COPY libs/ /tmp/redis-libs/
RUN set -e; for f in /tmp/redis-libs/*; do \
      n=$(basename "$f"); [ -e "/usr/lib/x86_64-linux-gnu/$n" ] || cp -a "$f" /usr/lib/x86_64-linux-gnu/; \
    done; rm -rf /tmp/redis-libs; ldconfig \
 && ln -sf redis-check-rdb /usr/bin/redis-server \
 && redis-server --version && redis-cli --version
USER 999:999
WORKDIR /data
CMD ["redis-server"]
