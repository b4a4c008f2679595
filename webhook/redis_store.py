"""The queue index in Redis: ``RedisQueueStore`` implements ``webhook.protocols.QueueStore``.

Layout. Every key of a pool carries the hash tag ``{<prefix>:<pool>}`` so one pool lives in one
Redis Cluster slot and a Lua script may touch all of them; the prefix lets two installs share one
Redis. Per pool:

``{p:pool}:fifo``         sorted set: member ``namespace/name``, score = requested-at in epoch
                          microseconds (``score_of``). Equal scores sort by member, which is the
                          tie-break by namespace/name that the design asks for.
``{p:pool}:entries``      hash key -> QueueEntry JSON *without* requested-at: the score is the one
                          source of the time, so ``move`` only changes the score.
``{p:pool}:holders``      hash key -> Holder JSON; ``requestedScore`` is the effective queue time.
``{p:pool}:tombs``        hash ``user NUL server`` -> tombstone JSON (score, removed, expires).
``{p:pool}:tomb-expiry``  sorted set of the same fields by expiry, to purge expired tombstones
                          (Redis 7.0 has no per-field TTL on hashes).
``{p:pool}:by-user``      hash ``user NUL server`` -> JSON list of keys, queued or holding, so
                          ``find_user`` costs O(1) per pool instead of a scan.
``{p:pool}:waits``        list of observed waits in seconds (newest first, capped).
``{p:pool}:releases``     list of slice release times in epoch microseconds (newest first, capped).
``{p:pool}:admitted``     sorted set: ``Admitted`` JSON by its ``since`` (epoch microseconds), the
                          pods ``/mutate`` is admitting; entries older than ``ADMITTED_KEEP`` go on
                          the next write. Only the leader's "no settle wait" decision reads it.
``{p}:pools``             set of pool names seen (``find_user`` walks it); outside the pools' slots
                          and written on its own, so it is a registry, not part of any invariant.

Every change that touches more than one key is one Lua script (``webhook.redis_scripts``).

Time: the store takes a ``clock`` (default: this host's UTC clock) for tombstone expiry; all
replicas should run NTP, as requested-at itself comes from the admission replica's clock.

Failures: every Redis error is counted in ``gpu_queue_redis_errors_total{op}`` and raised as
``StoreUnavailable``. Each call has a deadline of ``timeoutSeconds`` (waiting for one of the
bounded pool's connections included; ``rebuild`` has a longer one), so a dead or hung Redis fails
fast instead of stalling the caller. There are no client retries: a script never runs twice, and
stale pooled connections are re-opened at checkout by redis-py. A timeout does not prove that a
script did not run (it may have, atomically): callers treat the outcome as unknown and let the
next reconcile converge.

Cost: position, enqueue, grant and release are O(log n) and one round trip each. ``rebuild`` is
one script and holds Redis for about 10 us per entry (about 10 ms at 1k entries, 1 s at 100k).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from webhook import redis_scripts
from webhook.config import Config
from webhook.metrics import REDIS_ERRORS
from webhook.models import ADMITTED_KEEP, Admitted, Holder, KeptPlace, QueueEntry
from webhook.protocols import StoreUnavailable
from webhook.redis_scripts import entry_from, entry_json, from_micros, holder_from, holder_json, micros, user_field

log = logging.getLogger(__name__)

T = TypeVar("T")

STATS_CAP = 1000  # waits and release times kept per pool


def bounded_client(url: str, timeout: float, max_connections: int) -> Redis:
    """A bounded pool that waits for a free connection (within the op deadline) instead of
    failing a burst of callers, and no client retries (see the module docstring)."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
    )
    return Redis.from_pool(pool)


async def within_deadline(op: str, seconds: float, call: Callable[[], Awaitable[T]], logger: logging.Logger) -> T:
    """One deadline per operation; every failure becomes StoreUnavailable (counted, logged)."""
    try:
        async with asyncio.timeout(seconds):
            return await call()
    except (RedisError, OSError, TimeoutError) as exc:
        REDIS_ERRORS.labels(op=op).inc()
        reason = str(exc) or type(exc).__name__
        logger.warning("redis operation failed", extra={"ctx": {"op": op, "error": reason}})
        raise StoreUnavailable(f"redis {op} failed: {reason}") from exc


