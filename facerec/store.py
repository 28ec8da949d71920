"""The Redis layout: the only module that knows database numbers, key names and scripts.

Databases 1-4 hold exactly the four mappings of the lab assignment, keyed by the plain
name or hash; everything else the service needs lives in database 5 (META):

    1  name -> image hash                       (string)
    2  image hash -> names of the image          (set)
    3  image hash -> face encodings              (string: float32 little-endian, 128 per face)
    4  image hash -> hashes of matching images   (set, symmetric)
    5  everything else:
       image:<hash>    status, faces (boxes JSON), reason, updated, scans, pos (hash)
       pending:<hash>  names given while the image is queued (set)
       dist:<hash>     other hash -> best face distance (hash)
       tickets:<hash>  the tickets of its messages not yet settled (set; see below)
       url:<url>       hash fetched from that URL (string): /scan/url's cache, written
                       only for URLs rest fetched itself, never for upload names
       prior:<name>    hashes that had this name before it was given to other bytes (set)
       facelog         hashes of the processed images with faces, in commit order (list);
                       an erased image's entry becomes "" (its position stays)
       facelog:epoch   random id of this face log (string)
       facelog:erased  face-log positions erased, in order (list of integers)
       recent          image hash -> when it was first queued or committed (sorted set):
                       the gallery's order, newest first
       pairs:<hash>    other hash -> which faces matched: "i j d;..." (face i of this
                       image, face j of the other, their distance), one entry per face
                       of this image that matched one of the other's (hash, symmetric)
     people (see "People" below):
       face:<hash>     face position -> person id (hash)
       facehist:<hash> face position -> the person ids it was in before each merge,
                       oldest first, space-separated (hash): what undoing a merge reads
       person:<id>     name, count (faces), rep ("<hash>:<face>", the face shown for
                       it), sum (the sum of its faces' encodings: 128 little-endian
                       doubles; sum / count is its centroid), created (hash)
       person:<id>:faces  its faces, "<hash>:<face>" (set)
       apart:<id>      people never to be merged with this one (set, symmetric)
       people          person id -> number of faces (sorted set): the list, largest first
       people:next     the last person id given (integer)

People. A person is a set of faces (not images: a group photo holds several people). A
new face joins the person of its nearest stored face within PEOPLE_TOLERANCE, provided it
is also close to the person's centroid — the more faces the person has, the closer (see
join_factor); two faces of one photo are never one person. A face that passes that test
for two people merges them when their centroids are close enough too, no photo has a
face in both, neither is marked apart from the other and they do not carry different
names. Everything is decided inside the commit script, so concurrent workers cannot
interleave; the centroid guards are what keep single linkage from chaining different
people together as the collection grows (bench/people_purity.py measures it).
Erasing an image takes its faces out of their people (a person left without faces is
deleted, name included).

The version of a worker's in-memory index is (epoch, face-log length, erasure count); the
commit script refuses a commit whose version is stale, so every pair of images is compared
exactly once, by whichever of the two committed second, and no match is ever recorded
with an image erased meanwhile (see facerec.pipeline).

Tickets keep erased images erased. rest gives each message a random ticket and adds it
to tickets:<hash> before publishing; the worker's writes for that message require it, and
the commit removes it. Erasure deletes the set: a message of an erased image that is still
queued, being processed, or dead-lettered and requeued later finds its ticket gone and
writes nothing, while the same bytes scanned again get a new ticket and a normal scan.
"""

from __future__ import annotations

import functools
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import ParamSpec, TypeVar, cast

import numpy as np
import redis

from facerec.errors import RedisUnavailable, TooManyNames
from facerec.faces import ENCODING_DIM, ENCODING_DTYPE
from facerec.settings import Settings

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
# Redis errors that say "not now" rather than "this is wrong": unreachable, still loading
# its data, or refusing writes (maxmemory with noeviction, a read-only replica).
_OUTAGES = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.OutOfMemoryError,
            redis.exceptions.ReadOnlyError)


def _outage(exc: redis.RedisError) -> bool:
    return isinstance(exc, _OUTAGES) or str(exc).startswith(("OOM", "READONLY", "LOADING"))


def _translated(fn: Callable[P, R]) -> Callable[P, R]:
    """Raise RedisUnavailable for an outage, so no caller sees redis-py's errors."""
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            if _outage(exc):
                raise RedisUnavailable(f"Redis unavailable: {exc}") from exc
            raise
    return wrapper

NAME_TO_HASH = 1
HASH_TO_NAMES = 2
HASH_TO_ENCODINGS = 3
HASH_TO_MATCHES = 4
META = 5
DATABASES = (NAME_TO_HASH, HASH_TO_NAMES, HASH_TO_ENCODINGS, HASH_TO_MATCHES, META)

FACE_LOG = "facelog"
# A random id given to the face log when it is started: a worker whose index carries
# another epoch knows Redis lost or replaced its data, even if the log regrew as long.
FACE_LOG_EPOCH = "facelog:epoch"
FACE_BYTES = ENCODING_DIM * ENCODING_DTYPE.itemsize


# Face-log positions of erased images, in order: workers drop those faces from their index.
FACE_LOG_ERASED = "facelog:erased"
IMAGE_PREFIX = "image:"
PENDING_PREFIX = "pending:"
DISTANCES_PREFIX = "dist:"
TICKETS_PREFIX = "tickets:"
# Names one image may have: bounds what one image costs in Redis and what /match answers
# for it (the lab's body is the full list of names).
MAX_NAMES = 1000
URL_PREFIX = "url:"
PRIOR_PREFIX = "prior:"
RECENT = "recent"
PAIRS_PREFIX = "pairs:"
FACE_PREFIX = "face:"
FACE_HISTORY_PREFIX = "facehist:"
PERSON_PREFIX = "person:"
APART_PREFIX = "apart:"
PEOPLE = "people"
PEOPLE_NEXT = "people:next"


def image_key(image_hash: str) -> str:
    return IMAGE_PREFIX + image_hash


def pending_key(image_hash: str) -> str:
    return PENDING_PREFIX + image_hash


def distances_key(image_hash: str) -> str:
    return DISTANCES_PREFIX + image_hash


def encodings_to_bytes(encodings: np.ndarray) -> bytes:
    return np.ascontiguousarray(encodings, dtype=ENCODING_DTYPE).reshape(-1, ENCODING_DIM).tobytes()


