"""``gpu-queue status`` and ``gpu-queue queue ls|rm|move``: pure rendering, then the real CLI
(``webhook.cli.main``) against the API served by a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import getpass
import ipaddress
import json
import logging
import re
import socket
import ssl
import threading
import urllib.request
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.fakes import FakeCluster, MemoryQueueStore
from webhook.admin_render import format_duration, render_edit, render_queue, render_status, render_table
from webhook.api import EditResult, PoolList, QueueListing, create_api_app
from webhook.cli import main
from webhook.config import Config
from webhook.eta import format_eta
from webhook.models import Eta, Holder, QueueEntry

T = TypeVar("T")
READ = "cli-read-token-2d9e"
ADMIN = "cli-admin-token-77a1"
NS = "jhub"
NOW = datetime.now(UTC).replace(microsecond=0)


# --------------------------------------------------------------------------------- rendering


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-5, "0s"),
        (42.9, "42s"),
        (60, "1m00s"),
        (751, "12m31s"),
        (3599, "59m59s"),
        (3900, "1h05m"),
        (86399, "23h59m"),
        (90061, "1d01h"),
        (10 * 86400, "10d00h"),
    ],
)
def test_durations_are_human_two_unit_strings(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


@given(st.integers(min_value=0, max_value=400 * 86400))
def test_a_duration_never_overstates_and_drops_less_than_its_smallest_unit(seconds: int) -> None:
    text = format_duration(seconds)
    parts = re.fullmatch(r"(?:(\d+)([dhm]))?(\d+)([dhms])", text)
    assert parts is not None, text
    value = sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([dhms])", text))
    smallest = _UNITS[parts.group(4)]
    assert value <= seconds < value + smallest


def test_tables_align_columns_two_spaces_apart_without_trailing_blanks() -> None:
    text = render_table(["POS", "USER", "NOTE"], [["1", "alice", ""], ["10", "Bob.Smith", "x"]])
    assert text.splitlines() == ["POS  USER       NOTE", "1    alice", "10   Bob.Smith  x"]


SAMPLE_NOW = datetime(2026, 11, 28, 17, 0, tzinfo=UTC)
SAMPLE_POOLS: list[dict[str, Any]] = [
    {
        "name": "gpu",
        "resource": "nvidia.com/gpu",
        "capacity": 8,
        "inUse": 8,
        "queued": 2,
        "holders": [
            {
                "namespace": "jhub",
                "name": "jupyter-alice",
                "user": "alice",
                "server": "",
                "requestedAt": "2026-11-28T15:50:00Z",
                "grantedAt": "2026-11-28T15:55:00Z",
                "node": "gpu-node-1",
                "uid": "u1",
            },
            {
                "namespace": "jhub",
                "name": "jupyter-a-b-org---0c1f5f6d--train",
                "user": "a@b.org",
                "server": "train",
                "requestedAt": None,
                "grantedAt": "2026-11-28T16:47:29Z",
                "node": "",
                "uid": "u2",
            },
        ],
    }
]
SAMPLE_QUEUE: dict[str, Any] = {
    "pool": "gpu",
    "resource": "nvidia.com/gpu",
    "capacity": 8,
    "inUse": 8,
    "queueLength": 2,
    "offset": 0,
    "limit": None,
    "entries": [
        {
            "namespace": "jhub",
            "name": "jupyter-bob-smith---274c9d19",
            "user": "Bob.Smith",
            "server": "",
            "requestedAt": "2026-11-28T16:47:29Z",
            "uid": "",
            "position": 1,
            "waitingSeconds": 751.4,
            "eta": {"known": True, "minSeconds": 300.0, "maxSeconds": 900.0, "method": "release-rate"},
        },
        {
            "namespace": "jhub",
            "name": "jupyter-carol",
            "user": "carol",
            "server": "",
            "requestedAt": "2026-11-28T16:55:00Z",
            "uid": "",
            "position": 2,
            "waitingSeconds": 300.0,
            "eta": {"known": False, "minSeconds": None, "maxSeconds": None, "method": ""},
        },
    ],
}


def test_status_renders_a_header_a_holders_table_and_a_queue_table_per_pool() -> None:
    pools = PoolList.model_validate(SAMPLE_POOLS).root
    queues = {"gpu": QueueListing.model_validate(SAMPLE_QUEUE)}
    eta1 = format_eta(Eta(known=True, min_seconds=300.0, max_seconds=900.0, method="release-rate"))
    eta2 = format_eta(Eta(known=False, method=""))
    holders = render_table(
        ["USER", "SERVER", "POD", "SINCE", "NODE"],
        [
            ["alice", "-", "jhub/jupyter-alice", "1h05m", "gpu-node-1"],
            ["a@b.org", "train", "jhub/jupyter-a-b-org---0c1f5f6d--train", "12m31s", "-"],
        ],
    )
    queue = render_table(
        ["POS", "USER", "POD", "WAITING", "ETA"],
        [
            ["1", "Bob.Smith", "jhub/jupyter-bob-smith---274c9d19", "12m31s", eta1],
            ["2", "carol", "jhub/jupyter-carol", "5m00s", eta2],
        ],
    )
    assert render_status(pools, queues, SAMPLE_NOW) == (
        f"pool gpu (nvidia.com/gpu): capacity 8, in use 8, free 0, queued 2\n\nHOLDERS\n{holders}\n\nQUEUE\n{queue}"
    )
    assert "USER     SERVER  POD" in holders  # the columns really are aligned tables


def test_an_idle_pool_says_so_instead_of_printing_empty_tables() -> None:
    pool = {**SAMPLE_POOLS[0], "inUse": 0, "queued": 0, "holders": []}
    listing = {**SAMPLE_QUEUE, "queueLength": 0, "entries": []}
    text = render_status(
        PoolList.model_validate([pool]).root, {"gpu": QueueListing.model_validate(listing)}, SAMPLE_NOW
    )
    assert "free 8, queued 0" in text
    assert "(no pod holds a slice)" in text and "(queue is empty)" in text
    assert render_status([], {}, SAMPLE_NOW) == "no pools are configured"


def test_a_page_of_the_queue_says_how_many_more_wait_behind_it() -> None:
    listing = QueueListing.model_validate({**SAMPLE_QUEUE, "queueLength": 7, "limit": 2})
    assert render_queue(listing).splitlines()[-1] == "... and 5 more"
    assert "SERVER" in render_queue(listing, with_server=True).splitlines()[0]


def test_edits_are_reported_in_one_line() -> None:
    common = {"pool": "gpu", "namespace": "jhub", "name": "jupyter-carol", "reason": "r", "queueLength": 5}
    moved = EditResult.model_validate({**common, "action": "moved", "previousPosition": 4, "position": 1})
    removed = EditResult.model_validate({**common, "action": "removed", "previousPosition": 2, "podDeleted": False})
    assert render_edit(moved) == "moved jhub/jupyter-carol in pool gpu from position 4 to 1 of 5"
    assert render_edit(removed) == "removed jhub/jupyter-carol from pool gpu (was position 2); its pod was already gone"


# ------------------------------------------------------------------- a real server, the real CLI


@dataclass
class Served:
    url: str
    store: MemoryQueueStore
    cluster: FakeCluster
    loop: asyncio.AbstractEventLoop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def get(self, path: str) -> Any:
        """The API's own answer, fetched directly, to compare with the CLI's JSON output."""
        request = urllib.request.Request(self.url + "/api/v1" + path, headers={"Authorization": f"Bearer {READ}"})
        with urllib.request.urlopen(request, timeout=10) as response:  # plain http on 127.0.0.1
            return json.loads(response.read())


@contextmanager
def serve_app(
    root: web.Application, ssl_context: ssl.SSLContext | None = None
) -> Iterator[tuple[str, asyncio.AbstractEventLoop]]:
    """Run an app on 127.0.0.1 in a thread with its own loop (the CLI runs asyncio.run itself)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="api-server", daemon=True)
    thread.start()
    runner = web.AppRunner(root)

    async def start() -> int:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        return int(runner.addresses[0][1])

    try:
        port = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
        scheme = "https" if ssl_context else "http"
        yield f"{scheme}://127.0.0.1:{port}", loop
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


