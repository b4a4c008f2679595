"""Child processes of the dev cluster: each in its own process group, its output in a log file.

A process group per child lets ``stop`` take down anything the child forked, and lets ``gpu-queue
dev down`` (a different Python process, after ``up`` has exited) find and stop them from the pids
in the state file. The process start time is recorded with the pid so a recycled pid is never
signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# Poll interval for every "wait until" loop: short enough that start-up is not padded noticeably.
POLL_SECONDS = 0.05


class DevClusterError(Exception):
    """Something in the dev cluster failed; the message says what, and shows the log tail."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1.

    All sockets are held open until every port is chosen, so one call never returns a port twice.
    (Another program may still take one before our child binds it: rare, and the health wait then
    fails with the child's "address in use" log line.)
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tail(path: Path, lines: int = 25) -> str:
    """The last lines of a log file: what a failure message shows."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def proc_start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None if unknown or gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 overall
    except (IndexError, ValueError):
        return None


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split(maxsplit=1)[0]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group.

    A zombie is dead for our purposes: an orphaned child of ``dev up`` is reaped by whatever
    adopted it, which in a container may never happen.
    """
    proc = Path("/proc")
    if not proc.is_dir():  # pragma: no cover - non-Linux: ask the kernel, zombies included
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members: list[int] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[0] != "Z" and fields[2] == str(pgid):
            members.append(int(entry.name))
    return members


def pid_matches(pid: int, start_time: int | None) -> bool:
    """True when ``pid`` is still the process we started (not a recycled pid, not a zombie)."""
    state = _proc_state(pid)
    if state is None:
        if not Path("/proc").is_dir():  # pragma: no cover
            try:
                os.kill(pid, 0)
            except (ProcessLookupError, PermissionError):
                return False
            return True
        return False
    if state == "Z":
        return False
    return start_time is None or proc_start_time(pid) == start_time


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@dataclass(frozen=True)
class GroupRef:
    """A process group to stop: its leader's pid (= the pgid) and start time."""

    name: str
    pgid: int
    start_time: int | None
    reap: Callable[[], int | None] | None = None  # Popen.poll for our own children (no zombies)


def stop_groups(groups: Sequence[GroupRef], timeout: float = 10.0) -> dict[str, str]:
    """SIGTERM every group at once, SIGKILL what is left after ``timeout``; what happened to each.

    Blocking on purpose: it runs at teardown, from sync and async callers alike.
    """
    result: dict[str, str] = {}
    pending: list[GroupRef] = []
    for g in groups:
        if g.reap is not None:
            g.reap()
        state = _proc_state(g.pgid)
        if state not in (None, "Z") and g.start_time is not None and proc_start_time(g.pgid) != g.start_time:
            # The kernel reserves a pid while its group lives, so a new process under our leader's
            # pid means our group is gone and the pid was recycled.
            result[g.name] = "not running (its pid now belongs to another process, left alone)"
        elif not group_members(g.pgid):
            result[g.name] = "not running"
        else:
            _signal_group(g.pgid, signal.SIGTERM)
            pending.append(g)
    pending = _wait_groups_gone(pending, timeout)
    for g in pending:
        _signal_group(g.pgid, signal.SIGKILL)
    killed = _wait_groups_gone(pending, 5.0)
    for g in groups:
        if g.name in result:
            continue
        if g in killed:
            result[g.name] = f"still running after SIGKILL (pids {group_members(g.pgid)})"
        elif g in pending:
            result[g.name] = f"killed (still running {timeout:.0f}s after SIGTERM)"
        else:
            result[g.name] = "stopped"
    return result


def _wait_groups_gone(groups: list[GroupRef], timeout: float) -> list[GroupRef]:
    """Poll until every group is empty or the deadline passes; the groups still alive."""
    deadline = time.monotonic() + timeout
    while True:
        for g in groups:
            if g.reap is not None:
                g.reap()
        # An exiting multi-threaded leader shows as a zombie before it can be reaped: for our own
        # children wait for the exit status too, so "stopped" means Popen knows it.
        groups = [g for g in groups if group_members(g.pgid) or (g.reap is not None and g.reap() is None)]
        if not groups or time.monotonic() >= deadline:
            return groups
        time.sleep(POLL_SECONDS)


class ManagedProcess:
    """One child: argv, env, log file, and its Popen while it runs under this Python process."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.start_time: int | None = None

    def start(self) -> None:
        """Start in a new session (so a new process group); output appended to the log."""
        if self.alive():
            raise DevClusterError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(  # noqa: S603 - argv built by us, no shell
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        self.pid = self.popen.pid
        self.start_time = proc_start_time(self.pid)

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return self.pid is not None and pid_matches(self.pid, self.start_time)

    def exit_code(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal the whole group at once, no grace (a crash, for fault tests), and reap."""
        if self.pid is None:
            return
        _signal_group(self.pid, sig)
        if sig is signal.SIGKILL and self.popen is not None:
            self.popen.wait()

    def ref(self) -> GroupRef | None:
        if self.pid is None:
            return None
        reap = self.popen.poll if self.popen is not None else None
        return GroupRef(self.name, self.pid, self.start_time, reap)

    def stop(self, timeout: float = 10.0) -> str:
        """SIGTERM, then SIGKILL after ``timeout``: a clean shutdown (a service releases its lease)."""
        ref = self.ref()
        return "not started" if ref is None else stop_groups([ref], timeout)[self.name]

    def failure(self, what: str) -> DevClusterError:
        """An error naming the process, the reason, and the tail of its log."""
        code = self.exit_code()
        exited = f" (exited with code {code})" if code is not None else ""
        return DevClusterError(f"{self.name} {what}{exited}; last lines of {self.log_path}:\n{tail(self.log_path)}")

    async def wait_until(
        self, check: Callable[[], Awaitable[bool]], within: float, what: str = "did not become healthy"
    ) -> None:
        """Poll ``check`` until true; fail at once if the process exits, or after ``within`` seconds."""
        deadline = time.monotonic() + within
        while True:
            if not self.alive():
                raise self.failure("exited during start-up")
            with contextlib.suppress(Exception):
                if await check():
                    return
            if time.monotonic() >= deadline:
                raise self.failure(f"{what} within {within:.0f}s")
            await asyncio.sleep(POLL_SECONDS)
