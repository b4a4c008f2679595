"""gpu-queue: a queue-aware admission webhook for JupyterHub single-user pods."""
