#!/usr/bin/env bash
# Prepare a fresh Debian/Ubuntu machine for gpu-queue's demo and tests:
#   - redis-server from Debian's packages (the queue store; the tests start their own servers),
#     and libfaketime (a cluster test skews one replica's clock),
#   - a virtualenv in .venv with the package and its test/dev/hub extras,
#   - the Go-built control-plane tools (tools/build.sh; cached outside the repo).
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '[setup] %s\n' "$*" >&2; }

# libfaketime: the cluster tier runs one service replica with its clock 30 s off.
if ! command -v redis-server >/dev/null 2>&1 || ! ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1; then
  say "installing redis-server and libfaketime (Debian packages)"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server libfaketime >/dev/null
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

if ! command -v go >/dev/null 2>&1; then
  say "Go is not installed: the cluster tier and the demo need it to build kube-apiserver & co (https://go.dev/doc/install)"
  exit 1
fi
tools/build.sh
say "ready"