def make_config() -> Config:
    return Config.model_validate(
        {
            "missingProfile": "allow",
            "pools": {"gpu": {"resource": "nvidia.com/gpu"}, "big": {"resource": "example.com/a100", "capacity": 2}},
            "api": {"readTokens": [READ], "adminTokens": [ADMIN]},
        }
    )


async def seed(store: MemoryQueueStore, cluster: FakeCluster) -> None:
    cluster.usage = {"gpu": (2, 2), "big": (2, 0)}
    for name, user, server, granted_ago, node in [
        ("jupyter-alice", "alice", "", 3900, "gpu-node-1"),
        ("jupyter-a-b-org---0c1f5f6d--train", "a@b.org", "train", 751, "gpu-node-2"),
    ]:
        entry = QueueEntry(namespace=NS, name=name, user=user, server=server, requested_at=NOW - timedelta(hours=3))
        await store.enqueue("gpu", entry, 300)
        holder = Holder(
            namespace=NS,
            name=name,
            user=user,
            server=server,
            requested_at=entry.requested_at,
            granted_at=NOW - timedelta(seconds=granted_ago),
            node=node,
        )
        assert await store.grant("gpu", entry.key, holder)
        cluster.pods.add((NS, name))
    for name, user, waited in [
        ("jupyter-bob-smith---274c9d19", "Bob.Smith", 751),
        ("jupyter-carol", "carol", 300),
        ("jupyter-dave", "dave", 60),
    ]:
        entry = QueueEntry(namespace=NS, name=name, user=user, requested_at=NOW - timedelta(seconds=waited))
        await store.enqueue("gpu", entry, 300)
        cluster.pods.add((NS, name))


