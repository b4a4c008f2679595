"""The queue's history in Redis, bounded: ``HistoryStore`` keeps each pool's arrivals, grants,
releases and cancels so admins can size a pool (dashboard, report, what-if replay).

Layout. Keys carry the hash tag of the queue store (``webhook.redis_store``) but are separate
keys: losing or trimming the history never touches the queue (``{p:pool}:fifo`` and friends).

``{p:pool}:history``   Redis Stream, one entry per ``HistoryEvent``, oldest first. Fields:
                       ``t`` = ``at`` in epoch microseconds (an integer, stored as one);
                       ``e`` = ``<kind a|g|r|c><slices>,<ms>,<key>`` where ms is the wait (grant,
                       cancel) or hold (release) in whole milliseconds, empty for none, and the
                       key is the rest (it may hold commas); ``u`` = user, only when given.
                       Few fields because Redis stores field names once per stream node when
                       entries repeat them, and because every field is two more reply elements
                       to parse: packing measured smaller and 2-3x faster to read than one field
                       per attribute. The pool is the key, not a field.
``{p}:history-pools``  set of pools that have history (``pools``); re-added on every write, so
                       it comes back by itself after a loss.

Entry IDs and time. An event's ID is ``<at in ms>-*``, so XRANGE reads a time range. An ``at``
more than ``max_future`` ahead of the store's clock gets the clock's ms instead (a bogus stamp
would push every later ID into the future). When the ms is before the stream's last ID (a clock
step, a late writer), Redis refuses it and the event is written again by a small script that
uses the last ID's ms (``<last ms>-*``), so it lands right after the newest entry and later
events get their own times again (no drift to Redis's clock, as ``*`` would give). The field
``t`` always holds ``at`` exactly: readers trust it, not the ID. ``read`` selects by ID and then
keeps only events whose ``at`` lies in the range, so a late event may be missed by a range that
ends before it was written. Needs Redis >= 7.0 (``<ms>-*`` IDs).

Trimming. XADD accepts one strategy per call, so every write is one round trip (a pipeline) of
``XADD MAXLEN ~ cap`` per event, ``XTRIM MINID ~ <now - retention>`` per pool and the SADD of
the pool registry. Both trims are approximate: Redis drops whole stream nodes (at most
``stream-node-max-entries``, 100, and ``stream-node-max-bytes``, 4096, by default), which is
O(1) per write when nothing is due and keeps memory compact. So a pool holds fewer than ``cap``
+ one node of events, and fewer than one node of events older than the retention (those that
share a node with newer ones). "now" is the store's ``clock``, not the events' times, so a wrong
``at`` cannot trim the history away. Defaults: retention 30 days, cap 200,000 events per pool.

Memory. About 49 bytes per event with names off and 64 with names on (7-character user names),
measured with MEMORY USAGE (SAMPLES 0) over 10,000 events on Redis 7.0 with default stream node
sizes (arrival, grant, release per request, about 30 s apart, ``request_key`` keys; see
``tests/redis/test_history.py``). A pool at the default cap therefore holds at most about 10 MB
(200,000 x 49 bytes; 12.8 MB with names), plus one node of slack, per pool: size Redis's memory
for pools x that, as the queue shares it.

Loss. History is nice to have: after a FLUSHALL or a new empty Redis, reads return [] and writes
start again. Failures raise ``StoreUnavailable`` (counted in ``gpu_queue_redis_errors_total``)
within the store's deadline; callers record history best effort and carry on.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, TypeVar

from prometheus_client import Counter
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT

from webhook.config import Config
from webhook.metrics import REGISTRY
from webhook.redis_store import bounded_client, within_deadline

log = logging.getLogger(__name__)

T = TypeVar("T")

RETENTION: Final = timedelta(days=30)
CAP: Final = 200_000  # events per pool
MAX_FUTURE: Final = timedelta(minutes=5)  # an `at` further ahead of the clock gets the clock's ms as ID
PAGE: Final = 1000  # entries per XRANGE, so a long read never holds Redis for long

HistoryKind = Literal["arrival", "grant", "release", "cancel"]

_CODE: Final[dict[str, str]] = {"arrival": "a", "grant": "g", "release": "r", "cancel": "c"}
_KIND: Final[dict[str, HistoryKind]] = {"a": "arrival", "g": "grant", "r": "release", "c": "cancel"}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)
# What Redis answers when an explicit ID is not after the stream's last one.
_NOT_AFTER_TOP: Final = "equal or smaller than the target stream top item"
# A late event: XADD at max(wanted ms, the last generated ID's ms). Atomic, so no other writer
# can slip in between reading the last ID and adding. KEYS[1] stream; ARGV wanted ms, cap, fields.
_ADD_LATE: Final = """
local ms = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      local last = tonumber(string.match(info[i + 1], '^(%d+)'))
      if last > ms then ms = last end
    end
  end
