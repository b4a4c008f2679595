"""The serving certificate: a hardened ``SSLContext`` and its hot reload.

The files (a Secret volume) are polled and a changed pair is loaded into the same ``SSLContext``,
so new handshakes get the new certificate with no restart and no dropped connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

from aiohttp import web

from webhook import metrics
from webhook.cert_expiry import not_after
from webhook.config import Tls

log = logging.getLogger("gpu_queue.server")

# Mozilla "intermediate" TLS 1.2 suites (forward secret AEAD only); TLS 1.3 suites are all strong.
_TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)


class TlsError(Exception):
    """The serving certificate cannot be loaded; the message says what to fix."""


def make_ssl_context() -> ssl.SSLContext:
    """A server context: TLS 1.2+, forward-secret AEAD ciphers, no compression or renegotiation."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(_TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    return ctx


@contextlib.contextmanager
def _pem_files(cert: bytes, key: bytes) -> Iterator[tuple[str, str]]:
    """Paths holding exactly these bytes (``load_cert_chain`` only reads paths).

    In-memory files on Linux (works on a read-only root filesystem); temp files elsewhere.
    """
    if hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir():
        fds = [os.memfd_create("gpu-queue-tls", 0) for _ in range(2)]
        try:
            for fd, data in zip(fds, (cert, key), strict=True):
                os.write(fd, data)
            yield f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}"
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory() as tmp:  # pragma: no cover - non-Linux development machines
        paths = (Path(tmp) / "tls.crt", Path(tmp) / "tls.key")
        paths[0].write_bytes(cert)
        paths[1].touch(mode=0o600)
        paths[1].write_bytes(key)
        yield str(paths[0]), str(paths[1])


class CertReloader:
    """Keeps one ``SSLContext`` serving the current contents of the cert and key files.

    Contents are compared, not mtimes: a Secret volume changes by an atomic symlink swap, which
    leaves the files' own mtimes meaningless. A new pair is first loaded into a scratch context
    from the very bytes read, and only then into the live one: OpenSSL can leave a context with a
    new certificate and no key when a load fails half-way, and a half-written pair must never
    reach it. Note: a change of key *type* (EC <-> RSA) adds a slot rather than replacing one; that
    needs a restart.
    """

    def __init__(self, tls: Tls, context: ssl.SSLContext | None = None) -> None:
        self.cert_file = tls.cert_file
        self.key_file = tls.key_file
        self.interval = tls.reload_seconds
        self.context = context or make_ssl_context()
        self._current: tuple[bytes, bytes] | None = None

    def _read(self) -> tuple[bytes, bytes]:
        return self.cert_file.read_bytes(), self.key_file.read_bytes()

    def _apply(self, pair: tuple[bytes, bytes]) -> None:
        with _pem_files(*pair) as (cert_path, key_path):
            make_ssl_context().load_cert_chain(cert_path, key_path)  # raises on a bad pair
            self.context.load_cert_chain(cert_path, key_path)
        self._current = pair
        expiry = not_after(pair[0])
        metrics.TLS_CERT_EXPIRY.set(expiry.timestamp())
        log.info(
            "serving certificate loaded",
            extra={"ctx": {"cert_file": str(self.cert_file), "not_after": expiry.isoformat()}},
        )

    def load(self) -> None:
        """The first load, at start: a failure is fatal, with a message that says what to do."""
        try:
            pair = self._read()
        except OSError as exc:
            raise TlsError(
                f"cannot read the serving certificate ({exc.filename}: {exc.strerror}); mount the TLS Secret "
                "made by `gpu-queue certs --secret` or cert-manager, or set tls.certFile/tls.keyFile"
            ) from None
        try:
            self._apply(pair)
        except (ssl.SSLError, ValueError) as exc:
            raise TlsError(
                f"{self.cert_file} and {self.key_file} are not a matching PEM certificate and key ({exc}); "
                "re-create them with `gpu-queue certs`"
            ) from None

    def check(self) -> bool:
        """Reload if the files changed and the new pair loads; True when a new pair is in use."""
        try:
            pair = self._read()
        except OSError as exc:
            log.warning(
                "cannot read the serving certificate; keeping the current one",
                extra={"ctx": {"file": exc.filename, "error": exc.strerror}},
            )
            return False
        if pair == self._current:
            return False
        try:
            self._apply(pair)
        except (ssl.SSLError, ValueError) as exc:
            metrics.TLS_RELOADS.labels("failed").inc()
            log.warning(
                "the changed certificate files do not load (half-written?); keeping the current certificate",
                extra={"ctx": {"cert_file": str(self.cert_file), "error": str(exc)}},
            )
            return False
        metrics.TLS_RELOADS.labels("ok").inc()
        return True

    async def watch(self) -> None:
        """Poll forever (cancel to stop); an unexpected error is logged, never ends the loop."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.check()
            except Exception:
                log.exception("certificate reload check failed")

    def component(self) -> Callable[[web.Application], AsyncIterator[None]]:
        """The reload loop as a ``cleanup_ctx`` component (the app factory's ``Component``)."""

        async def tls_reload(app: web.Application) -> AsyncIterator[None]:
            task = asyncio.create_task(self.watch(), name="tls-reload")
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        return tls_reload
