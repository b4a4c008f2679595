# A single-user server image for the kind tier, without a registry (scripts/hub-images.sh):
# JupyterLab and `jupyterhub-singleuser` (the JupyterHub version the hub runs) with an IPython
# kernel, on the local Debian base (scripts/images.sh --base-only); no CUDA. Versions:
# tools/kind-hub/versions.env, as build arguments.
#
# As in the Jupyter docker-stacks images KubeSpawner expects: user jovyan, uid 1000, gid 100
# (users), home /home/jovyan (KubeSpawner mounts the user's volume there), port 8888.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
ARG JUPYTERHUB_VERSION
ARG JUPYTERLAB_VERSION
ARG IPYKERNEL_VERSION
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# A venv without a pip of its own (the base's pip installs into it). The kernelspec `python3`
# comes with ipykernel into /opt/singleuser/share/jupyter/kernels.
RUN for v in JUPYTERHUB_VERSION=$JUPYTERHUB_VERSION JUPYTERLAB_VERSION=$JUPYTERLAB_VERSION \
      IPYKERNEL_VERSION=$IPYKERNEL_VERSION; do \
      [ -n "${v#*=}" ] || { echo "build argument ${v%%=*} is empty (tools/kind-hub/versions.env)"; exit 1; }; \
    done \
 && python -m venv --without-pip /opt/singleuser \
 && pip --python /opt/singleuser/bin/python install \
      "jupyterhub==${JUPYTERHUB_VERSION}" \
      "jupyterlab==${JUPYTERLAB_VERSION}" \
      "ipykernel==${IPYKERNEL_VERSION}" \
 && pip --python /opt/singleuser/bin/python freeze --all >/opt/singleuser/requirements.lock \
 && /opt/singleuser/bin/jupyter kernelspec list \
 && rm -rf /root/.cache /root/.local /tmp/*
# JupyterLab's first-run question "get notified about official Jupyter news?" would cover part of
# every page (and the screenshots): answer it for all users, as an admin's overrides.json does.
RUN mkdir -p /opt/singleuser/share/jupyter/lab/settings \
 && printf '%s\n' '{"@jupyterlab/apputils-extension:notification": {"fetchNews": "false"}}' \
      >/opt/singleuser/share/jupyter/lab/settings/overrides.json
RUN useradd --uid 1000 --gid 100 --create-home --home-dir /home/jovyan --shell /bin/bash jovyan \
 && chmod 0755 /home/jovyan
ENV PATH=/opt/singleuser/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/home/jovyan \
    USER=jovyan \
    SHELL=/bin/bash \
    JUPYTER_PORT=8888 \
    PYTHONUNBUFFERED=1
LABEL org.opencontainers.image.title="gpu-queue-singleuser" \
      org.opencontainers.image.description="JupyterLab ${JUPYTERLAB_VERSION}, jupyterhub-singleuser ${JUPYTERHUB_VERSION}, ipykernel ${IPYKERNEL_VERSION} for the kind tier"
USER 1000:100
WORKDIR /home/jovyan
EXPOSE 8888
CMD ["jupyterhub-singleuser"]
