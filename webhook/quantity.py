"""Kubernetes resource quantities: parse, compare and format.

KubeSpawner writes quantities as JSON numbers (``cpu: 4.0``, ``memory: 8589934592``), the API
server hands them back as canonical strings (``"4"``, ``"8Gi"``); admission must treat both alike.
"""

from __future__ import annotations

import functools
import re
from decimal import Decimal, InvalidOperation

_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)$")


class QuantityError(ValueError):
    """A value that is not a Kubernetes quantity."""


def parse_quantity(value: object) -> Decimal:
    """Return the quantity as an exact decimal number of base units (cores, bytes, devices)."""
    if isinstance(value, bool):
        raise QuantityError(f"not a quantity: {value!r}")
    if isinstance(value, int | float):
        return _parse_number(value)
    if not isinstance(value, str):
        raise QuantityError(f"not a quantity: {value!r}")
    return _parse_text(value)


@functools.lru_cache(maxsize=1024)
def _parse_number(value: float) -> Decimal:
    """Numbers as KubeSpawner writes them (``4.0``, ``8589934592``); 4 and 4.0 share an entry, same amount."""
    return Decimal(value) if isinstance(value, int) else Decimal(repr(value))


@functools.lru_cache(maxsize=1024)
def _parse_text(value: str) -> Decimal:
    """Strings only (``1``, ``1.0`` and ``True`` hash alike): a pod carries the same few values."""
    match = _QUANTITY.match(value.strip())
    if match is None:
        raise QuantityError(f"not a quantity: {value!r}")
    number, exponent, suffix = match.groups()
    try:
        base = Decimal(number)
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise QuantityError(f"not a quantity: {value!r}") from exc
    if exponent:
        return base * (Decimal(10) ** int(exponent[1:]))
    return base * _SUFFIXES[suffix or ""]


def is_quantity(value: object) -> bool:
    """True when ``value`` parses as a quantity."""
    try:
        parse_quantity(value)
    except QuantityError:
        return False
    return True


def same_quantity(a: object, b: object) -> bool:
    """True when both values are quantities of the same amount (``"1Gi" == 1073741824``)."""
    if a == b and type(a) is type(b) and not isinstance(a, bool) and is_quantity(a):
        return True
    try:
        return parse_quantity(a) == parse_quantity(b)
    except QuantityError:
        return False


def cpu_env(value: object) -> str:
    """CPU in the format JupyterHub writes ``CPU_LIMIT``/``CPU_GUARANTEE``: ``str(float)``."""
    return str(float(parse_quantity(value)))


def memory_env(value: object) -> str:
    """Memory in the format JupyterHub writes ``MEM_LIMIT``/``MEM_GUARANTEE``: integer bytes."""
    return str(int(parse_quantity(value)))
