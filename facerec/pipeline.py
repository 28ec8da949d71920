"""Processing one image: decode, detect, match, commit — the same work for a queue message,
a command-line file or a test's function call.

The commit protocol keeps matches exact under any number of workers. A worker matches
against the faces its index holds (face-log version v) and commits with "expect version
v". If another worker committed meanwhile, the script answers `stale`; the worker loads
only the delta, compares the new image with those faces, and tries again. So every pair of
images is compared by whichever committed second, against a complete view, and the final
databases do not depend on the number of workers or the order of processing.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from facerec import faces as face_ops
from facerec import metrics
from facerec.errors import ImageStoreUnavailable, RedisUnavailable
from facerec.imagestore import ImageStore, InlineStore, check_ref
from facerec.matcher import FaceIndex, RedisVectors, keep_nearest, release_free_heap
from facerec.messages import ImageMessage
from facerec.retry import Backoff, retry
from facerec.settings import Settings
from facerec.store import LogState, Match, Store, encodings_from_bytes

T = TypeVar("T")
# Outages waited out in place: they say nothing about the image, so they use no attempt.
WAITED_OUT = (RedisUnavailable, ImageStoreUnavailable)
# Face-log entries read from Redis at a time while loading the index.
_LOAD_BATCH = 10_000
# Called at the named points of processing ("before_commit", "after_commit") with the
# message: the way tests inject faults (tests/fault_worker.py). Production installs none.
Hook = Callable[[str, ImageMessage], None]


@dataclass
class Outcome:
    image_hash: str
    status: str  # "processed", "duplicate" (already processed: name added, no scan) or
    # "erased" (erased after it was queued: nothing written)
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    matches: dict[str, Match] = field(default_factory=dict)
    retries: int = 0  # stale commits retried (another worker committed meanwhile)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {"hash": self.image_hash, "status": self.status, "faces": len(self.boxes),
                "matches": {h: round(m.distance, 6) for h, m in sorted(self.matches.items())},
                "retries": self.retries, "seconds": round(self.seconds, 3)}


class Processor:
    """Owns a worker's face index and turns image messages into committed results."""

    def __init__(self, settings: Settings, store: Store, log: logging.Logger | None = None,
                 stop: threading.Event | None = None,
                 images: ImageStore | None = None, hook: Hook | None = None) -> None:
        self.settings = settings
        self.store = store
        self.images = images or InlineStore()
        # The index holds 96-byte codes per face; the full vectors stay in Redis and only a
        # search's few candidates are read back (facerec.matcher.RedisVectors).
        self.index = FaceIndex(vectors=RedisVectors(store.encoding_blobs))
        self.erased = 0  # erasures of the face log applied to the index
        # The index is read by searches on another thread while the image thread commits:
        # every use of it holds this lock (a commit holds it for its Redis round trips only,
        # never during decoding or detection).
        self.index_lock = threading.RLock()
        self.log = log or logging.getLogger("facerec.worker")
        self.stop = stop or threading.Event()
        self.hook = hook

    def with_retry(self, what: str, fn: Callable[[], T]) -> T:
        """Run fn, waiting out Redis and image-store outages (until asked to stop)."""
        def log(exc: BaseException, delay: float) -> None:
            self.log.info("%s unavailable during %s (%s); retrying in %.1fs",
                          "image store" if isinstance(exc, ImageStoreUnavailable) else "Redis",
                          what, exc, delay)
        return retry(fn, on=WAITED_OUT, backoff=Backoff(first=0.25, maximum=5.0),
                     stop=self.stop, log=log)

    def sync(self) -> bool:
        """Bring the index up to the face log: load new entries, forget erased ones.

        True if matches computed against the old index may be wrong: it was rebuilt from
        scratch (Redis lost or replaced its data) or images were erased since.
        """
        def load() -> bool:
            state = self.store.face_log_state()
            rebuilt = (state.epoch != self.index.epoch or state.length < self.index.version
                       or state.erased < self.erased)
            if rebuilt:
                if self.index.version:
                    self.log.info("face log epoch changed: reloading the index")
                self.index.clear()
                self.index.epoch = state.epoch
                self.erased = 0
            loaded = 0
            # A long way behind (start-up): the next batch is read while one is encoded.
            ahead = state.length - self.index.version > 2 * _LOAD_BATCH
            for hashes, blobs in self.store.face_log_batches(self.index.version, _LOAD_BATCH,
                                                             ahead=ahead):
                loaded += self.index.extend_blobs(hashes, blobs)
            if loaded > 100_000:
                release_free_heap()  # the batches' buffers, returned to the OS
            # Positions beyond what was just loaded are ignored by remove(): they arrive
            # later as tombstones. Either way they count as seen.
            positions = self.store.erasures_since(self.erased)
            if positions:
                removed = self.index.remove(positions)
                self.erased += len(positions)
                self.log.info("index: %d erased images forgotten (%d faces)", len(positions),
                              removed)
            return rebuilt or bool(positions)
        return self.with_retry("index sync", load)

    @property
    def state(self) -> LogState:
        """The face-log state this worker's index has seen (what a commit expects)."""
        return LogState(self.index.epoch, self.index.version, self.erased)

    def update_index_gauges(self) -> None:
        metrics.INDEX_FACES.set(self.index.live_faces)
        metrics.INDEX_BYTES.set(self.index.nbytes)

    def load_index(self) -> None:
        start = time.monotonic()
        self.sync()
        self.update_index_gauges()
        self.log.info("index loaded: %d faces of %d images in %.2fs (%s scan)",
                      self.index.n_faces, self.index.version, time.monotonic() - start,
                      self.index.kernel_detail)

    def process(self, msg: ImageMessage) -> Outcome:
        """Process one validated image message. Raises InvalidImage for bad bytes."""
        start = time.monotonic()
        h = msg.image_hash
        stored = bool(msg.ref)
        if stored:
            check_ref(self.images, h, msg.ref)
        known = self.with_retry("dedup check", lambda: self.store.check_message(
            h, msg.name, msg.ticket))
        if known != "todo":
            if known == "erased":
                self.log.info("image %s was erased after it was queued: dropped", h)
                metrics.IMAGES.labels("erased").inc()
                return Outcome(h, "erased", seconds=time.monotonic() - start)
            self.log.info("image %s already processed%s", h,
                          f": added name {msg.name!r}" if known == "dup" else "")
            metrics.IMAGES.labels("duplicate").inc()
            self.discard_stored(h, stored)
            return Outcome(h, "duplicate", seconds=time.monotonic() - start)
        if stored:
            msg = msg.with_body(self.with_retry("image download", lambda: self.images.get(h)))
        self.log.debug("image %s (%r, %d bytes): decoding", h, msg.name, len(msg.body))
        rgb = face_ops.decode(msg.body, self.settings.max_image_pixels)
        found = face_ops.find_faces(rgb, self.settings.detection_model,
                                    self.settings.detect_max_side, self.settings.detect_upsample)
        self.log.debug("image %s: %d faces found in %dx%d pixels", h, len(found.boxes),
                       rgb.shape[1], rgb.shape[0])
        if self.hook is not None:
            self.hook("before_commit", msg)
        outcome = self.commit_faces(h, msg.name, found, start, ticket=msg.ticket)
        if self.hook is not None:
            self.hook("after_commit", msg)
        self.discard_stored(h, stored)
        return outcome

    def discard_stored(self, image_hash: str, stored: bool) -> None:
        """Delete a processed image from the store unless IMAGE_STORE_KEEP says keep it."""
        if stored and not self.settings.image_store_keep:
            self.with_retry("image delete", lambda: self.images.delete(image_hash))
            self.log.debug("image %s: deleted from the store", image_hash)

    def search(self, found: face_ops.Faces, tolerance: float, limit: int | None
               ) -> list[list[Match]]:
        """For each face, the stored images with a face within `tolerance` of it, nearest
        first (at most `limit`): against everything committed now, nothing written."""
        with self.index_lock:
            self.sync()
            with metrics.MATCH_SECONDS.time():
                per_face = self.with_retry("search", lambda: self.index.search_each(
                    found.encodings, tolerance))
        return [sorted(matches.values(), key=lambda m: (m.distance, m.image_hash))[:limit]
                for matches in per_face]

    def place_people(self, progress: Callable[[int, int], None] | None = None
                     ) -> tuple[int, int]:
        """Place in people the faces of images committed before people existed, in
        commit order; (images placed, images looked at). Idempotent, and safe beside
        working workers: an image placed meanwhile (by its commit or another run) is
        skipped, an image erased meanwhile is skipped. Needs the index loaded."""
        placed = seen = 0
        for hashes, blobs in self.store.face_log_batches(0):
            live = [(h, b) for h, b in zip(hashes, blobs, strict=True) if h]
            todo = self.with_retry("people check", functools.partial(
                self.store.unplaced, [h for h, _ in live]))
            for (h, blob), unplaced in zip(live, todo, strict=True):
                seen += 1
                if not unplaced:
                    continue
                encodings = encodings_from_bytes(blob)
                with self.index_lock:
                    per_face = self.with_retry("people match", functools.partial(
                        self.index.search_each, encodings, self.store.people_tolerance,
                        exclude=h))
                links = [m for found in per_face for m in found.values()]
                if self.with_retry("people place", functools.partial(
                        self.store.place_faces, h, links)) == "ok":
                    placed += 1
            if progress is not None:
                progress(placed, seen)
        return placed, seen

    def commit_faces(self, h: str, name: str, found: face_ops.Faces,
                     start: float | None = None, ticket: str = "") -> Outcome:
        with self.index_lock:
            return self._commit_faces(h, name, found, start, ticket)

    def _commit_faces(self, h: str, name: str, found: face_ops.Faces,
                      start: float | None, ticket: str) -> Outcome:
        """Match found faces against the index and commit, retrying on a stale version.

        Optimistic: the index is brought up to date only when the commit script says
        another worker committed (then only the delta is searched) or an image was erased
        since (then the faces are searched again: a match found before may be gone).
        """
        start = time.monotonic() if start is None else start
        outcome = Outcome(h, "processed", boxes=found.boxes)
        # Per face of this image, its best match in each stored image (which face matched
        # which is stored too, and places the faces in people).
        per_face: list[dict[str, Match]] = [{} for _ in found.boxes]
        searched_from = 0
        while True:
            searched_to = self.index.n_faces
            with metrics.MATCH_SECONDS.time():
                delta = self.with_retry("match", functools.partial(
                    self.index.search_each, found.encodings, self.settings.match_tolerance,
                    exclude=h, start_face=searched_from))
            for best, more in zip(per_face, delta, strict=True):
                keep_nearest(best, more)
            pairs = [m for best in per_face for m in best.values()]
            result = self.with_retry("commit", functools.partial(
                self.store.commit, h, [name], found.encodings, found.boxes, pairs,
                self.state, ticket))
            if result.status == "ok":
                self.index.add(h, found.encodings)
                break
            if result.status == "dup":
                self.log.info("image %s committed meanwhile by another worker: added name %r",
                              h, name)
                metrics.IMAGES.labels("duplicate").inc()
                return Outcome(h, "duplicate", seconds=time.monotonic() - start)
            if result.status == "erased":
                self.log.info("image %s was erased while it was processed: dropped", h)
                metrics.IMAGES.labels("erased").inc()
                return Outcome(h, "erased", seconds=time.monotonic() - start)
            outcome.retries += 1
            metrics.COMMIT_RETRIES.inc()
            self.log.debug("image %s: face log moved from %d to %d images; matching the delta",
                           h, self.index.version, result.version)
            if self.sync():
                searched_from = 0  # forget matches to images the index no longer has
                for best in per_face:
                    best.clear()
            else:
                searched_from = searched_to
        for best in per_face:
            keep_nearest(outcome.matches, best)
        outcome.seconds = time.monotonic() - start
        metrics.IMAGES.labels("processed").inc()
        metrics.FACES_FOUND.inc(len(found.boxes))
        metrics.PROCESSING_SECONDS.observe(outcome.seconds)
        self.update_index_gauges()
        self.log.info("image %s (%r) stored: %d faces, %d matching images, %.2fs",
                      h, name, len(found.boxes), len(outcome.matches), outcome.seconds)
        return outcome
