"""A replica stops when told to: cancelling the queue controller's leader loop ends it whatever it
was doing, also when the cancellation arrives just as the loop's wait ends (the elector handing
the Lease back on shutdown wakes it at that very moment). Found in a bench: a SIGTERM'd replica
hung until it was killed a minute later, because Python 3.11's ``asyncio.wait_for`` returns the
result of a wait that finished as it was cancelled and drops the cancellation."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from webhook.config import Config
from webhook.controller import QueueController
from webhook.kube import Kube


def _controller(config: Config) -> QueueController:
    controller = QueueController(config, Kube(cast(Any, None)), None, identity="stop-test")
    controller.pod_informer.synced.set()
    controller.node_informer.synced.set()
    return controller


async def test_the_leader_loop_ends_when_cancelled_at_any_point_of_a_wake_up(config: Config) -> None:
    hung: list[int] = []
    for steps in range(16):  # every interleaving of "woken" and "cancelled" a few loop steps wide
        controller = _controller(config)
        task = asyncio.create_task(controller._leader_loop())
        for _ in range(4):
            await asyncio.sleep(0)  # into its wait
        controller.elector.changed.set()  # what the elector's release does as it stops
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2.0)
        if not done:
            hung.append(steps)
            task.cancel()
            await asyncio.wait({task}, timeout=2.0)
        else:
            assert task.cancelled(), f"the loop ended otherwise: {task!r}"
    assert not hung, f"the loop went on after its cancellation when woken {hung} steps before it"
