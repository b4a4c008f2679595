# The JupyterHub hub and proxy for the kind tier, without a registry (scripts/hub-images.sh): what
# zero-to-jupyterhub 4.x's k8s-hub image (JupyterHub, KubeSpawner, the idle culler) and its
# configurable-http-proxy image hold, in one image on the local Debian base
# (scripts/images.sh --base-only). Versions: tools/kind-hub/versions.env, as build arguments.
#
# The hub: `jupyterhub --config /usr/local/etc/jupyterhub/jupyterhub_config.py` (the default
# command, as in z2jh, under tini) as uid 1000 in /srv/jupyterhub (its sqlite database and cookie
# secret live there: mount a volume, or run with a writable root). The proxy: the same image with
# the command `configurable-http-proxy ...` (z2jh runs it as uid 65534; it writes nothing).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
ARG JUPYTERHUB_VERSION
ARG KUBESPAWNER_VERSION
ARG IDLE_CULLER_VERSION
ARG PYYAML_VERSION
ARG CHP_VERSION
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# Node.js from Debian; npm only for installing configurable-http-proxy into /usr/local, then purged
# with the node-* packages it pulled in. No service may start inside a build (policy-rc.d).
RUN for v in JUPYTERHUB_VERSION=$JUPYTERHUB_VERSION KUBESPAWNER_VERSION=$KUBESPAWNER_VERSION \
      IDLE_CULLER_VERSION=$IDLE_CULLER_VERSION PYYAML_VERSION=$PYYAML_VERSION CHP_VERSION=$CHP_VERSION; do \
      [ -n "${v#*=}" ] || { echo "build argument ${v%%=*} is empty (tools/kind-hub/versions.env)"; exit 1; }; \
    done \
 && printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d \
 && apt-get -o Acquire::Retries=2 -o Acquire::http::Timeout=20 update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm tini >/dev/null \
 && NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt npm install -g --no-fund --no-audit \
      --no-update-notifier --cache /tmp/npm-cache "configurable-http-proxy@${CHP_VERSION}" \
 && DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq --auto-remove npm >/dev/null \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/log/*.log /var/log/apt/* \
      /tmp/npm-cache /root/.npm /usr/sbin/policy-rc.d \
 && configurable-http-proxy --version
# The Python side in a venv without a pip of its own (the base's pip installs into it); bytecode is
# compiled at install time, so nothing is written under /opt/hub at run time.
RUN python -m venv --without-pip /opt/hub \
 && pip --python /opt/hub/bin/python install \
      "jupyterhub==${JUPYTERHUB_VERSION}" \
      "jupyterhub-kubespawner==${KUBESPAWNER_VERSION}" \
      "jupyterhub-idle-culler==${IDLE_CULLER_VERSION}" \
      "pyyaml==${PYYAML_VERSION}" \
 && pip --python /opt/hub/bin/python freeze --all >/opt/hub/requirements.lock \
 && rm -rf /root/.cache /tmp/*
# z2jh's hub runs as uid/gid 1000 (its securityContext), with /srv/jupyterhub as its working dir.
RUN groupadd --gid 1000 jupyterhub \
 && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /srv/jupyterhub --shell /usr/sbin/nologin jupyterhub \
 && mkdir -p /srv/jupyterhub /usr/local/etc/jupyterhub \
 && chown 1000:1000 /srv/jupyterhub
ENV PATH=/opt/hub/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/srv/jupyterhub \
    PYTHONUNBUFFERED=1
LABEL org.opencontainers.image.title="gpu-queue-hub" \
      org.opencontainers.image.description="JupyterHub ${JUPYTERHUB_VERSION}, KubeSpawner ${KUBESPAWNER_VERSION}, configurable-http-proxy ${CHP_VERSION} for the kind tier"
USER 1000:1000
WORKDIR /srv/jupyterhub
# 8081: the hub's API. 8000/8001: the proxy's public and API ports.
EXPOSE 8081 8000 8001
ENTRYPOINT ["tini", "--"]
CMD ["jupyterhub", "--config", "/usr/local/etc/jupyterhub/jupyterhub_config.py"]