def _text(value: str | bytes) -> str:
    """The client decodes replies; the types say bytes | str, so make it one."""
    return value.decode() if isinstance(value, bytes) else value


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class _PoolKeys:
    fifo: str
    entries: str
    holders: str
    tombs: str
    tomb_expiry: str
    by_user: str
    waits: str
    releases: str
    admitted: str


class RedisQueueStore:
    """The queue index on ``redis.asyncio``; see the module docstring for the key layout.

    ``pools``: pool names that ``find_user`` always searches (``from_config`` passes the
    configured pools); pools seen at run time are added from the ``{prefix}:pools`` registry.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "gpu-queue",
        timeout_seconds: float = 1.0,
        bulk_timeout_seconds: float = 30.0,
        pools: Iterable[str] = (),
        stats_cap: int = STATS_CAP,
        max_connections: int = 50,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        if not prefix:
            raise ValueError("prefix must not be empty")
        self._prefix = prefix
        self._timeout = timeout_seconds
        self._bulk_timeout = max(bulk_timeout_seconds, timeout_seconds)
        self._stats_cap = max(1, stats_cap)
        self._clock = clock
        self._pools: set[str] = set(pools)
        self._registered: set[str] = set()
        self._redis = bounded_client(url, timeout_seconds, max_connections)
        # rebuild sends the whole pool in one script: its own connection pool and socket timeout.
        self._bulk = bounded_client(url, self._bulk_timeout, 2)
        self._scripts = redis_scripts.register(self._redis)

    @classmethod
    def from_config(cls, config: Config, *, clock: Callable[[], datetime] = _utcnow) -> RedisQueueStore:
        return cls(
            config.redis.url.get_secret_value(),
            prefix=config.redis.key_prefix,
            timeout_seconds=config.redis.timeout_seconds,
            pools=config.pools,
            clock=clock,
        )

    async def aclose(self) -> None:
        await self._redis.aclose()
        await self._bulk.aclose()

    # -- plumbing -----------------------------------------------------------------------------

    def _keys(self, pool: str) -> _PoolKeys:
        tag = f"{{{self._prefix}:{pool}}}"
        return _PoolKeys(
            fifo=f"{tag}:fifo",
            entries=f"{tag}:entries",
            holders=f"{tag}:holders",
            tombs=f"{tag}:tombs",
            tomb_expiry=f"{tag}:tomb-expiry",
            by_user=f"{tag}:by-user",
            waits=f"{tag}:waits",
            releases=f"{tag}:releases",
            admitted=f"{tag}:admitted",
        )

    @property
    def _registry(self) -> str:
        return f"{{{self._prefix}}}:pools"

    async def _run(self, op: str, call: Callable[[], Awaitable[T]], *, bulk: bool = False) -> T:
        return await within_deadline(op, self._bulk_timeout if bulk else self._timeout, call, log)

    async def _register(self, pool: str) -> None:
        """Record the pool name for find_user (once per process and pool)."""
        if pool in self._registered:
            return
        await self._redis.sadd(self._registry, pool)
        self._registered.add(pool)
        self._pools.add(pool)

    async def _script(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any], bulk: bool = False) -> Any:
        return await script(keys=list(keys), args=list(args), client=self._bulk if bulk else self._redis)

    async def _eval(self, op: str, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One script as one operation (its deadline, its error count)."""
        return await self._run(op, lambda: self._script(script, keys, args))

    # -- QueueStore ---------------------------------------------------------------------------

    async def enqueue(self, pool: str, entry: QueueEntry, keep_place_seconds: float) -> QueueEntry:
        """ZADD NX. A live tombstone of the same user+server gives back its earlier place (I5) and
        is consumed; an expired one is deleted. A key that holds a slice is not queued again (never
        both queued and holding): the entry comes back unchanged and ``position`` says None."""
        k = self._keys(pool)
        now = self._clock()

        async def call() -> QueueEntry:
            await self._register(pool)
            status, score, raw = await self._script(
                self._scripts.enqueue,
                [k.fifo, k.entries, k.holders, k.tombs, k.tomb_expiry, k.by_user],
                [
                    entry.key,
                    str(int(entry.score)),  # requested-at with the rank (webhook.models.ranked_score)
                    entry_json(entry),
                    user_field(entry.user, entry.server),
                    str(micros(now)),
                    str(round(max(keep_place_seconds, 0.0) * 1_000_000)),
                ],
            )
            if int(status) == 3:
                return entry
            return entry_from(entry.key, score, raw)

        return await self._run("enqueue", call)

    async def position(self, pool: str, key: str) -> tuple[int, int] | None:
        """ZRANK + ZCARD in one script (one consistent snapshot, one command): O(log n)."""
        found = await self._eval("position", self._scripts.position, [self._keys(pool).fifo], [key])
        return None if found is None else (int(found[0]) + 1, int(found[1]))

    async def remove(self, pool: str, key: str, keep_place_seconds: float) -> QueueEntry | None:
        """Drop a queued entry; with keep_place_seconds > 0 and a user, leave a tombstone that
        keeps the earlier of its place and any live tombstone of the same user+server."""
        k = self._keys(pool)
        now = self._clock()
        keep = keep_place_seconds > 0
        expires = now + timedelta(seconds=keep_place_seconds) if keep else now
        result = await self._eval(
            "remove",
            self._scripts.remove,
            [k.fifo, k.entries, k.tombs, k.tomb_expiry, k.by_user],
            [key, "1" if keep else "0", str(micros(expires)), str(micros(now))],
        )
        if result is None:
            return None
        score, raw = result
        return entry_from(key, score, raw)

    async def grant(self, pool: str, key: str, holder: Holder) -> bool:
        """Queue -> holders in one script. The holder gets the effective requested-at from the
        queue (a restored place included) and the entry's user/server/uid where it has none; the
        wait (granted_at - requested-at) is recorded."""
        k = self._keys(pool)

        async def call() -> bool:
            await self._register(pool)
            stored = await self._script(
                self._scripts.grant,
                [k.fifo, k.entries, k.holders, k.waits, k.by_user],
                [key, holder_json(holder), str(micros(holder.granted_at)), str(self._stats_cap)],
            )
            return stored is not None

        return await self._run("grant", call)

    async def release(self, pool: str, key: str, at: datetime) -> Holder | None:
        """Drop a holder and record ``at``; a key that held nothing frees nothing (no record)."""
        k = self._keys(pool)
        keys = [k.holders, k.releases, k.by_user]
        raw = await self._eval("release", self._scripts.release, keys, [key, str(micros(at)), str(self._stats_cap)])
        return None if raw is None else holder_from(raw)

    async def entries(self, pool: str, start: int = 0, stop: int = -1) -> list[QueueEntry]:
        k = self._keys(pool)
        flat = await self._eval("entries", self._scripts.entries, [k.fifo, k.entries], [start, stop])
        return [entry_from(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)]

    async def holders(self, pool: str) -> list[Holder]:
        raw = await self._run("holders", lambda: self._redis.hgetall(self._keys(pool).holders))
        return sorted((holder_from(_text(v)) for v in raw.values()), key=lambda h: (h.granted_at, h.key))

    async def length(self, pool: str) -> int:
        return int(await self._run("length", lambda: self._redis.zcard(self._keys(pool).fifo)))

    async def move(self, pool: str, key: str, position: int) -> QueueEntry | None:
        """Admin: give the entry a time between its new neighbours (positions past the tail mean
        the tail). When the neighbours are under 2 us apart and their names leave no room, the
        entry lands next to them: callers report the position it actually got."""
        if position < 1:
            raise ValueError(f"position must be >= 1, got {position}")
        k = self._keys(pool)
        result = await self._eval("move", self._scripts.move, [k.fifo, k.entries], [key, position])
        if result is None:
            return None
        score, raw = result
        return entry_from(key, score, raw)

    async def rebuild(self, pool: str, entries: Sequence[QueueEntry], holders: Sequence[Holder]) -> None:
        """Replace FIFO, entries, holders and the user index in one script; tombstones and
        statistics stay. A key both queued and holding is taken as holding (its gate is gone)."""
        k = self._keys(pool)
        holding = {h.key for h in holders}
        args: list[str] = []
        queued = [e for e in entries if e.key not in holding]
        args.append(str(len(queued)))
        for e in queued:
            args += [e.key, str(int(e.score)), entry_json(e), user_field(e.user, e.server)]
        for h in holders:
            args += [h.key, holder_json(h), user_field(h.user, h.server)]

        async def call() -> None:
            await self._redis.sadd(self._registry, pool)
            self._registered.add(pool)
            self._pools.add(pool)
            # load first: a NOSCRIPT answer would make the client send the whole pool twice
            await self._bulk.script_load(redis_scripts.REBUILD)
            await self._script(self._scripts.rebuild, [k.fifo, k.entries, k.holders, k.by_user], args, bulk=True)

        await self._run("rebuild", call, bulk=True)

    async def find_user(self, user: str, server: str) -> list[tuple[str, QueueEntry | Holder]]:
        """Queued entries and holders of one user's server in every known pool, pools in name
        order (within a pool in the order the user index lists them)."""
        if not user:
            return []
        field = user_field(user, server)

        async def call() -> list[tuple[str, QueueEntry | Holder]]:
            seen = await self._redis.smembers(self._registry)
            pools = sorted(self._pools | {_text(p) for p in seen})
            found: list[tuple[str, QueueEntry | Holder]] = []
            for pool in pools:
                k = self._keys(pool)
                flat = await self._script(self._scripts.lookup, [k.by_user, k.fifo, k.entries, k.holders], [field])
                for i in range(0, len(flat), 4):
                    kind, key, score, raw = flat[i : i + 4]
                    item: QueueEntry | Holder = entry_from(key, score, raw) if kind == "q" else holder_from(raw)
                    if item.user == user and item.server == server:
                        found.append((pool, item))
            return found

        return await self._run("find_user", call)

    async def wait_samples(self, pool: str, limit: int = 100) -> list[float]:
        raw = await self._run("wait_samples", lambda: self._redis.lrange(self._keys(pool).waits, 0, max(limit, 1) - 1))
        return [float(_text(v)) for v in raw]

    async def release_times(self, pool: str, limit: int = 100) -> list[datetime]:
        key = self._keys(pool).releases
        raw = await self._run("release_times", lambda: self._redis.lrange(key, 0, max(limit, 1) - 1))
        return [from_micros(_text(v)) for v in raw]

    async def kept_places(self, pool: str) -> list[KeptPlace]:
        k = self._keys(pool)
        now = micros(self._clock())
        raw = await self._run("kept_places", lambda: self._redis.hgetall(k.tombs))
        out: list[KeptPlace] = []
        for field_raw, value in raw.items():
            data = json.loads(_text(value))
            if int(float(data["expires"])) <= now:
                continue  # expired; the next write purges it
            user, _, server = _text(field_raw).partition("\x00")
            expires = from_micros(data["expires"])
            requested = from_micros(data["score"], int(data.get("rank") or 0))
            out.append(KeptPlace(user=user, server=server, requested_at=requested, expires_at=expires))
        return sorted(out, key=lambda t: (t.requested_at, t.user, t.server))

    async def note_admitted(self, pool: str, admitted: Admitted) -> None:
        """ZADD, and drop entries older than ADMITTED_KEEP, in one round trip."""
        key = self._keys(pool).admitted
        score = micros(admitted.since)
        oldest = micros(admitted.since - ADMITTED_KEEP)

        async def call() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zadd(key, {admitted.model_dump_json(by_alias=True): score})
                pipe.zremrangebyscore(key, "-inf", f"({oldest}")
                await pipe.execute()

        await self._run("note_admitted", call)

    async def admitted(self, pool: str, since: datetime) -> list[Admitted]:
        """The pods noted since ``since``, oldest first."""
        key = self._keys(pool).admitted
        raw = await self._run("admitted", lambda: self._redis.zrangebyscore(key, micros(since), "+inf"))
        return [Admitted.model_validate_json(_text(v)) for v in raw if isinstance(v, str | bytes)]

    async def ping(self) -> bool:
        """True when Redis answers within the timeout; False (counted) otherwise, never raises."""
        try:
            return bool(await self._run("ping", lambda: self._redis.ping()))
        except StoreUnavailable:
            return False


__all__ = ["STATS_CAP", "RedisQueueStore"]
