"""Certificate hot reload: a Secret volume's symlink swap reaches new handshakes with no failures.

The client runs in its own thread with blocking sockets, so it keeps handshaking independently of
the server's event loop, exactly like the API server would.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509

from webhook import metrics, server
from webhook.certs import CertPair, make_ca, make_serving_cert
from webhook.config import Tls, load_config

RELOAD_SECONDS = 0.3


def _serial(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


class SecretVolume:
    """The kubelet's layout: ``tls.crt -> ..data/tls.crt``, ``..data -> ..<timestamp>/``.

    An update writes a new timestamped directory, then renames a new ``..data`` symlink over the
    old one: one atomic step that swaps both files at once.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0

    def publish(self, pair: CertPair) -> None:
        self.generation += 1
        target = self.root / f"..2026_01_01_00_00_{self.generation:02d}.0000"
        target.mkdir()
        (target / "tls.crt").write_bytes(pair.cert_pem)
        (target / "tls.key").write_bytes(pair.key_pem)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(target.name)
        os.replace(tmp, self.root / "..data")
        for name in ("tls.crt", "tls.key"):
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")

    @property
    def tls(self) -> Tls:
        return Tls(certFile=self.root / "tls.crt", keyFile=self.root / "tls.key", reloadSeconds=RELOAD_SECONDS)


def handshake(port: int, ca_pem: bytes) -> int:
    """One fresh TLS handshake (verifying the chain and name); the serial the server presented."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number


@dataclass
class HandshakeLoop:
    """Handshakes in a loop from a thread, recording (time, serial) or the failure."""

    port: int
    ca_pem: bytes
    seen: list[tuple[float, int]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.seen.append((time.monotonic(), handshake(self.port, self.ca_pem)))
            except (OSError, ssl.SSLError) as exc:
                self.failures.append(repr(exc))


@pytest.fixture
def ca() -> CertPair:
    return make_ca()


async def _start(tls: Tls) -> tuple[web.AppRunner, server.CertReloader, int]:
    reloader = server.CertReloader(tls)
    reloader.load()
    app = server.create_app(load_config(None, env={}))
    app.cleanup_ctx.append(reloader.component())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=reloader.context).start()
    return runner, reloader, runner.addresses[0][1]


async def _until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)


@pytest.fixture
async def running(tmp_path: Path, ca: CertPair) -> AsyncIterator[tuple[SecretVolume, server.CertReloader, int]]:
    volume = SecretVolume(tmp_path)
    volume.publish(make_serving_cert(ca, ["localhost"]))
    runner, reloader, port = await _start(volume.tls)
    yield volume, reloader, port
    await runner.cleanup()


async def test_symlink_swap_reaches_new_handshakes_within_the_interval_with_zero_failures(
    running: tuple[SecretVolume, server.CertReloader, int], ca: CertPair
) -> None:
    volume, _, port = running
    first = _serial(volume.root.joinpath("tls.crt").read_bytes())
    client = HandshakeLoop(port, ca.cert_pem)
    thread = threading.Thread(target=client.run, daemon=True)
    thread.start()
    try:
        await _until(lambda: len(client.seen) >= 5, timeout=10)
        second = make_serving_cert(ca, ["localhost"])
        swapped_at = time.monotonic()
        volume.publish(second)
        await _until(lambda: any(s == _serial(second.cert_pem) for _, s in client.seen), timeout=10)
        count = len(client.seen)
        await _until(lambda: len(client.seen) >= count + 5, timeout=10)  # keeps working afterwards
    finally:
        client.stop.set()
        await asyncio.to_thread(thread.join, 10)  # the loop must keep serving the last handshake
    assert client.failures == []
    first_new = next(t for t, s in client.seen if s == _serial(second.cert_pem))
    # One poll interval, plus scheduling slack on a busy machine.
    assert first_new - swapped_at < RELOAD_SECONDS + 0.5
    serials = [s for _, s in client.seen]
    switch = serials.index(_serial(second.cert_pem))
    assert set(serials[:switch]) == {first} and set(serials[switch:]) == {_serial(second.cert_pem)}


async def test_half_written_pair_keeps_the_old_certificate_and_warns(
    running: tuple[SecretVolume, server.CertReloader, int], ca: CertPair, caplog: pytest.LogCaptureFixture
) -> None:
    volume, reloader, port = running
    old_serial = _serial(volume.root.joinpath("tls.crt").read_bytes())
    new = make_serving_cert(ca, ["localhost"])
    data = volume.root / "..data"
    failed_before = metrics.REGISTRY.get_sample_value("gpu_queue_tls_reloads_total", {"result": "failed"}) or 0
    # A writer that is not atomic: the new certificate is there, its key is not yet.
    (data / "tls.crt").write_bytes(new.cert_pem)
    (data / "tls.key").write_bytes(new.key_pem[:40])
    with caplog.at_level(logging.WARNING, logger="gpu_queue.server"):
        assert reloader.check() is False
    assert "keeping the current certificate" in caplog.text
    assert metrics.REGISTRY.get_sample_value("gpu_queue_tls_reloads_total", {"result": "failed"}) == failed_before + 1
    assert await asyncio.to_thread(handshake, port, ca.cert_pem) == old_serial
    (data / "tls.key").write_bytes(new.key_pem)
    assert reloader.check() is True
    assert await asyncio.to_thread(handshake, port, ca.cert_pem) == _serial(new.cert_pem)


async def test_mismatched_key_never_reaches_the_live_context(
    running: tuple[SecretVolume, server.CertReloader, int], ca: CertPair
) -> None:
    volume, reloader, port = running
    old_serial = _serial(volume.root.joinpath("tls.crt").read_bytes())
    a, b = make_serving_cert(ca, ["localhost"]), make_serving_cert(ca, ["localhost"])
    volume.publish(CertPair(a.cert_pem, b.key_pem))  # valid PEMs, wrong key for the certificate
    assert reloader.check() is False
    assert await asyncio.to_thread(handshake, port, ca.cert_pem) == old_serial


def test_unchanged_files_are_not_reloaded(tmp_path: Path, ca: CertPair) -> None:
    volume = SecretVolume(tmp_path)
    volume.publish(make_serving_cert(ca, ["localhost"]))
    reloader = server.CertReloader(volume.tls)
    reloader.load()
    ok_before = metrics.REGISTRY.get_sample_value("gpu_queue_tls_reloads_total", {"result": "ok"}) or 0
    os.utime(tmp_path / "..data" / "tls.crt")  # a new mtime alone is not a new certificate
    assert reloader.check() is False
    assert (metrics.REGISTRY.get_sample_value("gpu_queue_tls_reloads_total", {"result": "ok"}) or 0) == ok_before


def test_context_refuses_tls_1_1_and_weak_ciphers() -> None:
    ctx = server.make_ssl_context()
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    names = {c["name"] for c in ctx.get_ciphers()}
    assert not any(weak in name for name in names for weak in ("RC4", "3DES", "CBC", "NULL", "MD5", "SHA1"))
    assert all("GCM" in n or "CHACHA20" in n for n in names)


def test_expiry_gauge_follows_the_loaded_certificate(tmp_path: Path, ca: CertPair) -> None:
    volume = SecretVolume(tmp_path)
    pair = make_serving_cert(ca, ["localhost"], days=7)
    volume.publish(pair)
    server.CertReloader(volume.tls).load()
    expiry = x509.load_pem_x509_certificate(pair.cert_pem).not_valid_after_utc.timestamp()
    assert metrics.REGISTRY.get_sample_value("gpu_queue_tls_cert_expiry_timestamp_seconds") == expiry
