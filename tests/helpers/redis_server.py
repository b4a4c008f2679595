"""A throw-away ``redis-server`` on a free 127.0.0.1 port, for fault tests (kill, pause, restart).

No persistence (``--save "" --appendonly no``): a restart comes back empty, like a Redis that lost
its data, which is what the rebuild-from-pods path must survive.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

REDIS_SERVER_ENV = "REDIS_SERVER_BINARY"  # not GPU_QUEUE_*: those are config overrides


def find_redis_server() -> str | None:
    """The binary: ``$REDIS_SERVER_BINARY`` if set, else ``redis-server`` on PATH."""
    explicit = os.environ.get(REDIS_SERVER_ENV)
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("redis-server")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _command(port: int, *parts: str, timeout: float = 1.0) -> bytes:
    """Send one inline command and read the first reply line (enough for PING/FLUSHALL)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall((" ".join(parts) + "\r\n").encode())
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        return reply.strip()


class RedisServer:
    """One redis-server process. ``restart`` reuses the port, so clients reconnect to the same URL."""

    def __init__(self, workdir: Path, *, binary: str | None = None, port: int | None = None) -> None:
        found = binary or find_redis_server()
        if found is None:
            raise FileNotFoundError(f"redis-server not found on PATH (or ${REDIS_SERVER_ENV})")
        self.binary = found
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.process is not None and self.process.poll() is None:
            return self
        log = (self.workdir / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--protected-mode",
                "yes",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Poll PING until it answers PONG or the deadline passes."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}; see {self.workdir}/redis.log")
            try:
                if _command(self.port, "PING", timeout=0.5) == b"+PONG":
                    return
            except OSError as exc:
                last = exc
            time.sleep(0.02)  # poll interval, bounded by the deadline above
        raise TimeoutError(f"redis-server on port {self.port} did not answer PING within {timeout}s: {last}")

    def ping(self) -> bool:
        try:
            return _command(self.port, "PING", timeout=0.5) == b"+PONG"
        except OSError:
            return False

    def flushall(self) -> None:
        reply = _command(self.port, "FLUSHALL")
        if reply != b"+OK":
            raise RuntimeError(f"FLUSHALL answered {reply!r}")

    def kill(self) -> None:
        """SIGKILL: the abrupt loss a crash or an OOM kill gives."""
        self._signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the socket stays open but nothing answers (a hung or partitioned Redis)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def stop(self) -> None:
        """Terminate and reap; safe to call twice or after kill."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def restart(self, timeout: float = 10.0) -> RedisServer:
        """Stop (if running) and start again on the same port: empty, with no scripts cached."""
        if self.process is not None and self.process.poll() is None:
            self.kill()
        self.process = None
        return self.start(timeout)

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
