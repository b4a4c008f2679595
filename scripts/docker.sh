#!/usr/bin/env bash
# A Docker engine where none runs (for building and running the gpu-queue image on a dev/CI box).
#
#   scripts/docker.sh            # idempotent: does nothing when `docker info` already answers
#
# Otherwise, on a Debian/Ubuntu host:
#   1. installs Debian's `docker.io` (the engine: dockerd, containerd, runc) and `debootstrap`
#      (scripts/images.sh makes the base image with it) with apt-get, sudo when not root;
#   2. compares this host's capability bounding set (CapBnd in /proc/self/status) with every
#      capability the kernel knows (/proc/sys/kernel/cap_last_cap). ONLY when some are missing does
#      it install a small OCI runtime wrapper, runc-capfix, and register it in
#      /etc/docker/daemon.json as a named runtime and the default runtime;
#   3. starts dockerd in the background (log and pidfile under $HOME/.cache/gpu-queue/docker/) and
#      polls `docker info` until it answers or a deadline passes (DOCKER_WAIT_SECONDS, default 90).
#
# Why the wrapper: Docker asks runc for every capability it knows for `--privileged` containers
# (kind's nodes, systemd containers). On hosts whose capability bounding set is restricted (e.g.
# some microVMs lack CAP_MAC_OVERRIDE) runc then fails with "unable to apply caps: operation not
# permitted". The wrapper removes the capabilities absent from the bounding set from the bundle's
# config.json (create/run) and from the --process JSON (exec), then execs the real runc with the
# same arguments. It is a workaround for such hosts only: on a host with the full bounding set it
# is not installed (and a default-runtime entry left by an earlier run pointing at it is removed).
set -euo pipefail

say() { printf '[docker] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

state="${HOME}/.cache/gpu-queue/docker"
log="${state}/dockerd.log"
pidfile="${state}/dockerd.pid"
wait_seconds="${DOCKER_WAIT_SECONDS:-90}"
wrapper_dir="/usr/local/lib/gpu-queue"
wrapper="${wrapper_dir}/runc-capfix"
runtime_name="runc-capfix"
daemon_json="/etc/docker/daemon.json"

# `docker info` as this user, or through sudo when the socket is root's only.
engine_answers() {
  docker info >/dev/null 2>&1 && return 0
  [ -n "$sudo" ] && sudo -n docker info >/dev/null 2>&1 && return 0
  return 1
}
docker_cmd() {
  if docker info >/dev/null 2>&1; then docker "$@"; else $sudo docker "$@"; fi
}

# The engine's PATH: the system's only. containerd starts the shim it finds first on its PATH, and
# the project's tool cache (kind's node image) holds containerd v2's shim, whose start-up answer
# containerd 1.6 cannot read ("failed to start shim: ... dial unix \x00...unix://..."): every
# container then fails to start.
engine_path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
pid_alive() { [ -s "$pidfile" ] && $sudo kill -0 "$(cat "$pidfile")" 2>/dev/null; }

# Our own engine (pidfile) started with another PATH, by an earlier version of this script: its
# containerd would start whichever shim that PATH finds first. Stop it; it is started again below.
if engine_answers && pid_alive; then
  running_path=$($sudo tr '\0' '\n' <"/proc/$(cat "$pidfile")/environ" 2>/dev/null | sed -n 's/^PATH=//p' || true)
  if [ -n "$running_path" ] && [ "$running_path" != "$engine_path" ]; then
    say "dockerd (pid $(cat "$pidfile")) runs with PATH=${running_path}; restarting it with the system's PATH"
    $sudo kill "$(cat "$pidfile")" 2>/dev/null || true
    for _ in $(seq 1 100); do pid_alive || break; sleep 0.2; done
    pid_alive && die "dockerd (pid $(cat "$pidfile")) did not stop"
  fi
fi

if engine_answers; then
  say "engine already answers (server $(docker_cmd info --format '{{.ServerVersion}}' 2>/dev/null)); nothing to do"
  exit 0
fi

t0=$(date +%s)
mkdir -p "$state"

# --- 1. packages -------------------------------------------------------------------------------
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
# The wrapper is Python (JSON editing); Debian's interpreter, not whatever python3 PATH finds.
[ -x /usr/bin/python3 ] || missing+=(python3)
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]} (Debian packages)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
else
  say "docker.io and debootstrap already installed"
fi
command -v dockerd >/dev/null 2>&1 || die "dockerd not found after installing docker.io"

real_runc=/usr/sbin/runc
[ -x "$real_runc" ] || real_runc="$(command -v runc || true)"
if [ -z "$real_runc" ] || [ ! -x "$real_runc" ]; then die "runc not found (it comes with docker.io)"; fi

