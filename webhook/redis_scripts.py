"""The Lua scripts of the Redis queue store, the encodings of what they store, their registration.

Every change that touches more than one key of a pool is one script, so it is atomic; the key
layout they work on is described in ``webhook.redis_store``. Each script's comment gives its KEYS,
ARGV and reply. Microsecond scores travel as strings: Lua's ``tostring`` keeps only 14 digits,
while numbers handed to ``redis.call`` keep all of them.

Scripts run with EVALSHA; redis-py's ``register_script`` reloads one on NOSCRIPT (after a Redis
restart), so nothing here needs loading by hand except the large ``REBUILD`` call (see the store).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from webhook.models import RANK_SPAN, Holder, QueueEntry, score_of, split_key

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# -- the values the scripts read and write, on the Python side --------------------------------


def micros(when: datetime) -> int:
    """A time as the scripts keep it: integer epoch microseconds (the FIFO score)."""
    return int(score_of(when))


def from_micros(value: str | float | int, rank: int = 0) -> datetime:
    """Exact: a timedelta of integer microseconds, not a float timestamp. ``rank``: the score is
    a ranked one (``webhook.models.ranked_score``), its time is the score less the rank's span."""
    return _EPOCH + timedelta(microseconds=int(float(value)) - rank * RANK_SPAN)


def _rank(data: dict[str, Any]) -> int:
    value = data.get("rank")
    return value if isinstance(value, int) and value >= 0 else 0


def user_field(user: str, server: str) -> str:
    """Tombstone and index field (Lua ``field``): NUL cannot occur in a JupyterHub user or server
    name. Empty without a user: such an entry gets no kept place and no index line."""
    return f"{user}\x00{server}" if user else ""


def entry_json(entry: QueueEntry) -> str:
    """An entry without its requested-at: the FIFO score is the one source of that time."""
    return entry.model_dump_json(by_alias=True, exclude={"requested_at"})


def entry_from(key: str, score: str | float, raw: str) -> QueueEntry:
    data: dict[str, Any] = json.loads(raw) if raw else {}
    if not data:
        namespace, name = split_key(key)
        data = {"namespace": namespace, "name": name}
    data["requestedAt"] = from_micros(score, _rank(data))
    return QueueEntry.model_validate(data)


def holder_json(holder: Holder) -> str:
    """A holder with its requested-at as ``requestedScore`` (GRANT sets it from the FIFO, with
    the entry's rank)."""
    data = holder.model_dump(mode="json", by_alias=True, exclude={"requested_at"})
    if holder.requested_at is not None:
        data["requestedScore"] = str(micros(holder.requested_at) + holder.rank * RANK_SPAN)
    return json.dumps(data)


def holder_from(raw: str) -> Holder:
    data: dict[str, Any] = json.loads(raw)
    score = data.pop("requestedScore", None)
    data["requestedAt"] = from_micros(score, _rank(data)) if score else None
    return Holder.model_validate(data)


# -- the scripts --------------------------------------------------------------------------------

# Shared Lua helpers. `field` mirrors user_field; keys lists are tiny (one per pod of a server).
_PRELUDE = r"""
local RANK_SPAN = 1125899906842624  -- webhook.models.RANK_SPAN, 2^50
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
# -> {status, score, stored-json}; status 0 = already queued, 1 = added, 2 = added (or, already
#    queued, moved back) with a tombstone's place, 3 = holding (not queued). An entry already
#    queued without this call (a rebuild wrote it) still takes its user's live tombstone.
ENQUEUE = (
    _PRELUDE
    + r"""
