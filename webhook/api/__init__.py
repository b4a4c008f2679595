"""The queue API under ``/api/v1``: positions and ETAs for the hub, listings and edits for admins.

One module per kind of thing: ``models`` (wire shapes), ``errors`` and ``auth`` (middlewares),
``state`` (app keys), ``answers`` (what the read answers share) and ``cached`` (the read answers
from the watch cache during a store outage), ``positions`` and ``edits`` (handlers), ``openapi``
(the route table and its document) and ``app`` (the factory). Imports point down that list, never
up. This module is the public surface the server, the CLI and the development tools import from.
"""

from webhook.api.app import create_api_app
from webhook.api.models import (
    API_PREFIX,
    SOURCE_HEADER,
    EditResult,
    ErrorBody,
    KeptPlaceList,
    MoveRequest,
    PoolList,
    PoolStatus,
    Position,
    QueueItem,
    QueueListing,
)
from webhook.api.openapi import openapi_document

__all__ = [
    "API_PREFIX",
    "SOURCE_HEADER",
    "EditResult",
    "ErrorBody",
    "KeptPlaceList",
    "MoveRequest",
    "PoolList",
    "PoolStatus",
    "Position",
    "QueueItem",
    "QueueListing",
    "create_api_app",
    "openapi_document",
]
