//! The Lua scripts that make every change atomic. Each script is the common prelude plus its body.
//!
//! Every script takes `KEYS[1]` (the namespace's counts hash: it names the slot the script runs
//! on, which on Redis Cluster is the one slot of the whole namespace) and starts its arguments
//! with the namespace tag, the time `now` in milliseconds (from the store's clock: scripts never
//! call `TIME`) and the id of the node, which tags the wakeups it publishes so that a node skips
//! its own.

use redis::Script;

const PRELUDE: &str = r#"
local T = ARGV[1]
local NOW = tonumber(ARGV[2])
local NOWS = ARGV[2]
local NODE = ARGV[3]
local COUNTS = KEYS[1]
local CHANNEL = T .. ':wake'
local WAKES = {}
local DELTA = {}
local function n2s(x) return string.format('%.0f', x) end
local function count(st, n) DELTA[st] = (DELTA[st] or 0) + n end
local function flush_counts()
  for st, n in pairs(DELTA) do
    if n ~= 0 then redis.call('HINCRBY', COUNTS, st, n) end
  end
  DELTA = {}
end
local function dkey(did) return T .. ':d:' .. did end
local function akey(did) return T .. ':a:' .. did end
local function ekey(eid) return T .. ':e:' .. eid end
local function subkey(sub, kind) return T .. ':s:' .. sub .. ':' .. kind end
local function move(did, from, to)
  redis.call('HSET', dkey(did), 'st', to)
  count(from, -1)
  count(to, 1)
end
local function rscore(prio, due)
  if due < 0 then due = 0 end
  if due > 4398046511103 then due = 4398046511103 end
  return n2s((10 - prio) * 4398046511104 + due)
end
local function ready(sub, did, prio, due)
  redis.call('ZADD', subkey(sub, 'ready'), rscore(prio, due), did)
end
-- `n`: how many deliveries the event has (a delivery carries it): the only one needs no count.
local function close_one(eid, n)
  if n == '1' or redis.call('HINCRBY', ekey(eid), 'open', -1) <= 0 then
    redis.call('ZADD', T .. ':finished', NOWS, eid)
  end
end
-- The latest attempt lives on the delivery (`ts` started, `tf` finished, `to` outcome, `te`
-- error; '' when none); a claim moves the one before it to the attempts list.
local function archive_attempt(did, att, ts, tf, to, te)
  if ts and ts ~= '' then
    redis.call('RPUSH', akey(did), att .. '|' .. ts .. '|' .. (tf or '') .. '|' .. (to or '') .. '|' .. (te or ''))
  end
end
local EARLIEST = nil
local DUE_NOW = false
local function wake_due(t)
  if EARLIEST == nil or t < EARLIEST then EARLIEST = t end
