//! The Lua scripts of the Redis store: one commit (check and bump the version, write the
//! entries and their wire sizes, append to the history stream, publish) and one reset,
//! each atomic inside Redis.

/// KEYS: meta, values, secret, history, envs, wire sizes.
/// ARGV: env, expected version or "", epoch for a new environment ("" if it must exist: the
///       node saw it, so its absence means Redis lost it), history length,
///       change-set JSON, channel, then (op, name, value, secret, wire size) per change.
/// The node computes each new entry's wire size (`store::size`); the script keeps them per
/// entry (`size:length`) and in total. An entry it has no size for (written by an older
/// version) is counted with the Lua `entry_size`, which is slow but gives the same answer.
pub(super) const COMMIT: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if not epoch then
  if ARGV[3] == '' then
    return {'lost'}
  end
  epoch = ARGV[3]
  version = 0
  -- A new history: whatever stream is left belongs to an old one.
  redis.call('DEL', KEYS[4])
end
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= version then
  return {'conflict', tostring(version)}
end
local function cost(name)
  local n = redis.call('HSTRLEN', KEYS[2], name)
  local c = redis.call('HGET', KEYS[6], name)
  if c then
    local w, len = string.match(c, '^(%d+):(%d+)$')
    if w and tonumber(len) == n then
      return tonumber(w)
    end
  end
  return entry_size(name, redis.call('HGET', KEYS[2], name))
end
-- Raw size, kept for nodes of older versions; wire size (store::size), the limit.
local size = tonumber(redis.call('HGET', KEYS[1], 'size') or '0')
local wire = tonumber(redis.call('HGET', KEYS[1], 'wire') or '')
if not wire or redis.call('HGET', KEYS[1], 'wire_at') ~= tostring(version) then
  -- First write since an upgrade, or after an older node's write: count it all.
  wire = 0
  for _, name in ipairs(redis.call('HKEYS', KEYS[2])) do
    wire = wire + cost(name)
  end
end
local before = wire
local j = 7
while j <= #ARGV do
  local existed = redis.call('HEXISTS', KEYS[2], ARGV[j + 1]) == 1
  if ARGV[j] == 'del' and not existed then
    return {'missing', ARGV[j + 1]}
  end
  if existed then
    size = size - redis.call('HSTRLEN', KEYS[2], ARGV[j + 1]) - #ARGV[j + 1]
    wire = wire - cost(ARGV[j + 1])
  end
  if ARGV[j] == 'set' then
    size = size + #ARGV[j + 2] + #ARGV[j + 1]
    wire = wire + tonumber(ARGV[j + 4])
  end
  j = j + 5
end
-- A write that does not grow the environment is taken even over the limit (to trim one).
if wire > MAX_ENV_BYTES and wire > before then
  return {'too_big', tostring(wire)}
end
version = version + 1
-- The only call that can fail on valid input goes first: a failed script writes nothing.
redis.call('XADD', KEYS[4], 'MAXLEN', ARGV[4], tostring(version) .. '-0', 'changes', ARGV[5])
redis.call('HSET', KEYS[1], 'epoch', epoch, 'version', version, 'size', size, 'wire', wire,
  'wire_at', version)
redis.call('SADD', KEYS[5], ARGV[1])
local i = 7
while i <= #ARGV do
  if ARGV[i] == 'set' then
    redis.call('HSET', KEYS[2], ARGV[i + 1], ARGV[i + 2])
    redis.call('HSET', KEYS[3], ARGV[i + 1], ARGV[i + 3])
    redis.call('HSET', KEYS[6], ARGV[i + 1], ARGV[i + 4] .. ':' .. #ARGV[i + 2])
  else
    redis.call('HDEL', KEYS[2], ARGV[i + 1])
    redis.call('HDEL', KEYS[3], ARGV[i + 1])
    redis.call('HDEL', KEYS[6], ARGV[i + 1])
  end
  i = i + 5
end
redis.call('PUBLISH', ARGV[6], '{"env":' .. cjson.encode(ARGV[1]) .. ',"position":{"epoch":"' .. epoch
  .. '","version":' .. version .. '},"changes":' .. ARGV[5] .. '}')
return {'ok', epoch, tostring(version)}
"#;

/// KEYS: meta, history, envs. ARGV: the epoch the caller saw ("" for an environment Redis
/// lost), the new epoch, env, channel.
/// Starts a new history unless someone already did, and tells every node (a notice
/// without changes: nodes catch up, which means a snapshot). A lost environment starts
/// over at version 0 with whatever entries Redis still holds of it.
pub(super) const RESET: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch') or ''
if epoch == ARGV[1] then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[2])
  redis.call('DEL', KEYS[2])
  if epoch == '' then
    redis.call('HSETNX', KEYS[1], 'version', '0')
    redis.call('SADD', KEYS[3], ARGV[3])
  end
  local version = redis.call('HGET', KEYS[1], 'version') or '0'
  redis.call('PUBLISH', ARGV[4], '{"env":' .. cjson.encode(ARGV[3]) .. ',"position":{"epoch":"' .. ARGV[2]
    .. '","version":' .. version .. '},"changes":[]}')
  return ARGV[2]
end
return epoch
"#;
