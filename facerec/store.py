"""The Redis layout: the only module that knows database numbers, key names and scripts.

Databases 1-4 hold exactly the four mappings of the lab assignment, keyed by the plain
name or hash; everything else the service needs lives in database 5 (META):

    1  name -> image hash                       (string)
    2  image hash -> names of the image          (set)
    3  image hash -> face encodings              (string: float32 little-endian, 128 per face)
    4  image hash -> hashes of matching images   (set, symmetric)
    5  image:<hash> status/faces/reason (hash), pending:<hash> names (set),
       dist:<hash> other hash -> best face distance (hash), facelog (list),
       facelog:epoch (string)

`facelog` lists, in commit order, the hashes of the processed images that have faces.
Its epoch (`facelog:epoch`) and length are the version a worker's in-memory index has
seen; the commit script refuses a commit whose version is stale, so every pair of images
is compared exactly once, by whichever of the two committed second (see facerec.pipeline).
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import ParamSpec, TypeVar, cast

import numpy as np
import redis

from facerec.errors import RedisUnavailable
from facerec.faces import ENCODING_DIM, ENCODING_DTYPE
from facerec.settings import Settings

P = ParamSpec("P")
R = TypeVar("R")
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


IMAGE_PREFIX = "image:"
PENDING_PREFIX = "pending:"
DISTANCES_PREFIX = "dist:"


def image_key(image_hash: str) -> str:
    return IMAGE_PREFIX + image_hash


def pending_key(image_hash: str) -> str:
    return PENDING_PREFIX + image_hash


def distances_key(image_hash: str) -> str:
    return DISTANCES_PREFIX + image_hash


def encodings_to_bytes(encodings: np.ndarray) -> bytes:
    return np.ascontiguousarray(encodings, dtype=ENCODING_DTYPE).reshape(-1, ENCODING_DIM).tobytes()


def encodings_from_bytes(blob: bytes) -> np.ndarray:
    if len(blob) % FACE_BYTES:
        raise ValueError(f"encoding blob of {len(blob)} bytes is not a whole number of faces")
    return np.frombuffer(blob, dtype=ENCODING_DTYPE).reshape(-1, ENCODING_DIM)


# Shared Lua prelude: ARGV[1] hash, ARGV[2] number of names, then the names.
_NAMES_PRELUDE = """
local h = ARGV[1]
local nnames = tonumber(ARGV[2])
local names = {}
for j = 1, nnames do names[j] = ARGV[2 + j] end
local rest = 3 + nnames
local function add_names()
  redis.call('SELECT', %(names_db)d)
  for _, n in ipairs(names) do redis.call('SET', n, h) end
  redis.call('SELECT', %(image_names_db)d)
  for _, n in ipairs(names) do redis.call('SADD', h, n) end
  redis.call('SELECT', %(meta)d)
  for _, n in ipairs(names) do redis.call('SREM', '%(pending)s' .. h, n) end
end
redis.call('SELECT', %(meta)d)
local status = redis.call('HGET', '%(image)s' .. h, 'status')
"""

# Commit one processed image to all five databases atomically.
# After the prelude: epoch, version, encodings blob, faces JSON, timestamp, number of
# matches, then (other hash, distance) pairs. Returns {'ok'|'dup'|'stale', log length}.
_COMMIT = _NAMES_PRELUDE + """
local expected_epoch = ARGV[rest]
local expected = tonumber(ARGV[rest + 1])
local blob = ARGV[rest + 2]
local faces = ARGV[rest + 3]
local now = ARGV[rest + 4]
local nmatches = tonumber(ARGV[rest + 5])
local first = rest + 6
if status == 'done' then
  add_names()
  return {'dup', redis.call('LLEN', '%(face_log)s')}
end
local version = redis.call('LLEN', '%(face_log)s')
if version ~= expected or redis.call('GET', '%(face_log_epoch)s') ~= expected_epoch then
  return {'stale', version}
end
add_names()
redis.call('SELECT', %(encodings_db)d)
redis.call('SET', h, blob)
redis.call('SELECT', %(matches_db)d)
for j = 0, nmatches - 1 do
  local other = ARGV[first + 2 * j]
  redis.call('SADD', h, other)
  redis.call('SADD', other, h)
end
redis.call('SELECT', %(meta)d)
for j = 0, nmatches - 1 do
  local other, d = ARGV[first + 2 * j], ARGV[first + 2 * j + 1]
  redis.call('HSET', '%(dist)s' .. h, other, d)
  redis.call('HSET', '%(dist)s' .. other, h, d)
end
if #blob > 0 then
  redis.call('RPUSH', '%(face_log)s', h)
  version = version + 1
end
local key = '%(image)s' .. h
redis.call('HSET', key, 'status', 'done', 'faces', faces, 'updated', now)
redis.call('HDEL', key, 'reason')
redis.call('HINCRBY', key, 'scans', 1)
return {'ok', version}
"""

# A name for an image already processed: record it, return 1; otherwise 0.
_ADD_NAME_IF_DONE = _NAMES_PRELUDE + """
if status == 'done' then add_names() return 1 end
return 0
"""

# An image has been queued: mark it (unless done) and remember its pending name.
_MARK_QUEUED = _NAMES_PRELUDE + """
if status == 'done' then return 0 end
redis.call('HSET', '%(image)s' .. h, 'status', 'queued', 'updated', ARGV[rest])
for _, n in ipairs(names) do redis.call('SADD', '%(pending)s' .. h, n) end
return 1
"""

# Processing failed for good: mark it (unless another delivery finished it).
_MARK_FAILED = _NAMES_PRELUDE + """
if status == 'done' then return 0 end
redis.call('HSET', '%(image)s' .. h, 'status', 'failed', 'reason', ARGV[rest],
           'updated', ARGV[rest + 1])
