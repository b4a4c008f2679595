# A Redis image without a registry (scripts/kind-up.sh): Debian's redis-server and redis-cli on the
# local debootstrap base (scripts/images.sh --base-only). The chart runs `redis-server` as uid 999
# with a read-only root and /data mounted, and probes with `sh -c "redis-cli ping"`.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
# No service may start inside a build (the package's postinst would try).
RUN printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d \
 && apt-get -o Acquire::Retries=2 -o Acquire::http::Timeout=20 update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/log/*.log /etc/redis/redis.conf \
 && redis-server --version && redis-cli --version
USER 999:999
WORKDIR /data
CMD ["redis-server"]