# --- 2. capability bounding set ----------------------------------------------------------------
capbnd_hex=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
cap_last=$(cat /proc/sys/kernel/cap_last_cap)
full=$(( (1 << (cap_last + 1)) - 1 ))
absent=$(( full & ~(16#${capbnd_hex}) ))
if [ "$absent" -ne 0 ]; then
  absent_list=""
  for ((i = 0; i <= cap_last; i++)); do
    if (( (absent >> i) & 1 )); then absent_list+=" $i"; fi
  done
  say "capability bounding set ${capbnd_hex} lacks capabilities${absent_list} (of 0..${cap_last}):" \
      "using the ${runtime_name} runtime wrapper"
  need_wrapper=1
else
  say "capability bounding set is complete (0..${cap_last}): plain runc, no wrapper"
  need_wrapper=0
fi

if [ "$need_wrapper" -eq 1 ]; then
  tmp=$(mktemp)
  cat >"$tmp" <<'PY'
#!/usr/bin/python3
# runc-capfix: installed by gpu-queue's scripts/docker.sh on hosts whose capability bounding set
# lacks capabilities that Docker asks for (e.g. --privileged in some microVMs). Removes those
# capabilities from the OCI bundle's config.json (create/run) or the --process JSON (exec), then
# execs the real runc with the same arguments.
import json
import os
import sys

REAL_RUNC = "@REAL_RUNC@"
# Kernel capability numbers (include/uapi/linux/capability.h).
CAPS = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
]
# Global runc options that take a value (so their value is not taken for the subcommand).
GLOBAL_WITH_VALUE = {"--root", "--log", "--log-format", "--criu", "--rootless"}


def absent_caps():
    with open("/proc/self/status") as f:
        bnd = next(int(line.split()[1], 16) for line in f if line.startswith("CapBnd:"))
    return {"CAP_" + name for i, name in enumerate(CAPS) if not bnd >> i & 1}


def option(args, *names):
    for i, a in enumerate(args):
        for n in names:
            if a == n and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(n + "="):
                return a[len(n) + 1:]
    return None


def strip(path, key_path, absent):
    with open(path) as f:
        doc = json.load(f)
    node = doc
    for k in key_path:
        node = node.get(k) if isinstance(node, dict) else None
    caps = node.get("capabilities") if isinstance(node, dict) else None
    if not isinstance(caps, dict):
        return
    changed = False
    for kind, names in caps.items():
        if isinstance(names, list):
            kept = [c for c in names if c not in absent]
            if len(kept) != len(names):
                caps[kind] = kept
                changed = True
    if changed:
        tmp = path + ".capfix"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, path)


def main():
    args = sys.argv[1:]
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 2 if args[i] in GLOBAL_WITH_VALUE else 1
    cmd, rest = (args[i], args[i + 1:]) if i < len(args) else (None, [])
    try:
        absent = absent_caps()
        if absent and cmd in ("create", "run"):
            bundle = option(rest, "--bundle", "-b") or os.getcwd()
            strip(os.path.join(bundle, "config.json"), ["process"], absent)
        elif absent and cmd == "exec":
            process = option(rest, "--process", "-p")
            if process:
                strip(process, [], absent)
    except (OSError, ValueError, StopIteration) as e:
        print(f"runc-capfix: left the spec as it was: {e}", file=sys.stderr)
    os.execv(REAL_RUNC, [REAL_RUNC] + args)


main()
PY
  sed -i "s|@REAL_RUNC@|${real_runc}|" "$tmp"
  $sudo mkdir -p "$wrapper_dir"
  if ! cmp -s "$tmp" "$wrapper" 2>/dev/null; then
    $sudo install -m 0755 "$tmp" "$wrapper"
    say "wrote ${wrapper} (execs ${real_runc})"
  fi
  rm -f "$tmp"
fi

# daemon.json: add (or, when not needed, remove) our runtime, keeping every other key.
$sudo mkdir -p "$(dirname "$daemon_json")"
$sudo /usr/bin/python3 - "$daemon_json" "$need_wrapper" "$runtime_name" "$wrapper" <<'PY' \
  || die "could not update ${daemon_json}"
import json, os, sys
path, need, name, wrapper = sys.argv[1], sys.argv[2] == "1", sys.argv[3], sys.argv[4]
doc = {}
if os.path.exists(path):
    with open(path) as f:
        text = f.read().strip()
    doc = json.loads(text) if text else {}
before = json.dumps(doc, sort_keys=True)
if need:
    doc.setdefault("runtimes", {})[name] = {"path": wrapper}
    doc["default-runtime"] = name
else:
    if doc.get("default-runtime") == name:
        del doc["default-runtime"]
    doc.get("runtimes", {}).pop(name, None)
    if doc.get("runtimes") == {}:
        del doc["runtimes"]
if json.dumps(doc, sort_keys=True) != before or not os.path.exists(path):
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)
    print(f"[docker] wrote {path}", file=sys.stderr)
PY

# --- 3. dockerd -------------------------------------------------------------------------------
if engine_answers; then
  # A package's post-install script may have started an engine already.
  say "an engine started meanwhile (default runtime $(docker_cmd info --format '{{.DefaultRuntime}}'))"
elif pid_alive; then
  say "dockerd (pid $(cat "$pidfile")) is running but not answering yet; waiting for it"
else
  say "starting dockerd (log ${log})"
  $sudo rm -f "$pidfile"
  printf '\n--- %s: scripts/docker.sh starts dockerd\n' "$(date -u +%FT%TZ)" >>"$log"
  # setsid: the engine outlives this script and its terminal's process group.
  $sudo setsid env PATH="$engine_path" dockerd --pidfile "$pidfile" >>"$log" 2>&1 </dev/null &
  started=$!
fi

deadline=$(( $(date +%s) + wait_seconds ))
until engine_answers; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    tail -n 20 "$log" >&2 || true
    die "docker info did not answer within ${wait_seconds}s (log: ${log})"
  fi
  if [ -n "${started:-}" ] && ! kill -0 "$started" 2>/dev/null; then
    tail -n 20 "$log" >&2 || true
    die "dockerd exited (log: ${log})"
  fi
  sleep 0.5
done

if [ "$need_wrapper" -eq 1 ]; then
  runtime=$(docker_cmd info --format '{{.DefaultRuntime}}')
  [ "$runtime" = "$runtime_name" ] \
    || die "dockerd's default runtime is ${runtime}, not ${runtime_name}: restart it to read ${daemon_json}"
fi
say "engine up: server $(docker_cmd info --format '{{.ServerVersion}}'), default runtime" \
    "$(docker_cmd info --format '{{.DefaultRuntime}}') ($(( $(date +%s) - t0 ))s)"
