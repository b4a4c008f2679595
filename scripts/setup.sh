#!/usr/bin/env bash
# Prepare a fresh Debian/Ubuntu machine for gpu-queue's demo and tests:
#   - redis-server from Debian's packages (the queue store; the tests start their own servers),
#     libfaketime (a cluster test skews one replica's clock) and chromium (the kind tier's hub
#     story drives it headless through Playwright), gcc, pkg-config and libseccomp-dev (the kind
#     tier's node image needs a runc built with seccomp: tools/build-kind.sh),
#   - a virtualenv in .venv with the package and its test/dev/hub extras (the newest JupyterHub),
#   - a second one, .venv-hub5, with JupyterHub 5.5 (what zero-to-jupyterhub 4.x ships), in which
#     `make test` runs the hub tests again,
#   - the Go-built control-plane tools (tools/build.sh; cached outside the repo).
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '[setup] %s\n' "$*" >&2; }

# libfaketime: the cluster tier runs one service replica with its clock 30 s off. chromium: the
# browser of tests/e2e/test_hub_story.py (Playwright drives /usr/bin/chromium; no download).
if ! command -v redis-server >/dev/null 2>&1 || ! ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 \
  || ! [ -x /usr/bin/chromium ] || ! command -v gcc >/dev/null 2>&1 || ! command -v pkg-config >/dev/null 2>&1 \
  || ! pkg-config --exists libseccomp 2>/dev/null; then
  say "installing redis-server, libfaketime, chromium, gcc, pkg-config and libseccomp-dev (Debian packages)"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server libfaketime chromium gcc pkg-config \
    libseccomp-dev >/dev/null
fi
# Debian starts a system redis on 6379 after install; nothing here uses it (every test and the
# demo start their own on free ports).

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  say "installing Python dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test,dev,hub]'
  rm -f .venv/.installed-* && touch "$stamp"
fi

# The hub module must work on the JupyterHub admins run: zero-to-jupyterhub 4.x ships 5.5, and
# 5.x counts a refused spawn towards consecutive_failure_limit where 6.x does not. Pinned exactly
# (the newest 5.5.x), so a warm run never drifts; raise it here when a 5.5 release appears.
hub5_pin="jupyterhub==5.5.4"
if [ ! -x .venv-hub5/bin/python ]; then
  say "creating .venv-hub5 (JupyterHub 5.5) with $(.venv/bin/python --version)"
  .venv/bin/python -m venv .venv-hub5  # the same interpreter as .venv
fi
hub5_stamp=.venv-hub5/.installed-$( (cat pyproject.toml; echo "$hub5_pin") | sha256sum | cut -c1-16)
if [ ! -f "$hub5_stamp" ]; then
  say "installing Python dependencies into .venv-hub5 with $hub5_pin"
  .venv-hub5/bin/pip install -q --upgrade pip
  .venv-hub5/bin/pip install -q -e '.[test,dev]' -c <(echo "$hub5_pin")
  rm -f .venv-hub5/.installed-* && touch "$hub5_stamp"
fi

if ! command -v go >/dev/null 2>&1; then
  say "Go is not installed: the cluster tier and the demo need it to build kube-apiserver & co (https://go.dev/doc/install)"
  exit 1
fi
tools/build.sh
say "ready"