def read_ahead(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Yield what `items` yields, producing up to `depth` items ahead on a daemon thread.
    Its exception is raised here, in order; closing this generator stops the thread."""
    slots: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: str, value: object) -> bool:
        while not stop.is_set():
            try:
                slots.put((kind, value), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put("item", item):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
            put("error", exc)
            return
        put("end", None)

    thread = threading.Thread(target=produce, name="read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "end":
                return
            if kind == "error":
                assert isinstance(value, BaseException)
                raise value
            yield cast(T, value)
    finally:
        stop.set()
        thread.join()


def encodings_from_bytes(blob: bytes) -> np.ndarray:
    if len(blob) % FACE_BYTES:
        raise ValueError(f"encoding blob of {len(blob)} bytes is not a whole number of faces")
    return np.frombuffer(blob, dtype=ENCODING_DTYPE).reshape(-1, ENCODING_DIM)


# Shared Lua prelude: ARGV[1] hash, ARGV[2] the message's ticket ("" for none), ARGV[3]
# number of names, then the names; `rest` indexes the script's own arguments.
_PRELUDE = """
local h = ARGV[1]
local ticket = ARGV[2]
local nnames = tonumber(ARGV[3])
local names = {}
for j = 1, nnames do names[j] = ARGV[3 + j] end
local rest = 4 + nnames
local function add_names()
  for _, n in ipairs(names) do
    redis.call('SELECT', %(names_db)d)
    local old = redis.call('GET', n)
    redis.call('SET', n, h)
    if old and old ~= h then
      redis.call('SELECT', %(meta)d)
      redis.call('SADD', '%(prior)s' .. n, old)
    end
  end
  redis.call('SELECT', %(image_names_db)d)
  for _, n in ipairs(names) do redis.call('SADD', h, n) end
  redis.call('SELECT', %(meta)d)
  for _, n in ipairs(names) do redis.call('SREM', '%(pending)s' .. h, n) end
end
redis.call('SELECT', %(meta)d)
local status = redis.call('HGET', '%(image)s' .. h, 'status')
-- A message without a ticket comes from a version before tickets: always valid.
local valid = ticket == '' or redis.call('SISMEMBER', '%(tickets)s' .. h, ticket) == 1
local function drop_ticket()
  if ticket ~= '' then redis.call('SREM', '%(tickets)s' .. h, ticket) end
end
"""

# People, as Lua functions the commit, erasure and people scripts share (all in META).
_PEOPLE_FUNCTIONS = """
local FACE_F = '<' .. string.rep('f', %(dim)d)
local SUM_D = '<' .. string.rep('d', %(dim)d)
local function face_vector(blob, k)
  local v = {struct.unpack(FACE_F, blob, k * %(face_bytes)d + 1)}
  v[%(dim)d + 1] = nil
  return v
end
local function person_key(p) return '%(person)s' .. p end
local function sum_of(p)
  local v = {struct.unpack(SUM_D, redis.call('HGET', person_key(p), 'sum'))}
  v[%(dim)d + 1] = nil
  return v
end
local function count_of(p) return tonumber(redis.call('HGET', person_key(p), 'count')) end
local function save(p, sum, count)
  redis.call('HSET', person_key(p), 'sum', struct.pack(SUM_D, unpack(sum)), 'count', count)
  if count > 0 then redis.call('ZADD', '%(people)s', count, p) end
end
-- Distance between a vector (or a sum over n faces) and person p's centroid.
local function distance_to(p, v, n)
  local sum, count, t = sum_of(p), count_of(p), 0
  for d = 1, %(dim)d do
    local x = v[d] / n - sum[d] / count
    t = t + x * x
  end
  return math.sqrt(t)
end
local function new_person(now)
  local p = tostring(redis.call('INCR', '%(people_next)s'))
  local zero = {}
  for d = 1, %(dim)d do zero[d] = 0 end
  redis.call('HSET', person_key(p), 'created', now)
  save(p, zero, 0)
  return p
end
local function add_face(p, x, j, v)
  local ref = x .. ':' .. j
  redis.call('HSET', '%(face)s' .. x, j, p)
  redis.call('SADD', person_key(p) .. ':faces', ref)
  local sum, count = sum_of(p), count_of(p)
  for d = 1, %(dim)d do sum[d] = sum[d] + v[d] end
  save(p, sum, count + 1)
  if count == 0 then redis.call('HSET', person_key(p), 'rep', ref) end
end
local function drop_person(p)
  for _, o in ipairs(redis.call('SMEMBERS', '%(apart)s' .. p)) do
    redis.call('SREM', '%(apart)s' .. o, p)
  end
  redis.call('DEL', person_key(p), person_key(p) .. ':faces', '%(apart)s' .. p)
  redis.call('ZREM', '%(people)s', p)
end
-- Take face j of image x out of its person (v: its encoding).
local function remove_face(x, j, v)
  local p = redis.call('HGET', '%(face)s' .. x, j)
  if not p then return end
  local ref = x .. ':' .. j
  redis.call('HDEL', '%(face)s' .. x, j)
  redis.call('SREM', person_key(p) .. ':faces', ref)
  local count = count_of(p) - 1
  if count <= 0 then drop_person(p) return end
  local sum = sum_of(p)
  for d = 1, %(dim)d do sum[d] = sum[d] - v[d] end
  save(p, sum, count)
  if redis.call('HGET', person_key(p), 'rep') == ref then
    redis.call('HSET', person_key(p), 'rep', redis.call('SRANDMEMBER', person_key(p) .. ':faces'))
  end
end
-- Why p and q may not be one person (nil if they may): a photo with a face in each, a
-- mark that they are apart.
local function conflict(p, q)
  if redis.call('SISMEMBER', '%(apart)s' .. p, q) == 1 then return 'marked apart' end
  local small, other = p, q
  local function size(x) return redis.call('SCARD', person_key(x) .. ':faces') end
  if size(q) < size(p) then small, other = q, p end
  for _, ref in ipairs(redis.call('SMEMBERS', person_key(small) .. ':faces')) do
    local x = string.match(ref, '^(.*):')
    for _, o in ipairs(redis.call('HVALS', '%(face)s' .. x)) do
      if o == other then return 'a photo has a face of each' end
    end
  end
  return nil
end
-- Move every face of `from` into `into` (`from` is deleted; its name is kept if `into`
-- has none). Each face remembers where it was, for undoing the merge.
local function merge(from, into)
  local sum, count = sum_of(into), count_of(into)
  local add = sum_of(from)
  for d = 1, %(dim)d do sum[d] = sum[d] + add[d] end
  for _, ref in ipairs(redis.call('SMEMBERS', person_key(from) .. ':faces')) do
    local x, j = string.match(ref, '^(.*):(%%d+)$')
    redis.call('HSET', '%(face)s' .. x, j, into)
    local hist = redis.call('HGET', '%(facehist)s' .. x, j)
    redis.call('HSET', '%(facehist)s' .. x, j, hist and (hist .. ' ' .. from) or from)
    redis.call('SADD', person_key(into) .. ':faces', ref)
  end
  save(into, sum, count + count_of(from))
  local name = redis.call('HGET', person_key(from), 'name')
  if name and not redis.call('HGET', person_key(into), 'name') then
    redis.call('HSET', person_key(into), 'name', name)
  end
  for _, o in ipairs(redis.call('SMEMBERS', '%(apart)s' .. from)) do
    if o ~= into then
      redis.call('SADD', '%(apart)s' .. into, o)
      redis.call('SADD', '%(apart)s' .. o, into)
    end
  end
  drop_person(from)
end
-- How much closer than tol a face must be to the centroid of a person of n faces. tol is
-- a distance between two faces (s * sqrt(2) for one identity, if a face lies about s
-- from its identity's centre); a new face lies about s * sqrt(1 + 1/n) from the centroid
-- of n faces, so the ratio would be sqrt((1 + 1/n) / 2): 1 for one face, 0.71 for many.
-- 2 / (n + 1) instead of 1 / n is kinder to small people (0.91 instead of 0.87 at n = 2):
-- the shared photos' hardest positive (alex-lacamoire.png) is 0.485 from the centroid of
-- his two other photos. Without this shrinking, a person of many faces keeps accepting
-- faces of look-alikes within tol of its centroid, its centroid drifts, and people chain
-- (bench/people_purity.py).
local function join_factor(n) return math.sqrt((1 + 2 / (n + 1)) / 2) end
-- The faces of image h (encodings blob) join people; links are {face, other hash,
-- other face, distance}, nearest first, all within tol. A face joins the person of its
-- nearest linked face if it is within tol * join_factor(n) of that person's centroid. A
-- face that also passes that test for a second person merges the two when the centroid
-- of the first with the face and the centroid of the second are within
-- tol * sqrt((1/n + 1/m) / 2) (the same reasoning for two centroids), no photo has a
-- face in both, neither is marked apart and they do not carry two different names.
local function place_faces(h, blob, links, tol, now)
  local n = math.floor(#blob / %(face_bytes)d)
  local vectors, placed, taken = {}, {}, {}
  for i = 0, n - 1 do vectors[i] = face_vector(blob, i) end
  for _, l in ipairs(links) do
    local i = l[1]
    local p = redis.call('HGET', '%(face)s' .. l[2], l[3])
    if p and not taken[p] and redis.call('EXISTS', person_key(p)) == 1 then
      local q = placed[i]
      if not q then
        if distance_to(p, vectors[i], 1) <= tol * join_factor(count_of(p)) then
          placed[i], taken[p] = p, true
        end
      elseif q ~= p then
        local pn = redis.call('HGET', person_key(p), 'name')
        local qn = redis.call('HGET', person_key(q), 'name')
        local joined, n = sum_of(q), count_of(q) + 1
        for d = 1, %(dim)d do joined[d] = joined[d] + vectors[i][d] end
        local m = count_of(p)
        if not (pn and qn and pn ~= qn) and distance_to(p, vectors[i], 1) <= tol * join_factor(m)
            and distance_to(p, joined, n) <= tol * math.sqrt((1 / n + 1 / m) / 2)
            and not conflict(p, q) then
          local into, from = q, p
          if (pn and not qn) or (not (qn and not pn) and count_of(p) > count_of(q)) then
            into, from = p, q
          end
          merge(from, into)
          placed[i], taken[from], taken[into] = into, nil, true
        end
      end
    end
  end
  for i = 0, n - 1 do add_face(placed[i] or new_person(now), h, i, vectors[i]) end
end
"""

# Erase one image everywhere (a Lua function the two erasure scripts share). Returns nil
# when nothing is known of it, else {faces, matches, name...}.
_ERASE_FUNCTION = _PEOPLE_FUNCTIONS + """
local function erase(x)
  redis.call('SELECT', %(meta)d)
  local info = redis.call('EXISTS', '%(image)s' .. x, '%(tickets)s' .. x, '%(pending)s' .. x)
  local pending = redis.call('SMEMBERS', '%(pending)s' .. x)
  local pos = redis.call('HGET', '%(image)s' .. x, 'pos')
  redis.call('SELECT', %(image_names_db)d)
  local all = redis.call('SMEMBERS', x)
  redis.call('SELECT', %(encodings_db)d)
  local blob = redis.call('GET', x)
  if info == 0 and #all == 0 and not blob then return nil end
  for _, n in ipairs(pending) do table.insert(all, n) end
  for _, n in ipairs(all) do
    redis.call('SELECT', %(names_db)d)
    if redis.call('GET', n) == x then redis.call('DEL', n) end
    redis.call('SELECT', %(meta)d)
    if redis.call('GET', '%(url)s' .. n) == x then redis.call('DEL', '%(url)s' .. n) end
    redis.call('SREM', '%(prior)s' .. n, x)
  end
  redis.call('SELECT', %(image_names_db)d)
  redis.call('DEL', x)
  redis.call('SELECT', %(encodings_db)d)
  redis.call('DEL', x)
  redis.call('SELECT', %(matches_db)d)
  local others = redis.call('SMEMBERS', x)
  for _, o in ipairs(others) do redis.call('SREM', o, x) end
  redis.call('DEL', x)
  redis.call('SELECT', %(meta)d)
  for _, o in ipairs(others) do
    redis.call('HDEL', '%(dist)s' .. o, x)
    redis.call('HDEL', '%(pairs)s' .. o, x)
  end
  local placed = redis.call('HGETALL', '%(face)s' .. x)
  for k = 1, #placed, 2 do
    remove_face(x, placed[k], face_vector(blob, tonumber(placed[k])))
  end
  redis.call('DEL', '%(dist)s' .. x, '%(pairs)s' .. x, '%(image)s' .. x, '%(pending)s' .. x,
             '%(tickets)s' .. x, '%(face)s' .. x, '%(facehist)s' .. x)
  redis.call('ZREM', '%(recent)s', x)
  if pos then
    redis.call('LSET', '%(face_log)s', tonumber(pos), '')
    redis.call('RPUSH', '%(face_log_erased)s', pos)
  end
  local out = {blob and math.floor(#blob / %(face_bytes)d) or 0, #others}
  for _, n in ipairs(all) do table.insert(out, n) end
  return out
end
"""

# Commit one processed image to all five databases atomically, and place its faces in
# people. After the prelude: epoch, face-log length, erasure count, encodings blob, faces
# JSON, timestamp, number of matches, then per match (other hash, distance, its face pairs
# seen from this image, seen from the other: see pairs:<hash>), then PEOPLE_TOLERANCE,
# the number of links, then per link (face, other hash, other face, distance), nearest
# first.
# Returns {status, face-log length}:
#   ok     committed
#   dup    already processed (by another message: its names added; or by this same
#          message, redelivered after a crash: nothing to add)
#   stale  the face log moved (commits or erasures): sync the index and retry
#   erased the image was erased since this message was queued: nothing written
_COMMIT = _PRELUDE + _PEOPLE_FUNCTIONS + """
local expected_epoch = ARGV[rest]
local expected = tonumber(ARGV[rest + 1])
local expected_erased = tonumber(ARGV[rest + 2])
local blob = ARGV[rest + 3]
local faces = ARGV[rest + 4]
local now = ARGV[rest + 5]
local nmatches = tonumber(ARGV[rest + 6])
local first = rest + 7
local after = first + 4 * nmatches
local tol = tonumber(ARGV[after])
local links = {}
for k = 0, tonumber(ARGV[after + 1]) - 1 do
  local at = after + 2 + 4 * k
  links[k + 1] = {tonumber(ARGV[at]), ARGV[at + 1], ARGV[at + 2], tonumber(ARGV[at + 3])}
end
local version = redis.call('LLEN', '%(face_log)s')
if not valid then
  if status == 'done' then return {'dup', version} end
  return {'erased', version}
end
if status == 'done' then
  add_names()
  drop_ticket()
  return {'dup', version}
end
if version ~= expected or redis.call('GET', '%(face_log_epoch)s') ~= expected_epoch
    or redis.call('LLEN', '%(face_log_erased)s') ~= expected_erased then
  return {'stale', version}
end
add_names()
redis.call('SELECT', %(encodings_db)d)
redis.call('SET', h, blob)
redis.call('SELECT', %(matches_db)d)
for j = 0, nmatches - 1 do
  local other = ARGV[first + 4 * j]
  redis.call('SADD', h, other)
  redis.call('SADD', other, h)
end
redis.call('SELECT', %(meta)d)
for j = 0, nmatches - 1 do
  local at = first + 4 * j
  local other, d = ARGV[at], ARGV[at + 1]
  redis.call('HSET', '%(dist)s' .. h, other, d)
  redis.call('HSET', '%(dist)s' .. other, h, d)
  if ARGV[at + 2] ~= '' then
    redis.call('HSET', '%(pairs)s' .. h, other, ARGV[at + 2])
    redis.call('HSET', '%(pairs)s' .. other, h, ARGV[at + 3])
  end
end
local key = '%(image)s' .. h
if #blob > 0 then
  redis.call('RPUSH', '%(face_log)s', h)
  redis.call('HSET', key, 'pos', version)
  version = version + 1
  place_faces(h, blob, links, tol, now)
end
redis.call('ZADD', '%(recent)s', 'NX', now, h)
redis.call('HSET', key, 'status', 'done', 'faces', faces, 'updated', now)
redis.call('HDEL', key, 'reason')
redis.call('HINCRBY', key, 'scans', 1)
drop_ticket()
return {'ok', version}
"""

# rest, before anything leaves (so that an error answer means nothing was queued): for a
# processed image, record the name and answer 'dup'; otherwise give the message its
# ticket, mark the image queued with its pending name, remember which hash a fetched URL
# gave, and answer 'queued'; 'full' (nothing written) when the image has MAX_NAMES names
# already and this is a new one. ARGV after the prelude: now, url ("" for an upload).
_PREPARE = _PRELUDE + """
redis.call('SELECT', %(image_names_db)d)
local known = redis.call('SCARD', h)
local named = nnames > 0 and redis.call('SISMEMBER', h, names[1]) == 1
redis.call('SELECT', %(meta)d)
known = known + redis.call('SCARD', '%(pending)s' .. h)
named = named or (nnames > 0 and redis.call('SISMEMBER', '%(pending)s' .. h, names[1]) == 1)
if known >= %(max_names)d and not named then return 'full' end
if status == 'done' then add_names() return 'dup' end
if ticket ~= '' then redis.call('SADD', '%(tickets)s' .. h, ticket) end
local key = '%(image)s' .. h
redis.call('HSET', key, 'status', 'queued', 'updated', ARGV[rest])
redis.call('HDEL', key, 'reason')
for _, n in ipairs(names) do redis.call('SADD', '%(pending)s' .. h, n) end
if ARGV[rest + 1] ~= '' then redis.call('SET', '%(url)s' .. ARGV[rest + 1], h) end
redis.call('ZADD', '%(recent)s', 'NX', ARGV[rest], h)
return 'queued'
"""

# rest, when the message could not be stored or published: undo what _PREPARE wrote,
# unless another scan of the image is queued or it was processed meanwhile. ARGV after
# the prelude: url ("" for an upload), the reason.
_RELEASE = _PRELUDE + """
drop_ticket()
if status ~= 'queued' or redis.call('SCARD', '%(tickets)s' .. h) > 0 then return 0 end
for _, n in ipairs(names) do redis.call('SREM', '%(pending)s' .. h, n) end
local url = ARGV[rest]
if url ~= '' and redis.call('GET', '%(url)s' .. url) == h then
  redis.call('DEL', '%(url)s' .. url)
end
if redis.call('SCARD', '%(pending)s' .. h) == 0 then
  redis.call('DEL', '%(image)s' .. h)
  redis.call('ZREM', '%(recent)s', h)
else
  redis.call('HSET', '%(image)s' .. h, 'status', 'failed', 'reason', ARGV[rest + 1])
end
return 1
"""

# The worker, before processing: 'dup' (processed: names added), 'done' (processed from
# this very message, or erased and scanned again since: nothing to add), 'erased' or 'todo'.
_CHECK_MESSAGE = _PRELUDE + """
if status == 'done' then
  if valid then add_names() drop_ticket() return 'dup' end
  return 'done'
end
if not valid then return 'erased' end
return 'todo'
"""

# Processing failed for good: mark it, unless another delivery finished it or it was
# erased. The ticket stays: a dead letter requeued later may still be processed.
_MARK_FAILED = _PRELUDE + """
if status == 'done' or not valid then return 0 end
redis.call('HSET', '%(image)s' .. h, 'status', 'failed', 'reason', ARGV[rest],
           'updated', ARGV[rest + 1])
for _, n in ipairs(names) do redis.call('SADD', '%(pending)s' .. h, n) end
return 1
"""

# ARGV[1] hash. Returns erase()'s answer.
_ERASE_IMAGE = _ERASE_FUNCTION + """
return erase(ARGV[1])
"""

# ARGV[1] a name. Removes it from the image it names and from the images that had it
# before; an image left without any name is erased. Returns nil for an unknown name, else
# {hash it named, then for each image erased: {hash, faces, matches, name...}}.
_ERASE_NAME = _ERASE_FUNCTION + """
local n = ARGV[1]
redis.call('SELECT', %(names_db)d)
local h = redis.call('GET', n)
redis.call('SELECT', %(meta)d)
local prior = redis.call('SMEMBERS', '%(prior)s' .. n)
if not h and #prior == 0 then return nil end
redis.call('DEL', '%(prior)s' .. n)
local out = {h or ''}
local holders = prior
if h then table.insert(holders, h) end
redis.call('SELECT', %(names_db)d)
redis.call('DEL', n)
for _, x in ipairs(holders) do
  redis.call('SELECT', %(image_names_db)d)
  redis.call('SREM', x, n)
  local left = redis.call('SCARD', x)
  redis.call('SELECT', %(meta)d)
  redis.call('SREM', '%(pending)s' .. x, n)
  if redis.call('GET', '%(url)s' .. n) == x then redis.call('DEL', '%(url)s' .. n) end
  left = left + redis.call('SCARD', '%(pending)s' .. x)
  if left == 0 then
    local erased = erase(x)
    if erased then
      table.insert(erased, 1, x)
      table.insert(out, erased)
    end
  end
end
return out
"""

# A person merged into another at a user's request. ARGV: into, from. Returns 'ok',
# 'missing' (either is unknown), or why they cannot be merged.
_MERGE_PEOPLE = _PEOPLE_FUNCTIONS + """
local into, from = ARGV[1], ARGV[2]
if redis.call('EXISTS', person_key(into)) == 0 or redis.call('EXISTS', person_key(from)) == 0 then
  return 'missing'
end
if into == from then return 'already one person' end
local why = conflict(into, from)
if why then return why end
merge(from, into)
return 'ok'
"""

# Faces moved out of a person into a new one, which is marked apart from it (so that no
# face joining later merges them again). ARGV: person id, now, then "<hash>:<face>" refs.
# Returns {'ok', new id}, {'missing'}, {'not in person', ref} or {'every face'}.
_SPLIT_PERSON = _PEOPLE_FUNCTIONS + """
local p, now = ARGV[1], ARGV[2]
if redis.call('EXISTS', person_key(p)) == 0 then return {'missing'} end
local refs = {}
for k = 3, #ARGV do
  if redis.call('SISMEMBER', person_key(p) .. ':faces', ARGV[k]) == 0 then
    return {'not in person', ARGV[k]}
  end
  refs[ARGV[k]] = true
end
local moving = {}
for ref in pairs(refs) do table.insert(moving, ref) end
if #moving >= count_of(p) then return {'every face'} end
local q = new_person(now)
for _, ref in ipairs(moving) do
  local x, j = string.match(ref, '^(.*):(%%d+)$')
  redis.call('SELECT', %(encodings_db)d)
  local v = face_vector(redis.call('GET', x), tonumber(j))
  redis.call('SELECT', %(meta)d)
  remove_face(x, j, v)
  add_face(q, x, j, v)
  local hist = redis.call('HGET', '%(facehist)s' .. x, j)
  redis.call('HSET', '%(facehist)s' .. x, j, hist and (hist .. ' ' .. p) or p)
end
redis.call('SADD', '%(apart)s' .. p, q)
redis.call('SADD', '%(apart)s' .. q, p)
return {'ok', q}
"""

# Two people marked never to be merged (by a face joining later, or by hand). ARGV: the
# two ids. Returns 'ok', 'missing' or 'same'.
_MARK_APART = """
local a, b = ARGV[1], ARGV[2]
if redis.call('EXISTS', '%(person)s' .. a) == 0 or redis.call('EXISTS', '%(person)s' .. b) == 0 then
  return 'missing'
end
if a == b then return 'same' end
redis.call('SADD', '%(apart)s' .. a, b)
redis.call('SADD', '%(apart)s' .. b, a)
return 'ok'
"""

# Place the faces of an image committed before people existed (python -m worker
# --upgrade). ARGV: hash, PEOPLE_TOLERANCE, now, the number of links, then the links
# as for a commit. Returns 'ok', 'placed' (its faces are in people already) or 'gone'.
_PLACE_IMAGE = _PEOPLE_FUNCTIONS + """
local h = ARGV[1]
redis.call('SELECT', %(encodings_db)d)
local blob = redis.call('GET', h)
redis.call('SELECT', %(meta)d)
if not blob or #blob == 0 then return 'gone' end
if redis.call('EXISTS', '%(face)s' .. h) == 1 then return 'placed' end
local links = {}
for k = 0, tonumber(ARGV[4]) - 1 do
  local at = 5 + 4 * k
  links[k + 1] = {tonumber(ARGV[at]), ARGV[at + 1], ARGV[at + 2], tonumber(ARGV[at + 3])}
end
place_faces(h, blob, links, tonumber(ARGV[2]), ARGV[3])
return 'ok'
"""

# ARGV: person id, then 1 and the name, or 0 to clear it. Returns 0 if the person is unknown.
_NAME_PERSON = """
local key = '%(person)s' .. ARGV[1]
if redis.call('EXISTS', key) == 0 then return 0 end
if ARGV[2] == '1' then
  redis.call('HSET', key, 'name', ARGV[3])
else
  redis.call('HDEL', key, 'name')
end
return 1
"""

_DBS = {"names_db": NAME_TO_HASH, "image_names_db": HASH_TO_NAMES,
        "encodings_db": HASH_TO_ENCODINGS, "matches_db": HASH_TO_MATCHES, "meta": META,
        "face_log": FACE_LOG, "face_log_epoch": FACE_LOG_EPOCH,
        "face_log_erased": FACE_LOG_ERASED, "image": IMAGE_PREFIX, "pending": PENDING_PREFIX,
        "dist": DISTANCES_PREFIX, "tickets": TICKETS_PREFIX, "url": URL_PREFIX,
        "prior": PRIOR_PREFIX, "face_bytes": FACE_BYTES, "max_names": MAX_NAMES,
        "recent": RECENT, "pairs": PAIRS_PREFIX, "face": FACE_PREFIX,
        "facehist": FACE_HISTORY_PREFIX, "person": PERSON_PREFIX, "apart": APART_PREFIX,
        "people": PEOPLE, "people_next": PEOPLE_NEXT, "dim": ENCODING_DIM}


@dataclass(frozen=True)
class CommitResult:
    status: str  # "ok", "dup", "stale" or "erased" (see _COMMIT)
    version: int  # face log length after the call


@dataclass(frozen=True)
class Match:
    """A stored image with a face within tolerance: its best face's distance, and which
    face matched which (-1 where not known)."""

    image_hash: str
    distance: float
    face: int = -1         # the face asked about, by its position in its own image
    stored_face: int = -1  # the stored image's face, by its position in that image


@dataclass(frozen=True)
class LogState:
    """Where the face log stands: what a worker's index must have seen to commit."""

    epoch: str
    length: int   # entries (erased ones included: their positions stay)
    erased: int   # erasures so far


@dataclass(frozen=True)
class Erased:
    """What an erasure removed."""

    image_hash: str
    names: list[str]
    faces: int
    matches: int  # other images whose match sets lost it


def _args(image_hash: str, ticket: str, names: Iterable[str], *more: bytes | str | int | float
          ) -> list[bytes | str | int | float]:
    names = list(names)
    return [image_hash, ticket, len(names), *names, *more]


def _now() -> str:
    return f"{time.time():.3f}"


class Store:
    """Typed access to the five databases. Thread-safe (redis-py pools connections)."""

    def __init__(self, settings: Settings) -> None:
        def client(db: int, decode: bool) -> redis.Redis:
            return redis.Redis(host=settings.redis_host, port=settings.redis_port,
                               password=settings.redis_password or None, db=db,
                               decode_responses=decode, socket_connect_timeout=3,
                               socket_timeout=10, health_check_interval=15)

        self._db = {db: client(db, True) for db in DATABASES}
        self._encodings = client(HASH_TO_ENCODINGS, False)
        self.people_tolerance = min(settings.people_tolerance, settings.match_tolerance)
        meta = self._db[META]
        self._commit = meta.register_script(_COMMIT % _DBS)
        self._prepare = meta.register_script(_PREPARE % _DBS)
        self._check_message = meta.register_script(_CHECK_MESSAGE % _DBS)
        self._release = meta.register_script(_RELEASE % _DBS)
        self._mark_failed = meta.register_script(_MARK_FAILED % _DBS)
        self._erase_image = meta.register_script(_ERASE_IMAGE % _DBS)
        self._erase_name = meta.register_script(_ERASE_NAME % _DBS)
        self._merge_people = meta.register_script(_MERGE_PEOPLE % _DBS)
        self._name_person = meta.register_script(_NAME_PERSON % _DBS)
        self._split_person = meta.register_script(_SPLIT_PERSON % _DBS)
        self._mark_apart = meta.register_script(_MARK_APART % _DBS)
        self._place_image = meta.register_script(_PLACE_IMAGE % _DBS)

    def close(self) -> None:
        for c in (*self._db.values(), self._encodings):
            c.close()

    @_translated
    def ping(self) -> bool:
        return bool(self._db[META].ping())

    # -- writes -------------------------------------------------------------------------

    @_translated
    def commit(self, image_hash: str, names: Iterable[str], encodings: np.ndarray,
               boxes: list[tuple[int, int, int, int]], matches: Iterable[Match],
               state: LogState, ticket: str = "") -> CommitResult:
        """Commit if the face log is still at `state`; else answer `stale` (see _COMMIT).

        `matches` may hold several per other image, one per face of this image that
        matched it (Match.face, Match.stored_face): the image's distance is the best one.
        """
        by_image: dict[str, list[Match]] = {}
        for m in matches:
            by_image.setdefault(m.image_hash, []).append(m)
        args: list[bytes | str | int | float] = []
        links: list[Match] = []
        for other, found in by_image.items():
            known = sorted((m for m in found if m.face >= 0),
                           key=lambda m: (m.face, m.distance))
            # The exact float (repr round-trips): /match?tolerance compares with it.
            args += [other, repr(min(float(m.distance) for m in found)),
                     ";".join(f"{m.face} {m.stored_face} {m.distance!r}" for m in known),
                     ";".join(f"{m.stored_face} {m.face} {m.distance!r}" for m in known)]
            links += known
        args += self._link_args(links)
        status, new_version = self._commit(args=_args(
            image_hash, ticket, names, state.epoch, state.length, state.erased,
            encodings_to_bytes(encodings), json.dumps(boxes), _now(), len(by_image),
            *args[:4 * len(by_image)], repr(self.people_tolerance), *args[4 * len(by_image):]))
        return CommitResult(status, int(new_version))

    def _link_args(self, matches: Iterable[Match]) -> list[bytes | str | int | float]:
        """The links the people scripts take: their number, then (face, other hash, other
        face, distance) for each match within PEOPLE_TOLERANCE, nearest first."""
        links = sorted((m for m in matches if m.face >= 0 and m.distance <= self.people_tolerance),
                       key=lambda m: (m.distance, m.face, m.image_hash))
        out: list[bytes | str | int | float] = [len(links)]
        for m in links:
            out += [m.face, m.image_hash, m.stored_face, repr(float(m.distance))]
        return out

    @_translated
    def place_faces(self, image_hash: str, matches: Iterable[Match]) -> str:
        """Place the faces of an image committed before people existed, given its matches
        (Match.face set): "ok", "placed" (they were already) or "gone" (erased)."""
        return str(self._place_image(args=[image_hash, repr(self.people_tolerance), _now(),
                                           *self._link_args(matches)]))

    @_translated
    def date_unlisted_images(self) -> int:
        """Give the gallery order (`recent`) every image written before it existed, dated
        by its last update; the number added."""
        meta = self._db[META]
        added = 0
        batch: list[str] = []

        def flush() -> int:
            pipe = meta.pipeline(transaction=False)
            for key in batch:
                pipe.hget(key, "updated")
            dates = pipe.execute()
            pipe = meta.pipeline(transaction=False)
            for key, updated in zip(batch, dates, strict=True):
                pipe.zadd(RECENT, {key.removeprefix(IMAGE_PREFIX): float(updated or 0)},
                          nx=True)
            return sum(int(n) for n in pipe.execute())
        for key in meta.scan_iter(f"{IMAGE_PREFIX}*", count=1000):
            batch.append(key)
            if len(batch) == 1000:
                added += flush()
                batch.clear()
        return added + (flush() if batch else 0)

    @_translated
    def unplaced(self, image_hashes: list[str]) -> list[bool]:
        """For each image, True if its faces are in no person yet."""
        pipe = self._db[META].pipeline(transaction=False)
        for h in image_hashes:
            pipe.exists(FACE_PREFIX + h)
        return [not found for found in pipe.execute()]

    @_translated
    def prepare(self, image_hash: str, name: str, ticket: str, url: str = "") -> bool:
        """Before queueing: True if the image is processed (the name is recorded, nothing
        to queue); else its ticket is given and it is marked queued (see _PREPARE).
        TooManyNames if it has MAX_NAMES names already and this one is new."""
        answer = str(self._prepare(args=_args(image_hash, ticket, [name], _now(), url)))
        if answer == "full":
            raise TooManyNames(f"this image has {MAX_NAMES} names already: remove one "
                               f"(DELETE /name/...) before giving it another")
        return answer == "dup"

    @_translated
    def release(self, image_hash: str, name: str, ticket: str, url: str, reason: str) -> None:
        """The message of prepare() was not queued after all: undo what it wrote."""
        self._release(args=_args(image_hash, ticket, [name], url, reason))

    @_translated
    def check_message(self, image_hash: str, name: str, ticket: str) -> str:
        """'todo', 'dup' (processed: name recorded), 'done' (nothing to add) or 'erased'."""
        return str(self._check_message(args=_args(image_hash, ticket, [name])))

    @_translated
    def mark_failed(self, image_hash: str, name: str, reason: str, ticket: str = "") -> None:
        self._mark_failed(args=_args(image_hash, ticket, [name], reason, _now()))

    @_translated
    def erase_image(self, image_hash: str) -> Erased | None:
        """Erase an image from all five databases; None if nothing was known of it."""
        out = self._erase_image(args=[image_hash])
        if out is None:
            return None
        return Erased(image_hash, sorted(set(out[2:])), int(out[0]), int(out[1]))

    @_translated
    def erase_name(self, name: str) -> tuple[str, list[Erased]] | None:
        """Remove a name everywhere; images left without a name are erased too.

        Returns (the hash the name pointed to, or "", the images erased), or None if the
        name is unknown.
        """
        out = self._erase_name(args=[name])
        if out is None:
            return None
        erased = [Erased(str(e[0]), sorted(set(e[3:])), int(e[1]), int(e[2])) for e in out[1:]]
        return str(out[0]), erased

    # -- reads --------------------------------------------------------------------------

    @_translated
    def hash_for_name(self, name: str) -> str | None:
        return cast(str | None, self._db[NAME_TO_HASH].get(name))

    @_translated
    def hash_for_url(self, url: str) -> str | None:
        """The hash a URL gave when rest fetched it (never an upload's name)."""
        return cast(str | None, self._db[META].get(URL_PREFIX + url))

    @_translated
    def is_processed(self, image_hash: str) -> bool:
        return self._db[META].hget(image_key(image_hash), "status") == "done"

    @_translated
    def face_log_state(self) -> LogState:
        """Where the face log stands; starts a new epoch if there is none."""
        pipe = self._db[META].pipeline(transaction=True)
        pipe.set(FACE_LOG_EPOCH, uuid.uuid4().hex, nx=True)
        pipe.get(FACE_LOG_EPOCH)
        pipe.llen(FACE_LOG)
        pipe.llen(FACE_LOG_ERASED)
        _, epoch, length, erased = pipe.execute()
        return LogState(str(epoch), int(length), int(erased))

    @_translated
    def erasures_since(self, count: int) -> list[int]:
        """Face-log positions erased after the first `count` erasures, in order."""
        return [int(p) for p in self._db[META].lrange(FACE_LOG_ERASED, count, -1)]

    def face_log_batches(self, version: int, batch: int = 10_000, ahead: bool = False
                         ) -> Iterator[tuple[list[str], list[bytes]]]:
        """The face log from position `version` on, in batches of (hashes, blobs): an
        erased entry is ("", b""). What the index loads (FaceIndex.extend_blobs).

        ahead: read the next batch on a second thread while the caller handles one (a
        worker's start-up: Redis and the encoding overlap)."""
        def batches() -> Iterator[tuple[list[str], list[bytes]]]:
            at = version
            while True:
                hashes, blobs = self._log_batch(at, batch)
                if not hashes:
                    return
                yield hashes, blobs
                at += len(hashes)
        return read_ahead(batches()) if ahead else batches()

    @_translated
    def encoding_blobs(self, image_hashes: list[str]) -> list[bytes | None]:
        """The stored encodings of these images (None for one that is gone), in one MGET:
        how a worker's index re-checks its candidates without holding the vectors."""
        if not image_hashes:
            return []
        return cast(list[bytes | None], self._encodings.mget(image_hashes))

    @_translated
    def _log_batch(self, version: int, batch: int) -> tuple[list[str], list[bytes]]:
        hashes = cast(list[str], self._db[META].lrange(FACE_LOG, version, version + batch - 1))
        if not hashes:
            return [], []
        live = [h for h in hashes if h]
        found = cast(list[bytes | None], self._encodings.mget(live)) if live else []
        if None in found:
            missing = live[found.index(None)]
            raise RuntimeError(f"face log lists {missing} but database 3 has no encodings")
        blobs = iter(cast(list[bytes], found))
        return hashes, [next(blobs) if h else b"" for h in hashes]

    @_translated
    def names_of(self, image_hashes: list[str]) -> list[set[str]]:
        pipe = self._db[HASH_TO_NAMES].pipeline(transaction=False)
        for h in image_hashes:
            pipe.smembers(h)
        return [set(s) for s in pipe.execute()]

    @_translated
    def matching_names(self, image_hash: str, tolerance: float | None = None) -> list[str]:
        """Names of the other images with a face matching one of this image's faces; with
        `tolerance`, only those whose best face distance is at most that."""
        if tolerance is None:
            others = sorted(cast(set[str], self._db[HASH_TO_MATCHES].smembers(image_hash)))
        else:
            distances = cast(dict[str, str], self._db[META].hgetall(distances_key(image_hash)))
            others = sorted(o for o, d in distances.items() if float(d) <= tolerance)
        return sorted(set().union(*self.names_of(others))) if others else []

    @_translated
    def image_states(self, image_hashes: list[str]) -> dict[str, dict[str, object] | None]:
        """Where each image stands — status, reason, number of faces, names (as
        image_view gives them) — or None if never seen; one round trip per database
        for the whole batch (what a page polling its uploads asks)."""
        meta = self._db[META].pipeline(transaction=False)
        for h in image_hashes:
            meta.hmget(image_key(h), "status", "reason", "faces")
            meta.smembers(pending_key(h))
        answers = meta.execute()
        names = self.names_of(image_hashes)
        out: dict[str, dict[str, object] | None] = {}
        for h, (status, reason, boxes), pending, known in zip(
                image_hashes, answers[::2], answers[1::2], names, strict=True):
            out[h] = None if status is None else {
                "status": status, "reason": reason, "faces": len(json.loads(boxes or "[]")),
                "names": sorted(known | set(pending))}
        return out

    @_translated
    def image_view(self, image_hash: str) -> dict[str, object] | None:
        """Everything known about one image, or None when it was never seen."""
        meta = self._db[META].pipeline(transaction=False)
        meta.hgetall(image_key(image_hash))
        meta.smembers(pending_key(image_hash))
        meta.hgetall(distances_key(image_hash))
        info, pending, distances = meta.execute()
        if not info:
            return None
        names = self.names_of([image_hash])[0] | set(pending)
        others = sorted(cast(set[str], self._db[HASH_TO_MATCHES].smembers(image_hash)))
        other_names = self.names_of(others)
        boxes = json.loads(info.get("faces", "[]"))
        meta = self._db[META].pipeline(transaction=False)
        meta.hgetall(FACE_PREFIX + image_hash)
        meta.hgetall(PAIRS_PREFIX + image_hash)
        people, pairs = meta.execute()
        face_matches: list[list[dict[str, object]]] = [[] for _ in boxes]
        for other, found in pairs.items():
            for i, j, d in parse_pairs(found):
                if i < len(boxes):
                    face_matches[i].append({"hash": other, "face": j, "distance": d})
        view: dict[str, object] = {
            "hash": image_hash,
            "status": info.get("status"),
            "names": sorted(names),
            "faces": [{"top": t, "right": r, "bottom": b, "left": lft,
                       "person": int(people[str(k)]) if str(k) in people else None,
                       "matches": sorted(face_matches[k], key=lambda m: (m["distance"],
                                                                          m["hash"]))}
                      for k, (t, r, b, lft) in enumerate(boxes)],
            "matches": [{"hash": o, "names": sorted(n),
                         "distance": float(distances[o]) if o in distances else None}
                        for o, n in zip(others, other_names, strict=True)],
        }
        if "reason" in info:
            view["reason"] = info["reason"]
        return view

    # -- people -------------------------------------------------------------------------

    def _summaries(self, ids: list[str]) -> list[dict[str, object]]:
        """The list form of these people (id, name, faces, representative face)."""
        meta = self._db[META]
        pipe = meta.pipeline(transaction=False)
        for pid in ids:
            pipe.hmget(PERSON_PREFIX + pid, "name", "count", "rep")
        rows = [(pid, *row) for pid, row in zip(ids, pipe.execute(), strict=True)
                if row[1] is not None]
        refs = [_face_ref(rep) for _, _, _, rep in rows]
        boxes = self.face_boxes([h for h, _ in refs])
        return [{"id": int(pid), "name": name, "faces": int(count),
                 "face": {"hash": h, "face": j, "box": _box_at(boxes.get(h), j)}}
                for (pid, name, count, _), (h, j) in zip(rows, refs, strict=True)]

    def face_boxes(self, image_hashes: Iterable[str]) -> dict[str, list[list[int]]]:
        """The face boxes ([top, right, bottom, left]) of these images ([] if unknown)."""
        unique = sorted(set(image_hashes))
        pipe = self._db[META].pipeline(transaction=False)
        for h in unique:
            pipe.hget(image_key(h), "faces")
        return {h: json.loads(b or "[]") for h, b in zip(unique, pipe.execute(), strict=True)}

    @_translated
    def people_page(self, offset: int, limit: int) -> tuple[int, list[dict[str, object]]]:
        """(number of people, the people ranked offset..offset+limit-1, largest first)."""
        meta = self._db[META]
        ids = cast(list[str], meta.zrevrange(PEOPLE, offset, offset + limit - 1))
        return int(meta.zcard(PEOPLE)), self._summaries(ids)

    @_translated
    def person_summary(self, person_id: int) -> dict[str, object] | None:
        """A person as people_page lists it, or None."""
        found = self._summaries([str(person_id)])
        return found[0] if found else None

    @_translated
    def person(self, person_id: int) -> dict[str, object] | None:
        """A person with all its faces (image hash, position, box, the image's names)."""
        person = self.person_summary(person_id)
        if person is None:
            return None
        refs = sorted(_face_ref(r) for r in cast(set[str], self._db[META].smembers(
            f"{PERSON_PREFIX}{person_id}:faces")))
        hashes = [h for h, _ in refs]
        boxes = self.face_boxes(hashes)
        unique = sorted(set(hashes))
        names = dict(zip(unique, self.names_of(unique), strict=True))
        person["faces"] = [{"hash": h, "face": j, "box": _box_at(boxes.get(h), j),
                            "names": sorted(names[h])} for h, j in refs]
        return person

    @_translated
    def people_of(self, faces: list[tuple[str, int]]) -> dict[tuple[str, int], dict[str, object]]:
        """The person ({"id", "name"}) of each of these faces (image hash, position) that
        is in one."""
        meta = self._db[META]
        pipe = meta.pipeline(transaction=False)
        for h, j in faces:
            pipe.hget(FACE_PREFIX + h, str(j))
        ids = dict(zip(faces, pipe.execute(), strict=True))
        known = sorted({p for p in ids.values() if p is not None})
        pipe = meta.pipeline(transaction=False)
        for pid in known:
            pipe.hget(PERSON_PREFIX + pid, "name")
        names = dict(zip(known, pipe.execute(), strict=True))
        return {f: {"id": int(p), "name": names[p]} for f, p in ids.items() if p is not None}

    @_translated
    def person_images(self, person_id: int) -> list[str]:
        """The images holding a face of this person."""
        refs = cast(set[str], self._db[META].smembers(f"{PERSON_PREFIX}{person_id}:faces"))
        return sorted({_face_ref(r)[0] for r in refs})

    @_translated
    def name_person(self, person_id: int, name: str | None) -> bool:
        """Give a person a name (None: clear it); False if there is no such person."""
        args: list[str | int] = [person_id, 1, name] if name is not None else [person_id, 0]
        return bool(self._name_person(args=args))

    @_translated
    def merge_people(self, into: int, other: int) -> str:
        """Move every face of `other` into `into`: "ok", "missing", or why they cannot be
        merged (already one person, a photo holds a face of each, marked apart)."""
        return str(self._merge_people(args=[into, other]))

    @_translated
    def split_person(self, person_id: int, faces: list[tuple[str, int]]) -> tuple[str, int]:
        """Move these faces (image hash, position) of a person into a new person, marked
        apart from it: ("ok", the new id), or (why not, 0)."""
        answer = self._split_person(args=[person_id, _now(), *(f"{h}:{j}" for h, j in faces)])
        return (str(answer[0]), int(answer[1])) if answer[0] == "ok" else (str(answer[0]), 0)

    @_translated
    def mark_apart(self, person_id: int, other: int) -> str:
        """Never merge these two people: "ok", "missing" or "same"."""
        return str(self._mark_apart(args=[person_id, other]))

    @_translated
    def recent_images(self, offset: int, limit: int, name_filter: str = ""
                      ) -> tuple[int, list[dict[str, object]]]:
        """(number of images, their views newest first from `offset`); with a filter,
        only images with a name containing it (case-insensitive), counted among the
        newest 10,000."""
        meta = self._db[META]
        if not name_filter:
            hashes = cast(list[str], meta.zrevrange(RECENT, offset, offset + limit - 1))
            total = int(meta.zcard(RECENT))
        else:
            wanted = name_filter.casefold()
            newest = cast(list[str], meta.zrevrange(RECENT, 0, 9_999))
            names = self.names_of(newest)
            pipe = meta.pipeline(transaction=False)
            for h in newest:
                pipe.smembers(pending_key(h))
            hits = [h for h, n, p in zip(newest, names, pipe.execute(), strict=True)
                    if any(wanted in x.casefold() for x in n | set(p))]
            total, hashes = len(hits), hits[offset:offset + limit]
        views = [self.image_view(h) for h in hashes]
        return total, [v for v in views if v is not None]


def parse_pairs(text: str) -> list[tuple[int, int, float]]:
    """A pairs:<hash> value: (face of this image, face of the other, distance) each."""
    out = []
    for part in text.split(";") if text else []:
        i, j, d = part.split(" ")
        out.append((int(i), int(j), float(d)))
    return out


def _face_ref(ref: str) -> tuple[str, int]:
    h, _, j = ref.rpartition(":")
    return h, int(j)


def _box_at(boxes: list[list[int]] | None, j: int) -> list[int] | None:
    return boxes[j] if boxes is not None and 0 <= j < len(boxes) else None
