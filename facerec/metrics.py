"""Prometheus metrics: every metric of rest and worker is defined here, once.

rest runs several gunicorn processes, so it uses prometheus-client's multiprocess mode
(PROMETHEUS_MULTIPROC_DIR, set up by `python -m rest`); the worker is one process and
serves its default registry on METRICS_PORT.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)

# -- rest ---------------------------------------------------------------------------------
SCANS_ACCEPTED = Counter("facerec_scans_accepted_total",
                         "Scans answered with a hash", ["kind", "outcome"])
SCANS_REJECTED = Counter("facerec_scans_rejected_total",
                         "Scans refused, by reason", ["kind", "reason"])
STORE_UPLOADS = Counter("facerec_store_uploads_total",
                        "Images written to the image store (uploaded) or found there (existed)",
                        ["outcome"])
ERASURES = Counter("facerec_erasures_total",
                   "Erasures: images erased by hash (image) or with their last name (name), "
                   "names removed from images that keep others (name_only)", ["what"])
PEOPLE_CHANGES = Counter("facerec_people_changes_total",
                         "People named or merged by a user", ["change"])
REQUEST_SECONDS = Histogram("facerec_http_request_seconds", "REST request latency",
                            ["method", "route"],
                            buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10))

# -- worker -------------------------------------------------------------------------------
IMAGES = Counter("facerec_images_total", "Image messages settled, by outcome", ["outcome"])
FACES_FOUND = Counter("facerec_faces_found_total", "Faces found in processed images")
PROCESSING_SECONDS = Histogram("facerec_processing_seconds",
                               "Decode + detect + encode + match + commit, per image",
                               buckets=(.1, .25, .5, 1, 2, 4, 8, 16, 32, 64))
MATCH_SECONDS = Histogram("facerec_match_seconds", "Index search per image (all its faces)",
                          buckets=(.0001, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1))
SEARCHES = Counter("facerec_searches_total", "Searches (ask without storing), by outcome",
                   ["outcome"])
SEARCH_SECONDS = Histogram("facerec_search_seconds",
                           "POST /search as rest sees it: validation, the worker's detection "
                           "and matching, names", buckets=(.01, .025, .05, .1, .25, .5, 1, 2,
                                                           4, 8, 16))
COMMIT_RETRIES = Counter("facerec_commit_retries_total",
                         "Commits retried because another worker committed first")
REDELIVERIES = Counter("facerec_redeliveries_total",
                       "Messages received again after an earlier delivery was not acked")
INDEX_FACES = Gauge("facerec_index_faces", "Face encodings held in the worker's memory",
                    multiprocess_mode="livesum")
INDEX_BYTES = Gauge("facerec_index_bytes", "Bytes of the worker's in-memory index",
                    multiprocess_mode="livesum")


def render() -> tuple[bytes, str]:
    """The exposition text for this process, or for all of rest's processes."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def serve(port: int) -> None:
    """Serve /metrics on `port` from a background thread (0 disables)."""
    if port:
        start_http_server(port)