end
-- Due now, by whichever clock reads it: a delivery that is ready at once.
local function wake_now() DUE_NOW = true end
local function wake_answered(eid)
  local msg = 'A|' .. eid
  redis.call('PUBLISH', CHANNEL, NODE .. '|' .. msg)
  WAKES[#WAKES + 1] = msg
end
local function flush_wakes()
  flush_counts()
  -- Both when both happened (a batch with immediate and delayed events, a claim that left work
  -- ready and leased some): "ready now" alone would hide the later time from every timer.
  local msgs = {}
  if DUE_NOW then msgs[#msgs + 1] = 'N' end
  if EARLIEST ~= nil then msgs[#msgs + 1] = 'D|' .. n2s(EARLIEST) end
  for _, msg in ipairs(msgs) do
    redis.call('PUBLISH', CHANNEL, NODE .. '|' .. msg)
    WAKES[#WAKES + 1] = msg
  end
  return WAKES
end
local function promote(sub)
  local due = redis.call('ZRANGEBYSCORE', subkey(sub, 'sched'), '-inf', NOWS)
  for _, did in ipairs(due) do
    local d = redis.call('HMGET', dkey(did), 'st', 'prio', 'due')
    if d[1] == 'scheduled' or d[1] == 'retrying' then
      move(did, d[1], 'pending')
      ready(sub, did, tonumber(d[2]), tonumber(d[3]))
    end
  end
  if #due > 0 then redis.call('ZREMRANGEBYSCORE', subkey(sub, 'sched'), '-inf', NOWS) end
end
"#;

/// ARGV[4]: the routing version the caller routed by; ARGV[5]: how many events. Per event: id,
/// key ('' for none), due, priority, expiry ('' for never), whether it is a request ('1'/'0'),
/// how many event-hash arguments follow, those field/value pairs, how many deliveries follow,
/// then subscription/delivery-id pairs. Returns `{'ROUTES'}` when the subscriptions changed since
/// the caller read them, else `{'OK', wakes, kind1, value1, ...}` with kind 'S' (stored, value:
/// deliveries) or 'D' (duplicate, value: the first event's id).
const PUBLISH: &str = r#"
local version = redis.call('GET', T .. ':subsver') or '0'
if version ~= ARGV[4] then return {'ROUTES'} end
local out = {'OK', {}}
local i = 6
for _ = 1, tonumber(ARGV[5]) do
  local eid, key, dues, prio, exp, req = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3]), ARGV[i + 4], ARGV[i + 5]
  local due = tonumber(dues)
  local nfields = tonumber(ARGV[i + 6])
  local fields_at = i + 7
  local nsubs = tonumber(ARGV[fields_at + nfields])
  local subs_at = fields_at + nfields + 1
  i = subs_at + 2 * nsubs
  local held = false
  if key ~= '' then held = redis.call('GET', T .. ':k:' .. key) end
  if held then
    out[#out + 1] = 'D'
    out[#out + 1] = held
  elseif redis.call('EXISTS', ekey(eid)) == 1 then
    out[#out + 1] = 'D'
    out[#out + 1] = eid
  else
    local ek = ekey(eid)
    local dids = {}
    for j = 0, nsubs - 1 do dids[#dids + 1] = ARGV[subs_at + 2 * j + 1] end
    redis.call('HSET', ek, 'open', nsubs, 'ds', table.concat(dids, ' '), unpack(ARGV, fields_at, fields_at + nfields - 1))
    redis.call('ZADD', T .. ':events', 0, eid)
    if key ~= '' then redis.call('SET', T .. ':k:' .. key, eid) end
    count('events', 1)
    if nsubs == 0 then
      count('unrouted', 1)
      redis.call('ZADD', T .. ':finished', NOWS, eid)
    else
      local st = 'scheduled'
      if due <= NOW then st = 'pending' end
      for j = 0, nsubs - 1 do
        local sub, did = ARGV[subs_at + 2 * j], ARGV[subs_at + 2 * j + 1]
        redis.call('HSET', dkey(did), 'ev', eid, 'sub', sub, 'st', st, 'att', 0, 'due', dues, 'prio', prio,
          'tok', '', 'ex', exp, 'rt', req, 'n', nsubs)
        if st == 'pending' then
          ready(sub, did, prio, due)
        else
          redis.call('ZADD', subkey(sub, 'sched'), dues, did)
        end
      end
      count(st, nsubs)
      if st == 'pending' then wake_now() else wake_due(due) end
    end
    out[#out + 1] = 'S'
    out[#out + 1] = nsubs
  end
end
out[2] = flush_wakes()
return out
"#;

/// ARGV[4]: subscription, ARGV[5]: max, ARGV[6]: lease in ms. Returns `{'UNKNOWN'}` for an
/// undeclared subscription, else `{'OK', wakes, {did, token, attempt, due, event id, event}, ...}`.
const CLAIM: &str = r#"
local sub, max, lease = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
if redis.call('HEXISTS', T .. ':subs', sub) == 0 then return {'UNKNOWN'} end
local lu = NOW + lease
local leases = subkey(sub, 'lease')
local ran_out = redis.call('ZRANGEBYSCORE', leases, '-inf', NOWS)
for _, did in ipairs(ran_out) do
  local d = redis.call('HMGET', dkey(did), 'st', 'prio', 'due')
  if d[1] == 'active' then
    move(did, 'active', 'pending')
    redis.call('HSET', dkey(did), 'tf', NOWS, 'to', 'lease_expired',
      'te', 'the lease ran out before an outcome was recorded')
    ready(sub, did, tonumber(d[2]), tonumber(d[3]))
  end
end
if #ran_out > 0 then redis.call('ZREMRANGEBYSCORE', leases, '-inf', NOWS) end
promote(sub)
local out = {'OK', {}}
local taken = 0
local rk = subkey(sub, 'ready')
local token = redis.call('INCRBY', T .. ':token', max) - max
local leased = {}
while taken < max do
  local batch = redis.call('ZPOPMIN', rk, max - taken)
  if #batch == 0 then break end
  for b = 1, #batch, 2 do
    local did = batch[b]
    local dk = dkey(did)
    local d = redis.call('HMGET', dk, 'st', 'ev', 'att', 'due', 'ex', 'n', 'ts', 'tf', 'to', 'te')
    if d[1] == 'pending' then
      if d[5] and d[5] ~= '' and tonumber(d[5]) <= NOW then
        move(did, 'pending', 'expired')
        close_one(d[2], d[6])
      else
        token = token + 1
        local att = tonumber(d[3]) + 1
        archive_attempt(did, d[3], d[7], d[8], d[9], d[10])
        redis.call('HSET', dk, 'st', 'active', 'att', att, 'tok', token, 'lu', n2s(lu), 'ts', NOWS, 'tf', '', 'to', '',
          'te', '')
        count('pending', -1)
        count('active', 1)
        leased[#leased + 1] = n2s(lu)
        leased[#leased + 1] = did
        out[#out + 1] = {did, token, att, d[4], d[2], redis.call('HGET', ekey(d[2]), 'b')}
        taken = taken + 1
      end
    end
  end
end
if taken > 0 then
  -- Other nodes learn when these leases run out (to take over from a node that died) from a
  -- wakeup, sent for every claim: announcing only the earliest lease end of the subscription left
  -- the others to find later ones by asking the store when they fired, and about one kill in six
  -- was then taken over only at the runtime's 30 s re-check.
  wake_due(lu)
  redis.call('ZADD', leases, unpack(leased))
end
out[2] = flush_wakes()
return out
"#;

/// ARGV[4]: lease in ms, then delivery/token pairs. Returns 1 (held) or 0 per lease.
const EXTEND: &str = r#"
local lu = n2s(NOW + tonumber(ARGV[4]))
local out = {}
for i = 5, #ARGV, 2 do
  local did, token = ARGV[i], ARGV[i + 1]
  local d = redis.call('HMGET', dkey(did), 'st', 'tok', 'sub')
  if d[1] == 'active' and d[2] == token then
    redis.call('HSET', dkey(did), 'lu', lu)
    redis.call('ZADD', subkey(d[3], 'lease'), lu, did)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"#;

/// ARGV[4..]: outcomes of six arguments each: delivery, token, kind ('S' succeeded, 'R' retry, 'D'
/// dead, 'L' released), finished at, a (reply, retry time or reason), b ('1' when a reply is
/// present; the error of a retry). Returns `{wakes, 1|0, ...}` (applied or stale per outcome).
const COMPLETE: &str = r#"
local out = {{}}
for i = 4, #ARGV, 6 do
  local did, token, kind, fin, a, b = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  local dk = dkey(did)
  local d = redis.call('HMGET', dk, 'st', 'tok', 'ev', 'sub', 'due', 'prio', 'att', 'rt', 'n')
  if d[1] ~= 'active' or d[2] ~= token then
    out[#out + 1] = 0
  else
    local eid, sub = d[3], d[4]
    redis.call('ZREM', subkey(sub, 'lease'), did)
    if kind == 'S' then
      if b == '1' then
        redis.call('HSET', dk, 'st', 'succeeded', 'tf', fin, 'to', 'succeeded', 'rep', a)
      else
        redis.call('HSET', dk, 'st', 'succeeded', 'tf', fin, 'to', 'succeeded')
      end
      count('active', -1)
      count('succeeded', 1)
      close_one(eid, d[9])
      if d[8] == '1' then wake_answered(eid) end
    elseif kind == 'R' then
      redis.call('HSET', dk, 'st', 'retrying', 'err', b, 'due', a, 'tf', fin, 'to', 'failed', 'te', b)
      count('active', -1)
      count('retrying', 1)
      redis.call('ZADD', subkey(sub, 'sched'), a, did)
      wake_due(tonumber(a))
    elseif kind == 'D' then
      redis.call('HSET', dk, 'st', 'dead', 'err', a, 'tf', fin, 'to', 'dead', 'te', a)
      count('active', -1)
      count('dead', 1)
      close_one(eid, d[9])
      if d[8] == '1' then wake_answered(eid) end
    else
      -- The attempt never ran: the one before it (archived by the claim) is the latest again.
      local att = tonumber(d[7]) - 1
      local ts, tf, to, te = '', '', '', ''
      if att >= 1 then
        local prev = redis.call('RPOP', akey(did))
        if prev then
          local _
          _, ts, tf, to, te = string.match(prev, '^(%d+)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
        end
      end
      redis.call('HSET', dk, 'st', 'pending', 'att', att, 'ts', ts or '', 'tf', tf or '', 'to', to or '', 'te', te or '')
      count('active', -1)
      count('pending', 1)
      ready(sub, did, tonumber(d[6]), tonumber(d[5]))
      wake_now()
    end
    out[#out + 1] = 1
  end
end
out[1] = flush_wakes()
return out
"#;

/// ARGV[4]: event id, ARGV[5]: the status to end with. Returns -1 for an unknown event, else how
/// many deliveries were ended.
const CANCEL: &str = r#"
local eid, to = ARGV[4], ARGV[5]
local ds = redis.call('HGET', ekey(eid), 'ds')
if not ds then return -1 end
local n = 0
for did in string.gmatch(ds, '%S+') do
  local d = redis.call('HMGET', dkey(did), 'st', 'sub', 'n')
  if d[1] == 'scheduled' or d[1] == 'pending' or d[1] == 'retrying' then
    move(did, d[1], to)
    redis.call('ZREM', subkey(d[2], 'sched'), did)
    redis.call('ZREM', subkey(d[2], 'ready'), did)
    close_one(eid, d[3])
    n = n + 1
  end
end
flush_counts()
return n
"#;

/// ARGV[4]: delivery id. Returns `{'NOTFOUND'}`, `{'NOTDEAD', status}` or `{'OK', wakes}`.
const REQUEUE: &str = r#"
local did = ARGV[4]
local d = redis.call('HMGET', dkey(did), 'st', 'ev', 'sub', 'prio', 'n')
if not d[1] then return {'NOTFOUND'} end
if d[1] ~= 'dead' then return {'NOTDEAD', d[1]} end
move(did, 'dead', 'pending')
redis.call('HSET', dkey(did), 'due', NOWS)
ready(d[3], did, tonumber(d[4]), NOW)
if d[5] ~= '1' then redis.call('HINCRBY', ekey(d[2]), 'open', 1) end
redis.call('ZREM', T .. ':finished', d[2])
wake_due(NOW)
return {'OK', flush_wakes()}
"#;

/// ARGV[4]: name, ARGV[5]: pattern. Returns the routing version.
const DECLARE: &str = r#"
local old = redis.call('HGET', T .. ':subs', ARGV[4])
if old ~= ARGV[5] then
  redis.call('HSET', T .. ':subs', ARGV[4], ARGV[5])
  redis.call('INCR', T .. ':subsver')
end
return redis.call('GET', T .. ':subsver')
"#;

/// ARGV[4]: name. Returns how many deliveries were cancelled.
const REMOVE: &str = r#"
local sub = ARGV[4]
if redis.call('HDEL', T .. ':subs', sub) == 0 then return 0 end
redis.call('INCR', T .. ':subsver')
local n = 0
for _, kind in ipairs({'sched', 'ready', 'lease'}) do
  for _, did in ipairs(redis.call('ZRANGE', subkey(sub, kind), 0, -1)) do
    local d = redis.call('HMGET', dkey(did), 'st', 'ev', 'n')
    if d[1] == 'scheduled' or d[1] == 'pending' or d[1] == 'retrying' or d[1] == 'active' then
      move(did, d[1], 'cancelled')
      close_one(d[2], d[3])
      n = n + 1
    end
  end
  redis.call('DEL', subkey(sub, kind))
end
flush_counts()
return n
"#;

/// Returns `{version, name1, pattern1, ...}`: the subscriptions and the version they are at.
const ROUTES: &str = r#"
local out = {redis.call('GET', T .. ':subsver') or '0'}
for _, v in ipairs(redis.call('HGETALL', T .. ':subs')) do out[#out + 1] = v end
return out
"#;

/// ARGV[4]: after (ms), then subscription names. Returns the earliest due time or lease end
/// strictly after `after`, or false.
const NEXT_DUE: &str = r#"
local after = '(' .. ARGV[4]
local best = nil
for i = 5, #ARGV do
  for _, kind in ipairs({'sched', 'lease'}) do
    local r = redis.call('ZRANGEBYSCORE', subkey(ARGV[i], kind), after, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    if r[2] then
      local t = tonumber(r[2])
      if best == nil or t < best then best = t end
    end
  end
end
if best == nil then return false end
return n2s(best)
"#;

/// ARGV[4]: '1' to include attempts, then event ids. Returns, per event found,
/// `{eid, event, {delivery...}}` where each delivery is
/// `{did, sub, status, attempts, due, error, reply, ts, tf, to, te, {earlier attempt...}}` (the
/// latest attempt's start, end, outcome and error; '' or nil when there is none).
const READ: &str = r#"
local with = ARGV[4] == '1'
local out = {}
for i = 5, #ARGV do
  local eid = ARGV[i]
  local ev = redis.call('HMGET', ekey(eid), 'b', 'ds')
  if ev[1] then
    local ds = {}
    for did in string.gmatch(ev[2] or '', '%S+') do
      local d = redis.call('HMGET', dkey(did), 'sub', 'st', 'att', 'due', 'err', 'rep', 'ts', 'tf', 'to', 'te')
      local attempts = {}
      if with then attempts = redis.call('LRANGE', akey(did), 0, -1) end
      ds[#ds + 1] = {did, d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8], d[9], d[10], attempts}
    end
    out[#out + 1] = {eid, ev[1], ds}
  end
end
return out
"#;

/// Promotes due deliveries of every subscription (so that they count as pending) and returns the
/// counts hash.
const STATS: &str = r#"
for _, sub in ipairs(redis.call('HKEYS', T .. ':subs')) do promote(sub) end
flush_counts()
return redis.call('HGETALL', COUNTS)
"#;

/// ARGV[4]: before (ms), ARGV[5]: the most events to remove. Returns how many went.
const PURGE: &str = r#"
local gone = redis.call('ZRANGEBYSCORE', T .. ':finished', '-inf', '(' .. ARGV[4], 'LIMIT', 0, tonumber(ARGV[5]))
for _, eid in ipairs(gone) do
  local ek = ekey(eid)
  local e = redis.call('HMGET', ek, 'key', 'ds')
  local n = 0
  for did in string.gmatch(e[2] or '', '%S+') do
    local st = redis.call('HGET', dkey(did), 'st')
    if st then count(st, -1) end
    redis.call('DEL', dkey(did), akey(did))
    n = n + 1
  end
  if n == 0 then count('unrouted', -1) end
  if e[1] and redis.call('GET', T .. ':k:' .. e[1]) == eid then redis.call('DEL', T .. ':k:' .. e[1]) end
  redis.call('DEL', ek)
  redis.call('ZREM', T .. ':events', eid)
  redis.call('ZREM', T .. ':finished', eid)
  count('events', -1)
end
flush_counts()
return #gone
"#;

/// The store's scripts, hashed once.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) publish: Script,
    pub(crate) claim: Script,
    pub(crate) extend: Script,
    pub(crate) complete: Script,
    pub(crate) cancel: Script,
    pub(crate) requeue: Script,
    pub(crate) declare: Script,
    pub(crate) remove: Script,
    pub(crate) routes: Script,
    pub(crate) next_due: Script,
    pub(crate) read: Script,
    pub(crate) stats: Script,
    pub(crate) purge: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        // The shebang (Redis 7, Valkey) makes the server hold a script to the slot of its declared
        // key on a cluster, instead of the lenient mode of scripts without one.
        let s = |body: &str| Script::new(&format!("#!lua\n{PRELUDE}{body}"));
        Scripts {
            publish: s(PUBLISH),
            claim: s(CLAIM),
            extend: s(EXTEND),
            complete: s(COMPLETE),
            cancel: s(CANCEL),
            requeue: s(REQUEUE),
            declare: s(DECLARE),
            remove: s(REMOVE),
            routes: s(ROUTES),
            next_due: s(NEXT_DUE),
            read: s(READ),
            stats: s(STATS),
            purge: s(PURGE),
        }
    }
}
