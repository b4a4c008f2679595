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
``{p}:pools``             set of pool names seen (``find_user`` walks it); outside the pools' slots
                          and written on its own, so it is a registry, not part of any invariant.

Every change that touches more than one key is one Lua script (run with EVALSHA; redis-py's
``register_script`` reloads it on NOSCRIPT after a restart). Microsecond scores travel as strings
(Lua's ``tostring`` keeps only 14 digits; numbers given to ``redis.call`` keep all of them).

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

from webhook.config import Config
from webhook.metrics import REDIS_ERRORS
from webhook.models import Holder, QueueEntry, Tombstone, score_of
from webhook.protocols import StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
STATS_CAP = 1000


def _micros(when: datetime) -> int:
    return int(score_of(when))


def _from_micros(value: str | float | int) -> datetime:
    """Exact: a timedelta of integer microseconds, not a float timestamp."""
    return _EPOCH + timedelta(microseconds=int(float(value)))


def _text(value: str | bytes) -> str:
    """The client decodes replies; the types say bytes | str, so make it one."""
    return value.decode() if isinstance(value, bytes) else value


def _user_field(user: str, server: str) -> str:
    """Tombstone and index field: NUL cannot occur in a JupyterHub user or server name."""
    return f"{user}\x00{server}" if user else ""


# Shared Lua helpers. `field` mirrors _user_field; keys lists are tiny (one per pod of a server).
_LUA_PRELUDE = r"""
local function field(user, server)
  if type(user) ~= 'string' or user == '' then return nil end
  if type(server) ~= 'string' then server = '' end
  return user .. '\0' .. server
end
local function idx_add(idx, f, key)
  if not f then return end
  local cur = redis.call('HGET', idx, f)
  local list = {}
  if cur then list = cjson.decode(cur) end
  for _, k in ipairs(list) do if k == key then return end end
  list[#list + 1] = key
  redis.call('HSET', idx, f, cjson.encode(list))
end
local function idx_del(idx, f, key)
  if not f then return end
  local cur = redis.call('HGET', idx, f)
  if not cur then return end
  local out = {}
  for _, k in ipairs(cjson.decode(cur)) do if k ~= key then out[#out + 1] = k end end
  if #out == 0 then redis.call('HDEL', idx, f) else redis.call('HSET', idx, f, cjson.encode(out)) end
end
local function purge(tombs, expiry, now)
  local old = redis.call('ZRANGEBYSCORE', expiry, '-inf', now, 'LIMIT', 0, 100)
  if #old > 0 then
    redis.call('HDEL', tombs, unpack(old))
    redis.call('ZREM', expiry, unpack(old))
  end
end
"""

# KEYS fifo entries holders tombs tomb-expiry by-user
# ARGV key score entry-json field now-us keep-us
# -> {status, score, stored-json}; status 0 = already queued, 1 = added, 2 = added with a
#    tombstone's place, 3 = holding (not queued)
_ENQUEUE = (
    _LUA_PRELUDE
    + r"""
local key = ARGV[1]
local existing = redis.call('ZSCORE', KEYS[1], key)
if existing then return {0, existing, redis.call('HGET', KEYS[2], key) or ''} end
if redis.call('HEXISTS', KEYS[3], key) == 1 then return {3, ARGV[2], ''} end
local score = ARGV[2]
local status = 1
local now = tonumber(ARGV[5])
purge(KEYS[4], KEYS[5], ARGV[5])
if ARGV[4] ~= '' and tonumber(ARGV[6]) > 0 then
  local raw = redis.call('HGET', KEYS[4], ARGV[4])
  if raw then
    local t = cjson.decode(raw)
    redis.call('HDEL', KEYS[4], ARGV[4])
    redis.call('ZREM', KEYS[5], ARGV[4])
    local live = tonumber(t.expires) > now and tonumber(t.removed) + tonumber(ARGV[6]) > now
    if live and tonumber(t.score) < tonumber(score) then
      score = t.score
      status = 2
    end
  end
end
redis.call('ZADD', KEYS[1], 'NX', score, key)
redis.call('HSET', KEYS[2], key, ARGV[3])
if ARGV[4] ~= '' then idx_add(KEYS[6], ARGV[4], key) end
return {status, score, ARGV[3]}
"""
)

# KEYS fifo entries tombs tomb-expiry by-user   ARGV key keep(0|1) expires-us now-us
# -> {score, entry-json} or nil
_REMOVE = (
    _LUA_PRELUDE
    + r"""
local key = ARGV[1]
local score = redis.call('ZSCORE', KEYS[1], key)
if not score then return false end
local raw = redis.call('HGET', KEYS[2], key) or ''
redis.call('ZREM', KEYS[1], key)
redis.call('HDEL', KEYS[2], key)
purge(KEYS[3], KEYS[4], ARGV[4])
if raw ~= '' then
  local e = cjson.decode(raw)
  local f = field(e.user, e.server)
  idx_del(KEYS[5], f, key)
  if f and ARGV[2] == '1' then
    local old = redis.call('HGET', KEYS[3], f)
    local keep = score
    if old then
      local t = cjson.decode(old)
      if tonumber(t.expires) > tonumber(ARGV[4]) and tonumber(t.score) < tonumber(score) then keep = t.score end
    end
    redis.call('HSET', KEYS[3], f, cjson.encode({score = keep, removed = ARGV[4], expires = ARGV[3]}))
    redis.call('ZADD', KEYS[4], ARGV[3], f)
  end
end
return {score, raw}
"""
)

# KEYS fifo entries holders waits by-user   ARGV key holder-json granted-us cap
# -> stored holder JSON, or nil when the key was not queued
_GRANT = (
    _LUA_PRELUDE
    + r"""
local key = ARGV[1]
local score = redis.call('ZSCORE', KEYS[1], key)
if not score then return false end
local raw = redis.call('HGET', KEYS[2], key)
redis.call('ZREM', KEYS[1], key)
redis.call('HDEL', KEYS[2], key)
local e = {}
if raw then e = cjson.decode(raw) end
local h = cjson.decode(ARGV[2])
for _, name in ipairs({'user', 'server', 'uid'}) do
  if (h[name] == nil or h[name] == '') and type(e[name]) == 'string' then h[name] = e[name] end
end
h.requestedScore = score
local stored = cjson.encode(h)
redis.call('HSET', KEYS[3], key, stored)
idx_del(KEYS[5], field(e.user, e.server), key)
idx_add(KEYS[5], field(h.user, h.server), key)
local wait = (tonumber(ARGV[3]) - tonumber(score)) / 1e6
if wait < 0 then wait = 0 end
redis.call('LPUSH', KEYS[4], string.format('%.6f', wait))
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[4]) - 1)
return stored
"""
)

# KEYS holders releases by-user   ARGV key at-us cap   -> holder JSON or nil
_RELEASE = (
    _LUA_PRELUDE
    + r"""
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
local h = cjson.decode(raw)
idx_del(KEYS[3], field(h.user, h.server), ARGV[1])
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
return raw
"""
)

# KEYS fifo entries   ARGV key position(1-based, >= 1)   -> {score, entry-json} or nil
# The new score lies strictly between the neighbours at the target place (midpoint), or 1 us
# before the head / after the tail. When the neighbours are less than 2 us apart, their tie-break
# by member decides: each candidate is tried and kept when ZRANK shows the target place.
_MOVE = r"""
local key = ARGV[1]
local r = redis.call('ZRANK', KEYS[1], key)
if not r then return false end
local n = redis.call('ZCARD', KEYS[1])
local t = tonumber(ARGV[2]) - 1
if t > n - 1 then t = n - 1 end
if t ~= r then
  local function other(i) if i < r then return i end return i + 1 end
  local function score_at(i) return tonumber(redis.call('ZRANGE', KEYS[1], i, i, 'WITHSCORES')[2]) end
  local prev, nxt
  if t >= 1 then prev = score_at(other(t - 1)) end
  if t <= n - 2 then nxt = score_at(other(t)) end
  local cands
  if prev == nil then cands = {nxt - 1}
  elseif nxt == nil then cands = {prev + 1}
  elseif nxt - prev >= 2 then cands = {math.floor((prev + nxt) / 2)}
  else cands = {prev, nxt} end
  for _, s in ipairs(cands) do
    redis.call('ZADD', KEYS[1], 'XX', s, key)
    if redis.call('ZRANK', KEYS[1], key) == t then break end
  end
end
return {redis.call('ZSCORE', KEYS[1], key), redis.call('HGET', KEYS[2], key) or ''}
"""

# KEYS fifo entries holders by-user
# ARGV n-entries, then n x (key score json field), then m x (key json field)
_REBUILD = r"""
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
local n = tonumber(ARGV[1])
local i = 2
local zargs, hargs, index = {}, {}, {}
local function flush()
  if #zargs > 0 then redis.call('ZADD', KEYS[1], unpack(zargs)) end
  if #hargs > 0 then redis.call('HSET', KEYS[2], unpack(hargs)) end
  zargs, hargs = {}, {}
end
local function note(f, key)
  if f == '' then return end
  local list = index[f]
  if not list then list = {}; index[f] = list end
  list[#list + 1] = key
end
for _ = 1, n do
  local key, score, js, f = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  zargs[#zargs + 1] = score; zargs[#zargs + 1] = key
  hargs[#hargs + 1] = key; hargs[#hargs + 1] = js
  note(f, key)
  if #zargs >= 1000 then flush() end
  i = i + 4
end
flush()
while i <= #ARGV do
  local key, js, f = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  redis.call('HSET', KEYS[3], key, js)
  note(f, key)
  i = i + 3
end
local iargs = {}
for f, list in pairs(index) do
  iargs[#iargs + 1] = f; iargs[#iargs + 1] = cjson.encode(list)
  if #iargs >= 1000 then redis.call('HSET', KEYS[4], unpack(iargs)); iargs = {} end
end
if #iargs > 0 then redis.call('HSET', KEYS[4], unpack(iargs)) end
return n
"""

# KEYS fifo   ARGV key   -> {rank (0-based), length} or nil. One command: cheaper than MULTI.
_POSITION = r"""
local r = redis.call('ZRANK', KEYS[1], ARGV[1])
if not r then return false end
return {r, redis.call('ZCARD', KEYS[1])}
"""

# KEYS fifo entries   ARGV start stop   -> flat {key, score, json, ...}
_ENTRIES = r"""
local r = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2], 'WITHSCORES')
local out = {}
for i = 1, #r, 2 do
  out[#out + 1] = r[i]
  out[#out + 1] = r[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], r[i]) or ''
end
return out
"""

# KEYS by-user fifo entries holders   ARGV field   -> flat {kind, key, score, json, ...}
_LOOKUP = r"""
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return {} end
local out = {}
for _, k in ipairs(cjson.decode(cur)) do
  local s = redis.call('ZSCORE', KEYS[2], k)
  if s then
    out[#out + 1] = 'q'; out[#out + 1] = k; out[#out + 1] = s
    out[#out + 1] = redis.call('HGET', KEYS[3], k) or ''
  else
    local h = redis.call('HGET', KEYS[4], k)
    if h then out[#out + 1] = 'h'; out[#out + 1] = k; out[#out + 1] = ''; out[#out + 1] = h end
  end
end
return out
"""


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


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _entry_json(entry: QueueEntry) -> str:
    return entry.model_dump_json(by_alias=True, exclude={"requested_at"})


def _entry_from(key: str, score: str | float, raw: str) -> QueueEntry:
    data: dict[str, Any] = json.loads(raw) if raw else {}
    if not data:
        namespace, _, name = key.partition("/")
        data = {"namespace": namespace, "name": name}
    data["requestedAt"] = _from_micros(score)
    return QueueEntry.model_validate(data)


def _holder_json(holder: Holder) -> str:
    data = holder.model_dump(mode="json", by_alias=True, exclude={"requested_at"})
    if holder.requested_at is not None:
        data["requestedScore"] = str(_micros(holder.requested_at))
    return json.dumps(data)


def _holder_from(raw: str) -> Holder:
    data: dict[str, Any] = json.loads(raw)
    score = data.pop("requestedScore", None)
    data["requestedAt"] = _from_micros(score) if score else None
    return Holder.model_validate(data)


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
        self._redis = self._client(url, timeout_seconds, max_connections)
        # rebuild sends the whole pool in one script: its own connection pool and socket timeout.
        self._bulk = self._client(url, self._bulk_timeout, 2)
        register = self._redis.register_script
        self._enqueue = register(_ENQUEUE)
        self._remove = register(_REMOVE)
        self._grant = register(_GRANT)
        self._release = register(_RELEASE)
        self._move = register(_MOVE)
        self._rebuild = register(_REBUILD)
        self._entries = register(_ENTRIES)
        self._position = register(_POSITION)
        self._lookup = register(_LOOKUP)

    @staticmethod
    def _client(url: str, timeout: float, max_connections: int) -> Redis:
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
        )

    @property
    def _registry(self) -> str:
        return f"{{{self._prefix}}}:pools"

    async def _run(self, op: str, call: Callable[[], Awaitable[T]], *, bulk: bool = False) -> T:
        """One deadline per operation; every failure becomes StoreUnavailable (counted, logged)."""
        try:
            async with asyncio.timeout(self._bulk_timeout if bulk else self._timeout):
                return await call()
        except (RedisError, OSError, TimeoutError) as exc:
            REDIS_ERRORS.labels(op=op).inc()
            reason = str(exc) or type(exc).__name__
            log.warning("redis operation failed", extra={"ctx": {"op": op, "error": reason}})
            raise StoreUnavailable(f"redis {op} failed: {reason}") from exc

    async def _register(self, pool: str) -> None:
        """Record the pool name for find_user (once per process and pool)."""
        if pool in self._registered:
            return
        await self._redis.sadd(self._registry, pool)
        self._registered.add(pool)
        self._pools.add(pool)

    async def _script(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any], bulk: bool = False) -> Any:
        return await script(keys=list(keys), args=list(args), client=self._bulk if bulk else self._redis)

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
                self._enqueue,
                [k.fifo, k.entries, k.holders, k.tombs, k.tomb_expiry, k.by_user],
                [
                    entry.key,
                    str(_micros(entry.requested_at)),
                    _entry_json(entry),
                    _user_field(entry.user, entry.server),
                    str(_micros(now)),
                    str(round(max(keep_place_seconds, 0.0) * 1_000_000)),
                ],
            )
            if int(status) == 3:
                return entry
            return _entry_from(entry.key, score, raw)

        return await self._run("enqueue", call)

    async def position(self, pool: str, key: str) -> tuple[int, int] | None:
        """ZRANK + ZCARD in one script (one consistent snapshot, one command): O(log n)."""
        k = self._keys(pool)

        async def call() -> tuple[int, int] | None:
            found = await self._script(self._position, [k.fifo], [key])
            return None if found is None else (int(found[0]) + 1, int(found[1]))

        return await self._run("position", call)

    async def remove(self, pool: str, key: str, keep_place_seconds: float) -> QueueEntry | None:
        """Drop a queued entry; with keep_place_seconds > 0 and a user, leave a tombstone that
        keeps the earlier of its place and any live tombstone of the same user+server."""
        k = self._keys(pool)
        now = self._clock()
        keep = keep_place_seconds > 0
        expires = now + timedelta(seconds=keep_place_seconds) if keep else now

        async def call() -> QueueEntry | None:
            result = await self._script(
                self._remove,
                [k.fifo, k.entries, k.tombs, k.tomb_expiry, k.by_user],
                [key, "1" if keep else "0", str(_micros(expires)), str(_micros(now))],
            )
            if result is None:
                return None
            score, raw = result
            return _entry_from(key, score, raw)

        return await self._run("remove", call)

    async def grant(self, pool: str, key: str, holder: Holder) -> bool:
        """Queue -> holders in one script. The holder gets the effective requested-at from the
        queue (a restored place included) and the entry's user/server/uid where it has none; the
        wait (granted_at - requested-at) is recorded."""
        k = self._keys(pool)

        async def call() -> bool:
            await self._register(pool)
            stored = await self._script(
                self._grant,
                [k.fifo, k.entries, k.holders, k.waits, k.by_user],
                [key, _holder_json(holder), str(_micros(holder.granted_at)), str(self._stats_cap)],
            )
            return stored is not None

        return await self._run("grant", call)

    async def release(self, pool: str, key: str, at: datetime) -> Holder | None:
        """Drop a holder and record ``at``; a key that held nothing frees nothing (no record)."""
        k = self._keys(pool)

        async def call() -> Holder | None:
            raw = await self._script(
                self._release, [k.holders, k.releases, k.by_user], [key, str(_micros(at)), str(self._stats_cap)]
            )
            return None if raw is None else _holder_from(raw)

        return await self._run("release", call)

    async def entries(self, pool: str, start: int = 0, stop: int = -1) -> list[QueueEntry]:
        k = self._keys(pool)

        async def call() -> list[QueueEntry]:
            flat = await self._script(self._entries, [k.fifo, k.entries], [start, stop])
            return [_entry_from(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)]

        return await self._run("entries", call)

    async def holders(self, pool: str) -> list[Holder]:
        k = self._keys(pool)

        async def call() -> list[Holder]:
            raw = await self._redis.hgetall(k.holders)
            found = [_holder_from(_text(v)) for v in raw.values()]
            return sorted(found, key=lambda h: (h.granted_at, h.key))

        return await self._run("holders", call)

    async def length(self, pool: str) -> int:
        k = self._keys(pool)

        async def call() -> int:
            return int(await self._redis.zcard(k.fifo))

        return await self._run("length", call)

    async def move(self, pool: str, key: str, position: int) -> QueueEntry | None:
        """Admin: give the entry a time between its new neighbours (positions past the tail mean
        the tail). When the neighbours are under 2 us apart and their names leave no room, the
        entry lands next to them: callers report the position it actually got."""
        if position < 1:
            raise ValueError(f"position must be >= 1, got {position}")
        k = self._keys(pool)

        async def call() -> QueueEntry | None:
            result = await self._script(self._move, [k.fifo, k.entries], [key, position])
            if result is None:
                return None
            score, raw = result
            return _entry_from(key, score, raw)

        return await self._run("move", call)

    async def rebuild(self, pool: str, entries: Sequence[QueueEntry], holders: Sequence[Holder]) -> None:
        """Replace FIFO, entries, holders and the user index in one script; tombstones and
        statistics stay. A key both queued and holding is taken as holding (its gate is gone)."""
        k = self._keys(pool)
        holding = {h.key for h in holders}
        args: list[str] = []
        queued = [e for e in entries if e.key not in holding]
        args.append(str(len(queued)))
        for e in queued:
            args += [e.key, str(_micros(e.requested_at)), _entry_json(e), _user_field(e.user, e.server)]
        for h in holders:
            args += [h.key, _holder_json(h), _user_field(h.user, h.server)]

        async def call() -> None:
            await self._redis.sadd(self._registry, pool)
            self._registered.add(pool)
            self._pools.add(pool)
            # load first: a NOSCRIPT answer would make the client send the whole pool twice
            await self._bulk.script_load(_REBUILD)
            await self._script(self._rebuild, [k.fifo, k.entries, k.holders, k.by_user], args, bulk=True)

        await self._run("rebuild", call, bulk=True)

    async def find_user(self, user: str, server: str) -> list[tuple[str, QueueEntry | Holder]]:
        """Queued entries and holders of one user's server in every known pool, queued first."""
        if not user:
            return []
        field = _user_field(user, server)

        async def call() -> list[tuple[str, QueueEntry | Holder]]:
            seen = await self._redis.smembers(self._registry)
            pools = sorted(self._pools | {_text(p) for p in seen})
            found: list[tuple[str, QueueEntry | Holder]] = []
            for pool in pools:
                k = self._keys(pool)
                flat = await self._script(self._lookup, [k.by_user, k.fifo, k.entries, k.holders], [field])
                for i in range(0, len(flat), 4):
                    kind, key, score, raw = flat[i : i + 4]
                    item: QueueEntry | Holder = _entry_from(key, score, raw) if kind == "q" else _holder_from(raw)
                    if item.user == user and item.server == server:
                        found.append((pool, item))
            return found

        return await self._run("find_user", call)

    async def wait_samples(self, pool: str, limit: int = 100) -> list[float]:
        k = self._keys(pool)

        async def call() -> list[float]:
            raw = await self._redis.lrange(k.waits, 0, max(limit, 1) - 1)
            return [float(_text(v)) for v in raw]

        return await self._run("wait_samples", call)

    async def release_times(self, pool: str, limit: int = 100) -> list[datetime]:
        k = self._keys(pool)

        async def call() -> list[datetime]:
            raw = await self._redis.lrange(k.releases, 0, max(limit, 1) - 1)
            return [_from_micros(_text(v)) for v in raw]

        return await self._run("release_times", call)

    async def ping(self) -> bool:
        """True when Redis answers within the timeout; False (counted) otherwise, never raises."""
        try:
            return bool(await self._run("ping", lambda: self._redis.ping()))
        except StoreUnavailable:
            return False

    # -- beyond the Protocol (admin views) ----------------------------------------------------

    async def tombstones(self, pool: str) -> list[Tombstone]:
        """Live tombstones of a pool, oldest place first (``gpu-queue status`` shows them)."""
        k = self._keys(pool)
        now = _micros(self._clock())

        async def call() -> list[Tombstone]:
            raw = await self._redis.hgetall(k.tombs)
            out: list[Tombstone] = []
            for fld_raw, value in raw.items():
                fld, data = _text(fld_raw), json.loads(_text(value))
                if int(float(data["expires"])) <= now:
                    continue
                user, _, server = fld.partition("\x00")
                out.append(
                    Tombstone(
                        user=user,
                        server=server,
                        requested_at=_from_micros(data["score"]),
                        expires_at=_from_micros(data["expires"]),
                    )
                )
            return sorted(out, key=lambda t: (t.requested_at, t.user, t.server))

        return await self._run("tombstones", call)


__all__ = ["RedisQueueStore", "StoreUnavailable"]
