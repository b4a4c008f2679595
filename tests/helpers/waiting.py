"""Waiting on a condition with a deadline (never a bare sleep): for every tier."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_for(
    check: Callable[[], Awaitable[T | None]],
    within: float = 30.0,
    what: str = "the condition",
    interval: float = 0.05,
) -> T:
    """Poll ``check`` until it returns something truthy (returned); fail after ``within`` seconds.

    The failure names ``what`` and the last exception ``check`` raised, if any.
    """
    deadline = time.monotonic() + within
    last_error: BaseException | None = None
    while True:
        try:
            value = await check()
        except Exception as exc:  # a check may fail while the cluster catches up
            last_error = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise AssertionError(f"timed out after {within:.0f}s waiting for {what}{detail}")
        await asyncio.sleep(interval)
