"""The serving path's own reading of a certificate's expiry agrees with ``cryptography`` (the
certificate command's library) on UTCTime and GeneralizedTime certificates, and says clearly when
it is given something else."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cryptography import x509

from webhook import cert_expiry
from webhook.certs import make_ca, make_serving_cert


@pytest.mark.parametrize("days", [1, 365, 3650, 10_000])  # 10,000 days: after 2049, GeneralizedTime
def test_not_after_agrees_with_cryptography(days: int) -> None:
    ca = make_ca(days=days)
    leaf = make_serving_cert(ca, ["gpu-queue.gpu-queue.svc"], days=days)
    for pem in (ca.cert_pem, leaf.cert_pem, leaf.cert_pem + ca.cert_pem):
        assert cert_expiry.not_after(pem) == x509.load_pem_x509_certificate(pem).not_valid_after_utc


def test_a_chain_gives_the_first_certificate_s_expiry() -> None:
    short, long = make_ca(days=2), make_ca(days=900)
    assert cert_expiry.not_after(short.cert_pem + long.cert_pem) == cert_expiry.not_after(short.cert_pem)


@pytest.mark.parametrize(
    "pem",
    [
        b"",
        b"not a certificate",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nMIIBCgKCAQEA\n-----END CERTIFICATE-----\n",
    ],
)
def test_anything_else_is_a_certificate_error(pem: bytes) -> None:
    with pytest.raises(cert_expiry.CertificateError):
        cert_expiry.not_after(pem)


def test_a_truncated_certificate_is_a_certificate_error() -> None:
    pem = make_ca().cert_pem.decode()
    body = "".join(pem.splitlines()[1:-1])
    cut = f"-----BEGIN CERTIFICATE-----\n{body[:120]}\n-----END CERTIFICATE-----\n".encode()
    with pytest.raises(cert_expiry.CertificateError):
        cert_expiry.not_after(cut)


def test_the_serving_process_does_not_load_cryptography_or_the_generated_kubernetes_models() -> None:
    """The memory the service saves: neither is imported by the service's modules (redis-py looks
    whether the ``cryptography`` package exists, which imports only its top module)."""
    code = (
        "import sys, webhook.service; "
        "print(sorted(m for m in sys.modules if m.startswith(('cryptography.x509', 'cryptography.hazmat'))), "
        "sum(m.startswith('kubernetes_asyncio.client.models.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    assert out == ["[]", "0"], out