local key = ARGV[1]
local existing = redis.call('ZSCORE', KEYS[1], key)
if not existing and redis.call('HEXISTS', KEYS[3], key) == 1 then return {3, ARGV[2], ''} end
local score = existing or ARGV[2]
local status = existing and 0 or 1
local now = tonumber(ARGV[5])
purge(KEYS[4], KEYS[5], ARGV[5])
if ARGV[4] ~= '' and tonumber(ARGV[6]) > 0 then
  local raw = redis.call('HGET', KEYS[4], ARGV[4])
  if raw then
    local t = cjson.decode(raw)
    redis.call('HDEL', KEYS[4], ARGV[4])
    redis.call('ZREM', KEYS[5], ARGV[4])
    local live = tonumber(t.expires) > now and tonumber(t.removed) + tonumber(ARGV[6]) > now
    local same_rank = tonumber(t.rank or 0) == tonumber(cjson.decode(ARGV[3]).rank or 0)
    if live and same_rank and tonumber(t.score) < tonumber(score) then
      score = t.score
      status = 2
    end
  end
end
if existing then
  if status == 2 then redis.call('ZADD', KEYS[1], 'XX', score, key) end
  return {status, score, redis.call('HGET', KEYS[2], key) or ''}
end
redis.call('ZADD', KEYS[1], 'NX', score, key)
redis.call('HSET', KEYS[2], key, ARGV[3])
if ARGV[4] ~= '' then idx_add(KEYS[6], ARGV[4], key) end
return {status, score, ARGV[3]}
"""
)

# KEYS fifo entries tombs tomb-expiry by-user   ARGV key keep(0|1) expires-us now-us
# -> {score, entry-json} or nil
REMOVE = (
    _PRELUDE
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
    local rank = tonumber(e.rank or 0)
    if old then
      local t = cjson.decode(old)
      local same_rank = tonumber(t.rank or 0) == rank
      if same_rank and tonumber(t.expires) > tonumber(ARGV[4]) and tonumber(t.score) < tonumber(score) then
        keep = t.score
      end
    end
    redis.call('HSET', KEYS[3], f, cjson.encode({score = keep, removed = ARGV[4], expires = ARGV[3], rank = rank}))
    redis.call('ZADD', KEYS[4], ARGV[3], f)
  end
end
return {score, raw}
"""
)

# KEYS fifo entries holders waits by-user   ARGV key holder-json granted-us cap
# -> stored holder JSON, or nil when the key was not queued
GRANT = (
    _PRELUDE
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
h.rank = tonumber(e.rank or 0)
local stored = cjson.encode(h)
redis.call('HSET', KEYS[3], key, stored)
idx_del(KEYS[5], field(e.user, e.server), key)
idx_add(KEYS[5], field(h.user, h.server), key)
local wait = (tonumber(ARGV[3]) - (tonumber(score) - h.rank * RANK_SPAN)) / 1e6
if wait < 0 then wait = 0 end
redis.call('LPUSH', KEYS[4], string.format('%.6f', wait))
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[4]) - 1)
return stored
"""
)

# KEYS holders releases by-user   ARGV key at-us cap   -> holder JSON or nil
RELEASE = (
    _PRELUDE
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
MOVE = r"""
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
REBUILD = r"""
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
POSITION = r"""
local r = redis.call('ZRANK', KEYS[1], ARGV[1])
if not r then return false end
return {r, redis.call('ZCARD', KEYS[1])}
"""

# KEYS fifo entries   ARGV start stop   -> flat {key, score, json, ...}
ENTRIES = r"""
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
LOOKUP = r"""
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
class Scripts:
    """The scripts registered on one client (each call may still pick another client)."""

    enqueue: AsyncScript
    remove: AsyncScript
    grant: AsyncScript
    release: AsyncScript
    move: AsyncScript
    rebuild: AsyncScript
    entries: AsyncScript
    position: AsyncScript
    lookup: AsyncScript


def register(client: Redis) -> Scripts:
    """Wrap every script for EVALSHA on ``client`` (no round trip: loading happens on first use)."""
    script = client.register_script
    return Scripts(
        enqueue=script(ENQUEUE),
        remove=script(REMOVE),
        grant=script(GRANT),
        release=script(RELEASE),
        move=script(MOVE),
        rebuild=script(REBUILD),
        entries=script(ENTRIES),
        position=script(POSITION),
        lookup=script(LOOKUP),
    )