for _, n in ipairs(names) do redis.call('SADD', '%(pending)s' .. h, n) end
return 1
"""

_DBS = {"names_db": NAME_TO_HASH, "image_names_db": HASH_TO_NAMES,
        "encodings_db": HASH_TO_ENCODINGS, "matches_db": HASH_TO_MATCHES, "meta": META,
        "face_log": FACE_LOG, "face_log_epoch": FACE_LOG_EPOCH, "image": IMAGE_PREFIX,
        "pending": PENDING_PREFIX, "dist": DISTANCES_PREFIX}


@dataclass(frozen=True)
class CommitResult:
    status: str  # "ok", "dup" (already processed: names added) or "stale" (retry)
    version: int  # face log length after the call


@dataclass(frozen=True)
class Match:
    image_hash: str
    distance: float


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
        meta = self._db[META]
        self._commit = meta.register_script(_COMMIT % _DBS)
        self._add_name_if_done = meta.register_script(_ADD_NAME_IF_DONE % _DBS)
        self._mark_queued = meta.register_script(_MARK_QUEUED % _DBS)
        self._mark_failed = meta.register_script(_MARK_FAILED % _DBS)

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
               epoch: str, version: int) -> CommitResult:
        """Commit if the face log is still at (epoch, version); else answer `stale`."""
        names = list(names)
        args: list[bytes | str | int | float] = [image_hash, len(names), *names, epoch, version,
                              encodings_to_bytes(encodings), json.dumps(boxes),
                              f"{time.time():.3f}"]
        match_list = list(matches)
        args.append(len(match_list))
        for m in match_list:
            args += [m.image_hash, f"{m.distance:.6f}"]
        status, new_version = self._commit(args=args)
        return CommitResult(status, int(new_version))

    @_translated
    def add_name_if_processed(self, image_hash: str, name: str) -> bool:
        return bool(self._add_name_if_done(args=[image_hash, 1, name]))

    @_translated
    def mark_queued(self, image_hash: str, name: str) -> None:
        self._mark_queued(args=[image_hash, 1, name, f"{time.time():.3f}"])

    @_translated
    def mark_failed(self, image_hash: str, name: str, reason: str) -> None:
        self._mark_failed(args=[image_hash, 1, name, reason, f"{time.time():.3f}"])

    # -- reads --------------------------------------------------------------------------

    @_translated
    def hash_for_name(self, name: str) -> str | None:
        return cast(str | None, self._db[NAME_TO_HASH].get(name))

    @_translated
    def is_processed(self, image_hash: str) -> bool:
        return self._db[META].hget(image_key(image_hash), "status") == "done"

    @_translated
    def face_log_state(self) -> tuple[str, int]:
        """(epoch, length) of the face log; starts a new epoch if there is none."""
        pipe = self._db[META].pipeline(transaction=True)
        pipe.set(FACE_LOG_EPOCH, uuid.uuid4().hex, nx=True)
        pipe.get(FACE_LOG_EPOCH)
        pipe.llen(FACE_LOG)
        _, epoch, length = pipe.execute()
        return str(epoch), int(length)

    def face_log_since(self, version: int, batch: int = 10_000
                       ) -> Iterator[tuple[str, np.ndarray]]:
        """Yield (hash, encodings) of face-log entries from position `version` on.

        Each batch's blobs are joined and decoded at once: the encodings yielded are views
        into one read-only batch array, so loading costs no numpy call per image.
        """
        while True:
            hashes, blobs = self._log_batch(version, batch)
            if not hashes:
                return
            faces = encodings_from_bytes(b"".join(blobs))
            start = 0
            for h, blob in zip(hashes, blobs, strict=True):
                end = start + len(blob) // FACE_BYTES
                yield h, faces[start:end]
                start = end
            version += len(hashes)

    @_translated
    def _log_batch(self, version: int, batch: int) -> tuple[list[str], list[bytes]]:
        hashes = cast(list[str], self._db[META].lrange(FACE_LOG, version, version + batch - 1))
        if not hashes:
            return [], []
        blobs = cast(list[bytes | None], self._encodings.mget(hashes))
        if None in blobs:
            missing = hashes[blobs.index(None)]
            raise RuntimeError(f"face log lists {missing} but database 3 has no encodings")
        return hashes, cast(list[bytes], blobs)

    @_translated
    def names_of(self, image_hashes: list[str]) -> list[set[str]]:
        pipe = self._db[HASH_TO_NAMES].pipeline(transaction=False)
        for h in image_hashes:
            pipe.smembers(h)
        return [set(s) for s in pipe.execute()]

    @_translated
    def matching_names(self, image_hash: str) -> list[str]:
        """Names of the other images with a face matching one of this image's faces."""
        others = sorted(cast(set[str], self._db[HASH_TO_MATCHES].smembers(image_hash)))
        return sorted(set().union(*self.names_of(others))) if others else []

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
        view: dict[str, object] = {
            "hash": image_hash,
            "status": info.get("status"),
            "names": sorted(names),
            "faces": [{"top": t, "right": r, "bottom": b, "left": lft}
                      for t, r, b, lft in boxes],
            "matches": [{"hash": o, "names": sorted(n),
                         "distance": float(distances[o]) if o in distances else None}
                        for o, n in zip(others, other_names, strict=True)],
        }
        if "reason" in info:
            view["reason"] = info["reason"]
        return view