end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], string.format('%d-*', ms), unpack(ARGV, 3))
"""

MALFORMED = Counter(
    "history_malformed_total",
    "History entries skipped by reads because they could not be parsed, by pool",
    ["pool"],
    namespace="gpu_queue",
    registry=REGISTRY,
)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _text(value: str | bytes) -> str:
    """Replies are str with decode_responses and bytes without: accept either client."""
    return value.decode() if isinstance(value, bytes) else value


def _micros(when: datetime) -> int:
    """Exact integer epoch microseconds (no float rounding)."""
    return (when - _EPOCH) // _US


def _from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _id_ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


def request_key(namespace: str, name: str, requested_at: datetime, *, salt: bytes = b"") -> str:
    """An opaque, stable id of one request (11 URL-safe base64 characters, 64 bits) that pairs its
    events without names.

    A pod name and its requested-at can be guessed by someone who sees the cluster; pass a
    ``salt`` (up to 64 bytes, kept secret) when the ids must not be matched back to pods."""
    data = f"{namespace}/{name}\x00{_micros(requested_at)}".encode()
    digest = hashlib.blake2b(data, digest_size=8, key=salt).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class HistoryEvent(BaseModel):
    """One thing that happened in a pool. ``wait_seconds``: grant (time queued) and cancel (time
    waited before giving up); ``hold_seconds``: release. ``user`` only when names are enabled."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    kind: HistoryKind
    at: AwareDatetime
    pool: str = Field(min_length=1)
    slices: int = Field(ge=1)
    wait_seconds: float | None = Field(default=None, alias="waitSeconds", allow_inf_nan=False)
    hold_seconds: float | None = Field(default=None, alias="holdSeconds", allow_inf_nan=False)
    key: str = Field(min_length=1)
    user: str | None = None

    @field_validator("at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @field_validator("wait_seconds", "hold_seconds")
    @classmethod
    def _not_negative(cls, value: float | None) -> float | None:
        """Clocks of two replicas may disagree by a little: a negative duration means zero."""
        return None if value is None else max(value, 0.0)

    @field_validator("user")
    @classmethod
    def _no_empty_user(cls, value: str | None) -> str | None:
        return value or None  # "" and None are one value: no name, no ``u`` field

    @model_validator(mode="after")
    def _durations_fit_the_kind(self) -> HistoryEvent:
        if self.wait_seconds is not None and self.kind not in ("grant", "cancel"):
            raise ValueError(f"wait_seconds is for grant and cancel events, not {self.kind}")
        if self.hold_seconds is not None and self.kind != "release":
            raise ValueError(f"hold_seconds is for release events, not {self.kind}")
        return self


class HistoryStats(BaseModel):
    """A pool's history at a glance; first/last are in stream order (late writes are last)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    pool: str
    count: int
    first_at: datetime | None = Field(default=None, alias="firstAt")
    last_at: datetime | None = Field(default=None, alias="lastAt")
    memory_bytes: int = Field(default=0, alias="memoryBytes")


def _ms_text(seconds: float | None) -> str:
    return "" if seconds is None else str(round(seconds * 1000))


def _seconds(raw: str) -> float | None:
    return None if raw == "" else int(raw) / 1000


def _fields(event: HistoryEvent) -> dict[FieldT, EncodableT]:
    """The compact entry (see the module docstring): ``t`` and ``e``, plus ``u`` with a name."""
    duration = _ms_text(event.hold_seconds if event.kind == "release" else event.wait_seconds)
    fields: dict[FieldT, EncodableT] = {
        "t": _micros(event.at),
        "e": f"{_CODE[event.kind]}{event.slices},{duration},{event.key}",
    }
    if event.user:
        fields["u"] = event.user
    return fields


def _event(pool: str, raw: Any) -> HistoryEvent:
    """Parse one entry; raises (KeyError, ValueError, ...) for a malformed one."""
    f = {_text(k): _text(v) for k, v in raw.items()}
    packed = f["e"]
    kind = _KIND[packed[:1]]
    slices, millis, key = packed[1:].split(",", 2)  # the key is the rest: it may hold commas
    duration = _seconds(millis)
    return HistoryEvent(
        kind=kind,
        at=_from_micros(int(f["t"])),
        pool=pool,
        slices=int(slices),
        wait_seconds=None if kind == "release" else duration,
        hold_seconds=duration if kind == "release" else None,
        key=key,
        user=f.get("u") or None,
    )


_PARSE_ERRORS: Final = (KeyError, ValueError, TypeError, OverflowError, AttributeError)


class HistoryStore:
    """Per-pool event history on ``redis.asyncio``; see the module docstring for layout and trimming.

    ``redis``: a client this store uses but does not close (``from_url`` makes one it owns).
    ``clock``: "now" for the retention cutoff and the future-stamp guard, never for event times.
    ``timeout_seconds`` bounds each call; ``read_timeout_seconds`` bounds a whole ``read``.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "gpu-queue",
        retention: timedelta = RETENTION,
        cap: int = CAP,
        timeout_seconds: float = 1.0,
        read_timeout_seconds: float = 30.0,
        max_future: timedelta = MAX_FUTURE,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        if not prefix:
            raise ValueError("prefix must not be empty")
        if cap < 1:
            raise ValueError(f"cap must be >= 1, got {cap}")
        if retention <= timedelta(0):
            raise ValueError(f"retention must be positive, got {retention}")
        self._redis = redis
        self._owned = False
        self._prefix = prefix
        self._retention = retention
        self._cap = cap
        self._timeout = timeout_seconds
        self._read_timeout = max(read_timeout_seconds, timeout_seconds)
        self._max_future = max_future
        self._clock = clock
        self._add_late = redis.register_script(_ADD_LATE)
        self.skipped = 0  # malformed entries skipped by this store's reads
        self.late = 0  # events this store wrote after the stream's last ID (not at their own time)

    @classmethod
    def from_url(
        cls, url: str, *, timeout_seconds: float = 1.0, max_connections: int = 4, **kwargs: Any
    ) -> HistoryStore:
        """A store with its own small bounded pool, no client retries (as the queue store)."""
        store = cls(bounded_client(url, timeout_seconds, max_connections), timeout_seconds=timeout_seconds, **kwargs)
        store._owned = True
        return store

    @classmethod
    def from_config(cls, config: Config, **kwargs: Any) -> HistoryStore:
        return cls.from_url(
            config.redis.url.get_secret_value(),
            prefix=config.redis.key_prefix,
            timeout_seconds=config.redis.timeout_seconds,
            **kwargs,
        )

    async def aclose(self) -> None:
        if self._owned:
            await self._redis.aclose()

    # -- plumbing -----------------------------------------------------------------------------

    def stream_key(self, pool: str) -> str:
        return f"{{{self._prefix}:{pool}}}:history"

    @property
    def registry_key(self) -> str:
        return f"{{{self._prefix}}}:history-pools"

    async def _run(self, op: str, call: Callable[[], Awaitable[T]], *, seconds: float | None = None) -> T:
        return await within_deadline(op, self._timeout if seconds is None else seconds, call, log)

    def _wanted_ms(self, at: datetime, now: datetime) -> int:
        """The ms part of an event's ID: its own time, unless far ahead of ours (see the docstring)."""
        return max(_micros(at if at <= now + self._max_future else now) // 1000, 0)

    # -- writes -------------------------------------------------------------------------------

    async def record(self, event: HistoryEvent) -> None:
        """Append one event (and trim), one round trip."""
        await self._run("history_record", lambda: self._write([event]))

    async def record_many(self, events: Iterable[HistoryEvent]) -> None:
        """Append events in the given order, any pools, in one pipeline (batch in thousands). An
        event before its stream's last ID is added after the batch (one more round trip)."""
        batch = list(events)
        if batch:
            await self._run("history_record_many", lambda: self._write(batch))

    async def _write(self, events: Sequence[HistoryEvent]) -> None:
        now = self._clock()
        minid = str(max(_micros(now - self._retention) // 1000, 0))
        pools = sorted({e.pool for e in events})
        async with self._redis.pipeline(transaction=False) as pipe:
            for e in events:
                pipe.xadd(self.stream_key(e.pool), _fields(e), id=f"{self._wanted_ms(e.at, now)}-*", maxlen=self._cap)
            for pool in pools:
                pipe.xtrim(self.stream_key(pool), minid=minid, approximate=True)
            pipe.sadd(self.registry_key, *pools)
            results = await pipe.execute(raise_on_error=False)
        late: list[HistoryEvent] = []
        for event, result in zip(events, results, strict=False):
            if isinstance(result, ResponseError) and _NOT_AFTER_TOP in str(result):
                late.append(event)
            elif isinstance(result, Exception):
                raise result
        for result in results[len(events) :]:
            if isinstance(result, Exception):
                raise result
        self.late += len(late)
        for e in late:
            # Rare (a clock step, a late writer): one script call each, in order, after the batch.
            flat = [str(v) for pair in _fields(e).items() for v in pair]
            await self._add_late(keys=[self.stream_key(e.pool)], args=[self._wanted_ms(e.at, now), self._cap, *flat])

    async def forget(self, pool: str) -> bool:
        """Delete one pool's history (the queue's keys stay); True when there was any."""

        async def call() -> bool:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.delete(self.stream_key(pool))
                pipe.srem(self.registry_key, pool)
                deleted, _ = await pipe.execute()
            return bool(deleted)

        return await self._run("history_forget", call)

    # -- reads --------------------------------------------------------------------------------

    async def read(
        self, pool: str, since: datetime | None = None, until: datetime | None = None, limit: int | None = None
    ) -> list[HistoryEvent]:
        """Events with ``since <= at <= until`` (both inclusive, to the microsecond; None = open),
        oldest first in stream order, at most ``limit``. Selected by entry ID, then by ``at`` (see
        the module docstring for late events). Malformed entries are skipped and counted, never
        raised; they do not use up ``limit``. Paged by ``PAGE``, under ``read_timeout_seconds``."""
        if limit is not None and limit <= 0:
            return []
        if until is not None and _micros(until) < 0:
            return []  # before any possible ID
        stream = self.stream_key(pool)
        start = "-" if since is None else str(max(_micros(since) // 1000, 0))
        end = "+" if until is None else str(_micros(until) // 1000)

        async def call() -> list[HistoryEvent]:
            out: list[HistoryEvent] = []
            skipped = 0
            low = start
            while limit is None or len(out) < limit:
                count = PAGE if limit is None else min(PAGE, limit - len(out))
                page: list[Any] = list(await self._redis.xrange(stream, min=low, max=end, count=count) or [])
                for _, raw in page:
                    try:
                        event = _event(pool, raw)
                    except _PARSE_ERRORS:
                        skipped += 1
                        continue
                    if (since is None or event.at >= since) and (until is None or event.at <= until):
                        out.append(event)
                if len(page) < count:
                    break
                low = f"({_text(page[-1][0])}"
            if skipped:
                self.skipped += skipped
                MALFORMED.labels(pool=pool).inc(skipped)
                log.warning("skipped malformed history entries", extra={"ctx": {"pool": pool, "skipped": skipped}})
            return out

        return await self._run("history_read", call, seconds=self._read_timeout)

    async def pools(self) -> list[str]:
        """Pools that have history, by name."""
        raw = await self._run("history_pools", lambda: self._redis.smembers(self.registry_key))
        return sorted(_text(p) for p in raw)

    async def stats(self, pool: str) -> HistoryStats:
        """Count, first/last event time and the stream's memory (MEMORY USAGE, all nodes)."""
        stream = self.stream_key(pool)

        async def call() -> HistoryStats:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xlen(stream)
                pipe.xrange(stream, count=1)
                pipe.xrevrange(stream, count=1)
                pipe.memory_usage(stream, samples=0)
                count, first, last, memory = await pipe.execute()
            return HistoryStats(
                pool=pool,
                count=int(count),
                first_at=self._time_of(first),
                last_at=self._time_of(last),
                memory_bytes=int(memory or 0),
            )

        return await self._run("history_stats", call)

    @staticmethod
    def _time_of(page: list[Any]) -> datetime | None:
        """The entry's ``at``, or its ID's time when the entry is malformed."""
        if not page:
            return None
        entry_id, raw = page[0]
        try:
            fields = {_text(k): _text(v) for k, v in raw.items()}
            return _from_micros(int(fields["t"]))
        except _PARSE_ERRORS:
            return _from_micros(_id_ms(_text(entry_id)) * 1000)


__all__ = [
    "CAP",
    "MALFORMED",
    "RETENTION",
    "HistoryEvent",
    "HistoryKind",
    "HistoryStats",
    "HistoryStore",
    "request_key",
]
