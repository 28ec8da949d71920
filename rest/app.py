"""The Flask application (app factory). Routes keep the lab assignment's paths exactly."""

from __future__ import annotations

import hmac
import threading
import time
from typing import Any

import redis
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from facerec import faces, metrics
from facerec.broker import Broker
from facerec.errors import (BrokerUnavailable, FetchError, ForbiddenURL, InvalidImage,
                            InvalidMessage)
from facerec.fetch import Fetcher, check_url
from facerec.imagestore import StoreUnavailable, open_store
from facerec.messages import MAX_NAME_LENGTH, OUTCOME_HEADER, ImageMessage, is_image_hash
from facerec.settings import Settings
from facerec.store import Store
from facerec.topiclog import setup_logging
from rest.openapi import SPEC

# Errors of ours, mapped once to an HTTP status and a metrics label.
_STATUS: tuple[tuple[type[Exception], int, str], ...] = (
    (ForbiddenURL, 400, "forbidden_url"), (InvalidMessage, 400, "invalid_name"),
    (InvalidImage, 400, "invalid_image"), (FetchError, 422, "fetch_failed"),
    (BrokerUnavailable, 503, "broker_unavailable"), (redis.RedisError, 503, "redis_unavailable"),
    (StoreUnavailable, 503, "store_unavailable"),
)
_REASONS = {400: "bad_request", 401: "unauthorized", 404: "not_found", 413: "too_large",
            415: "unsupported_type", 422: "not_an_image"}
_OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/metrics", "/openapi.json"})


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask("rest")
    # Werkzeug refuses a larger Content-Length at once; read_body() enforces the cap itself
    # for chunked bodies, which have none (one byte more tells "over the cap" apart).
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes + 1
    app.json.sort_keys = False  # type: ignore[attr-defined]
    log = setup_logging(settings, "rest")
    store = Store(settings)
    images = open_store(settings)
    fetcher = Fetcher(settings.max_upload_bytes, settings.fetch_timeout,
                      settings.fetch_max_redirects, settings.fetch_allow_networks)
    local = threading.local()  # pika connections are not thread-safe: one per thread

    def broker() -> Broker:
        if not hasattr(local, "broker"):
            local.broker = Broker(settings)
        return local.broker

    def read_body() -> bytes:
        cap = settings.max_upload_bytes
        data = request.stream.read(cap + 1)
        if len(data) > cap:
            raise ApiError(413, f"image larger than the cap of {cap} bytes")
        return data

    def answer(image_hash: str, outcome: str) -> Response:
        # The body stays the lab's {"hash": ...}; the header tells clients what happened.
        response = jsonify(hash=image_hash)
        response.headers[OUTCOME_HEADER] = outcome
        return response

    def queue_image(data: bytes, name: str, kind: str) -> Response:
        msg = ImageMessage.for_image(data, name, kind)
        g.detail = f"hash {msg.image_hash}, {len(data)} bytes"
        if store.add_name_if_processed(msg.image_hash, name):
            g.detail += ", already processed: name added"
            metrics.SCANS_ACCEPTED.labels(kind, "duplicate").inc()
            return answer(msg.image_hash, "duplicate")
        if not images.inline:
            # Claim check: the object exists before the message that names it.
            uploaded = images.put(msg.image_hash, data)
            metrics.STORE_UPLOADS.labels("uploaded" if uploaded else "existed").inc()
            g.detail += ", uploaded" if uploaded else ", already in the store"
            msg = msg.stored_at(images.ref(msg.image_hash))
        broker().publish_image(msg)
        store.mark_queued(msg.image_hash, name)
        g.detail += ", queued"
        metrics.SCANS_ACCEPTED.labels(kind, "queued").inc()
        return answer(msg.image_hash, "queued")

    @app.before_request
    def start_and_authorize() -> None:
        g.start = time.perf_counter()
        g.detail = ""
        if settings.api_token and request.path.startswith("/scan/"):
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_token}".encode()):
                raise ApiError(401, "missing or wrong bearer token")

    @app.after_request
    def log_call(response: Response) -> Response:
        seconds = time.perf_counter() - g.get("start", time.perf_counter())
        route = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.REQUEST_SECONDS.labels(request.method, route).observe(seconds)
        if request.path.startswith("/scan/") and response.status_code >= 400:
            kind = "url" if request.path == "/scan/url" else "upload"
            reason = g.get("reason") or _REASONS.get(response.status_code,
                                                     str(response.status_code))
            metrics.SCANS_REJECTED.labels(kind, reason).inc()
        if request.path not in _OPEN_PATHS:
            log.info("%s %s -> %d (%.1f ms)", request.method, request.path,
                     response.status_code, seconds * 1000)
            if g.get("detail"):
                log.debug("%s %s: %s", request.method, request.path, g.detail)
        return response

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> tuple[Response, int]:
        g.detail = str(exc)
        return jsonify(error=str(exc)), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        g.detail = exc.description or ""
        response = jsonify(error=exc.description or exc.name)
        for key, value in exc.get_headers():  # e.g. Allow on 405
            if key.lower() not in ("content-type", "content-length"):
                response.headers[key] = value
        return response, exc.code or 500

    for error_type, status, reason in _STATUS:
        def handler(exc: Exception, status: int = status,
                    reason: str = reason) -> tuple[Response, int]:
            g.detail = repr(exc)
            g.reason = reason
            message = str(exc) if status != 503 else f"service unavailable: {exc}"
            return jsonify(error=message), status
        app.register_error_handler(error_type, handler)

    @app.get("/")
    def index() -> Response:
        return jsonify(service="facerec", status="ok")

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        checks = {"redis": False, "rabbitmq": broker().ping()}
        try:
            checks["redis"] = store.ping()
        except redis.RedisError:
            pass
        ready = all(checks.values())
        return jsonify(ready=ready, **checks), 200 if ready else 503

    @app.get("/openapi.json")
    def openapi() -> Response:
        return jsonify(SPEC)

    @app.get("/metrics")
    def metrics_text() -> Response:
        body, content_type = metrics.render()
        return Response(body, content_type=content_type)

    @app.post("/scan/image/<path:filename>")
    def scan_image(filename: str) -> Response:
        if len(filename) > MAX_NAME_LENGTH:
            raise ApiError(400, f"file name longer than {MAX_NAME_LENGTH} characters")
        data = read_body()
        if not data:
            raise ApiError(400, "empty body: send the image bytes as the request body")
        faces.validate(data, settings.max_image_pixels)
        return queue_image(data, filename, "upload")

    @app.post("/scan/url")
    def scan_url() -> Response:
        body: Any = request.get_json(silent=True)
        url = body.get("url") if isinstance(body, dict) else None
        if not isinstance(url, str):
            raise ApiError(400, 'send JSON {"url": "http(s)://..."}')
        check_url(url)
        known = store.hash_for_name(url)
        if known:
            g.detail = f"hash {known}: URL already scanned, not fetched again"
            metrics.SCANS_ACCEPTED.labels("url", "known_url").inc()
            return answer(known, "known_url")
        data = fetcher.fetch(url)
        try:
            faces.validate(data, settings.max_image_pixels)
        except InvalidImage as exc:
            raise ApiError(422, f"URL did not yield an image: {exc}") from None
        return queue_image(data, url, "url")

    def checked_hash(image_hash: str) -> str:
        if not is_image_hash(image_hash):
            raise ApiError(400, "hash must be 64 lowercase hex digits (SHA-256)")
        return image_hash

    @app.get("/match/<image_hash>")
    def match(image_hash: str) -> Response:
        return jsonify(store.matching_names(checked_hash(image_hash)))

    @app.get("/image/<image_hash>")
    def image(image_hash: str) -> Response:
        view = store.image_view(checked_hash(image_hash))
        if view is None:
            raise ApiError(404, "no image with this hash was ever scanned")
        return jsonify(view)

    @app.get("/image/<image_hash>/content")
    def image_content(image_hash: str) -> Response:
        checked_hash(image_hash)
        if images.inline:
            raise ApiError(404, "images are not stored (IMAGE_STORE=inline)")
        data = images.read(image_hash)
        if data is None:
            raise ApiError(404, "no stored image with this hash")
        kind = faces.image_format(data)
        return Response(data, content_type=f"image/{kind.lower()}" if kind
                        else "application/octet-stream")

    return app
