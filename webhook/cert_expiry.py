"""The expiry of an X.509 certificate, read from its DER encoding.

The serving process needs one field of its certificate (for the expiry metric and the log), and
``cryptography`` costs it 7 MiB of memory; Python's ``ssl`` validates the pair, and this walks
the certificate's first fields (RFC 5280 4.1: tbsCertificate, then version, serial, signature,
issuer, validity) to the notAfter time.
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.+?)\s*-----END CERTIFICATE-----", re.S)
_UTC_TIME, _GENERALIZED_TIME, _SEQUENCE, _VERSION = 0x17, 0x18, 0x30, 0xA0


class CertificateError(ValueError):
    """Not a PEM certificate this module can read."""


def _element(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of the content, end of the content) of the DER element at ``at``."""
    if at + 2 > len(der):
        raise CertificateError("the certificate ends early")
    tag, length = der[at], der[at + 1]
    start = at + 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or start + count > len(der):
            raise CertificateError("a bad DER length")
        length = int.from_bytes(der[start : start + count], "big")
        start += count
    if start + length > len(der):
        raise CertificateError("the certificate ends early")
    return tag, start, start + length


def not_after(cert_pem: bytes) -> datetime:
    """The expiry (UTC) of the first certificate in ``cert_pem``."""
    found = _PEM.search(cert_pem)
    if found is None:
        raise CertificateError("no PEM certificate found")
    der = base64.b64decode(b"".join(found.group(1).split()))
    tag, at, _ = _element(der, 0)  # Certificate
    tag2, at, _ = _element(der, at)  # tbsCertificate
    if tag != _SEQUENCE or tag2 != _SEQUENCE:
        raise CertificateError("not an X.509 certificate")
    tag, start, end = _element(der, at)
    if tag == _VERSION:  # [0] version, present from v2 on
        at = end
    for _ in range(3):  # serialNumber, signature, issuer
        _, _, at = _element(der, at)
    tag, at, _ = _element(der, at)  # validity
    if tag != _SEQUENCE:
        raise CertificateError("no validity in the certificate")
    _, _, at = _element(der, at)  # notBefore
    tag, start, end = _element(der, at)  # notAfter
    text = der[start:end].decode("ascii")
    if tag == _UTC_TIME and len(text) == 13 and text.endswith("Z"):  # YYMMDDHHMMSSZ, RFC 5280 4.1.2.5.1
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif not (tag == _GENERALIZED_TIME and len(text) == 15 and text.endswith("Z")):
        raise CertificateError(f"an unexpected notAfter time {text!r}")
    return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)