@pytest.fixture
def served() -> Iterator[Served]:
    store = MemoryQueueStore(clock=lambda: NOW)
    cluster = FakeCluster()
    root = web.Application()
    root.add_subapp("/api/v1", create_api_app(make_config(), store, cluster, clock=lambda: NOW))
    with serve_app(root) as (url, loop):
        served = Served(url, store, cluster, loop)
        served.run(seed(store, cluster))
        yield served


@pytest.fixture(autouse=True)
def _now() -> None:
    """The server's clock is NOW and the CLI reads the wall clock: keep them a moment apart, not
    the minutes between collecting this module and running a test late in a long session."""
    global NOW
    NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GPU_QUEUE_TOKEN", "GPU_QUEUE_API_URL", "GPU_QUEUE_CA"):
        monkeypatch.delenv(name, raising=False)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def fails_with(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run a CLI call that must fail: non-zero exit, nothing on stdout, exactly one line on stderr."""
    code, out, err = cli(capsys, *argv)
    assert code != 0
    assert out == ""
    assert len(err.splitlines()) == 1, err
    return err.strip()


def test_status_prints_each_pool_with_holders_and_queue(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "status", "--api", served.url, "--token", READ)
    assert (code, err) == (0, "")
    assert "pool gpu (nvidia.com/gpu): capacity 2, in use 2, free 0, queued 3" in out
    assert "pool big (example.com/a100): capacity 2, in use 0, free 2, queued 0" in out
    lines = out.splitlines()
    assert re.search(r"^alice\s+-\s+jhub/jupyter-alice\s+1h05m\s+gpu-node-1$", out, re.M), out
    assert re.search(r"^a@b\.org\s+train\s+jhub/jupyter-a-b-org---0c1f5f6d--train\s+12m3\ds\s+gpu-node-2$", out, re.M)
    queue = lines[lines.index("QUEUE") + 1 : lines.index("QUEUE") + 5]
    assert queue[0].split() == ["POS", "USER", "POD", "WAITING", "ETA"]
    assert [row.split()[:4] for row in queue[1:]] == [
        ["1", "Bob.Smith", "jhub/jupyter-bob-smith---274c9d19", "12m31s"],
        ["2", "carol", "jhub/jupyter-carol", "5m00s"],
        ["3", "dave", "jhub/jupyter-dave", "1m00s"],
    ]


def test_status_json_is_the_raw_api_json(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "status", "--api", served.url, "--token", READ, "--output", "json")
    assert code == 0
    data = json.loads(out)
    assert data["pools"] == served.get("/pools")
    assert data["queues"] == {"gpu": served.get("/pools/gpu/queue"), "big": served.get("/pools/big/queue")}
    assert data["keptPlaces"] == {
        "gpu": served.get("/pools/gpu/kept-places"),
        "big": served.get("/pools/big/kept-places"),
    }


def test_status_shows_the_kept_places_and_says_when_redis_has_them_out_of_reach(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    served.run(served.store.remove("gpu", "jhub/jupyter-carol", 300))  # carol cancelled: place kept
    code, out, _ = cli(capsys, "status", "--api", served.url, "--token", READ)
    assert code == 0
    lines = out.splitlines()
    kept = lines[lines.index("KEPT PLACES") + 1 : lines.index("KEPT PLACES") + 3]
    assert kept[0].split() == ["USER", "SERVER", "PLACE", "FROM", "EXPIRES", "IN"]
    assert kept[1].split()[:2] == ["carol", "-"]
    minutes, _, seconds = kept[1].split()[-1].rstrip("s").partition("m")
    assert 270 <= int(minutes) * 60 + int(seconds) <= 300, kept[1]  # 300 s from the cancel, less the time since
    served.store.down = True
    code, out, _ = cli(capsys, "status", "--api", served.url, "--token", READ)
    assert code == 0, out
    assert "(unknown while Redis is down: kept places live only there)" in out
    assert "from the replica's watch cache" in out


def test_status_for_one_pool_and_for_a_pool_that_does_not_exist(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "status", "--api", served.url, "--token", READ, "--pool", "big")
    assert code == 0 and "pool big" in out and "pool gpu" not in out
    err = fails_with(capsys, "status", "--api", served.url, "--token", READ, "--pool", "tpu")
    assert "no pool named 'tpu' (pools: gpu, big)" in err


def test_queue_ls_lists_one_pool_or_every_pool(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "queue", "ls", "gpu", "--api", served.url, "--token", READ)
    assert code == 0
    assert out.splitlines()[0] == "pool gpu: 3 queued, capacity 2, in use 2"
    assert out.splitlines()[1].split() == ["POS", "USER", "SERVER", "POD", "WAITING", "ETA"]
    code, out, _ = cli(capsys, "queue", "ls", "gpu", "--api", served.url, "--token", READ, "-o", "json")
    assert json.loads(out) == served.get("/pools/gpu/queue")
    code, out, _ = cli(capsys, "queue", "ls", "--api", served.url, "--token", READ, "-o", "json")
    assert [listing["pool"] for listing in json.loads(out)] == ["gpu", "big"]
    err = fails_with(capsys, "queue", "ls", "tpu", "--api", served.url, "--token", READ)
    assert "no pool named 'tpu'" in err


def test_queue_move_moves_the_pod_and_says_where_it_went(
    served: Served, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="webhook.api")
    code, out, err = cli(
        capsys, "queue", "move", "jhub/jupyter-dave", "1", "--reason", "demo", "--api", served.url, "--token", ADMIN
    )
    assert (code, err) == (0, "")
    assert out.strip() == "moved jhub/jupyter-dave in pool gpu from position 3 to 1 of 3"
    order = served.run(served.store.entries("gpu"))
    assert [e.name for e in order] == ["jupyter-dave", "jupyter-bob-smith---274c9d19", "jupyter-carol"]
    assert served.cluster.requested_at == {(NS, "jupyter-dave"): order[0].requested_at}
    [record] = [r for r in caplog.records if "queue edit" in r.getMessage()]
    assert record.ctx["reason"] == "demo"  # type: ignore[attr-defined]
    assert record.ctx["actor"] == getpass.getuser()  # type: ignore[attr-defined]


def test_queue_rm_removes_the_pod_and_deletes_it(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "queue", "rm", "jhub/jupyter-carol", "--api", served.url, "--token", ADMIN, "-o", "json")
    assert code == 0
    answer = json.loads(out)
    assert (answer["action"], answer["previousPosition"], answer["podDeleted"]) == ("removed", 2, True)
    assert served.cluster.deleted == [(NS, "jupyter-carol")]
    assert served.run(served.store.length("gpu")) == 2


def test_editing_a_pod_that_holds_a_slice_is_refused_before_any_edit(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    err = fails_with(capsys, "queue", "rm", "jhub/jupyter-alice", "--api", served.url, "--token", ADMIN)
    assert err == "gpu-queue: pod jhub/jupyter-alice holds a slice already; only queued pods can be moved or removed"
    assert served.cluster.deleted == []


def test_an_unreachable_api_says_to_check_the_port_forward(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    err = fails_with(capsys, "status", "--api", f"http://127.0.0.1:{port}", "--token", READ)
    assert err.startswith(f"gpu-queue: cannot reach the gpu-queue API at http://127.0.0.1:{port}: ")
    assert err.endswith("connection refused; is `kubectl port-forward` running?")


def test_a_missing_token_says_how_to_pass_one(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    err = fails_with(capsys, "status", "--api", served.url)
    assert err == "gpu-queue: the API needs a token: pass --token or set GPU_QUEUE_TOKEN"


def test_a_refused_token_says_how_to_pass_another(
    served: Served, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    err = fails_with(capsys, "status", "--api", served.url, "--token", "wrong")
    assert err.startswith("gpu-queue: the API refused the token: pass --token or set GPU_QUEUE_TOKEN")
    assert "wrong" not in err
    monkeypatch.setenv("GPU_QUEUE_TOKEN", READ)  # the environment works as the message says
    assert cli(capsys, "status", "--api", served.url)[0] == 0


def test_a_read_token_on_an_edit_asks_for_an_admin_token(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    err = fails_with(capsys, "queue", "move", "jhub/jupyter-dave", "1", "--api", served.url, "--token", READ)
    assert "needs an admin token" in err and "api.adminTokens" in err
    assert served.cluster.requested_at == {}


def test_a_store_outage_says_the_api_is_unavailable_and_when_to_retry(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    served.store.down = True
    served.cluster.synced = False  # nor has the replica's watch cache anything to answer from
    err = fails_with(capsys, "status", "--api", served.url, "--token", READ)
    assert err.startswith("gpu-queue: the gpu-queue API is unavailable: the queue store (Redis) is unavailable")
    assert err.endswith("retry in 5 s")


def test_an_unknown_pod_repeats_the_apis_reason(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    err = fails_with(capsys, "queue", "rm", "jhub/jupyter-ghost", "--api", served.url, "--token", ADMIN)
    assert "jhub/jupyter-ghost is neither queued nor holding a slice" in err and "(HTTP 404)" in err


@pytest.mark.parametrize("pod", ["jupyter-alice", "/jupyter-alice", "jhub/", "a/b/c"])
def test_a_pod_argument_must_be_namespace_slash_name(
    served: Served, capsys: pytest.CaptureFixture[str], pod: str
) -> None:
    err = fails_with(capsys, "queue", "rm", pod, "--api", served.url, "--token", ADMIN)
    assert "pod must be NAMESPACE/NAME" in err


def test_a_position_below_one_is_refused(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    err = fails_with(capsys, "queue", "move", "jhub/jupyter-dave", "0", "--api", served.url, "--token", ADMIN)
    assert "1-based" in err


@pytest.mark.parametrize("api", ["localhost:8443", "ftp://127.0.0.1", "https://"])
def test_an_api_that_is_not_an_http_url_is_refused(capsys: pytest.CaptureFixture[str], api: str) -> None:
    err = fails_with(capsys, "status", "--api", api, "--token", READ)
    assert "--api must be an http(s) URL" in err


def test_a_server_that_is_not_gpu_queue_is_named_as_such(capsys: pytest.CaptureFixture[str]) -> None:
    other = web.Application()  # answers 404 text/plain to everything
    with serve_app(other) as (url, _):
        err = fails_with(capsys, "status", "--api", url, "--token", READ)
    assert "answered HTTP 404 without a gpu-queue error" in err and "is --api the gpu-queue service?" in err


# ------------------------------------------------------------------------------------------- TLS


def _tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a serving certificate for 127.0.0.1."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gpu-queue test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gpu-queue")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = directory / "ca.crt", directory / "tls.crt", directory / "tls.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca_path, cert_path, key_path


def test_over_tls_the_cli_needs_the_ca_or_insecure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca, cert, key = _tls_files(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    store, cluster = MemoryQueueStore(clock=lambda: NOW), FakeCluster()
    root = web.Application()
    root.add_subapp("/api/v1", create_api_app(make_config(), store, cluster, clock=lambda: NOW))
    with serve_app(root, context) as (url, _):
        err = fails_with(capsys, "status", "--api", url, "--token", READ)
        assert f"the TLS certificate of {url} was not accepted" in err and "pass --ca" in err
        assert cli(capsys, "status", "--api", url, "--token", READ, "--ca", str(ca))[0] == 0
        assert cli(capsys, "status", "--api", url, "--token", READ, "--insecure")[0] == 0
        err = fails_with(capsys, "status", "--api", url, "--token", READ, "--ca", str(tmp_path / "missing.crt"))
        assert "cannot use --ca" in err
        err = fails_with(capsys, "status", "--api", url.replace("https", "http"), "--token", READ)
        assert "right scheme" in err or "cannot talk" in err


def test_the_queue_table_says_which_policy_decided_each_place() -> None:
    entries = [dict(e) for e in SAMPLE_QUEUE["entries"]]
    entries[0]["priority"] = {"policy": "groupPriority", "rank": 0, "group": "instructors", "ahead": {}}
    entries[1]["priority"] = {"policy": "groupPriority", "rank": 1, "group": None, "ahead": {"instructors": 1}}
    entries[1]["heldBack"] = {"policy": "groupLimits", "group": "course-a", "limit": 4, "inUse": 4}
    lines = render_queue(QueueListing.model_validate({**SAMPLE_QUEUE, "entries": entries})).splitlines()
    assert lines[0].split()[-1] == "POLICY"
    assert lines[1].endswith("rank 0 (instructors)")
    assert lines[2].endswith("rank 1 (no priority group); held back: course-a holds 4/4")
    assert "POLICY" not in render_queue(QueueListing.model_validate(SAMPLE_QUEUE)), "plain FIFO: no column"
