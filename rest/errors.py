"""Errors as JSON, mapped once; and what happens around every request (auth, metrics, log)."""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from facerec import metrics
from facerec.errors import (
    BrokerUnavailable,
    FetchError,
    ForbiddenURL,
    ImageStoreUnavailable,
    InvalidImage,
    InvalidMessage,
    RedisUnavailable,
)
from rest.services import services

# Errors of ours, mapped once to an HTTP status and a metrics label.
STATUS: tuple[tuple[type[Exception], int, str], ...] = (
    (ForbiddenURL, 400, "forbidden_url"), (InvalidMessage, 400, "invalid_name"),
    (InvalidImage, 400, "invalid_image"), (FetchError, 422, "fetch_failed"),
    (BrokerUnavailable, 503, "broker_unavailable"), (RedisUnavailable, 503, "redis_unavailable"),
    (ImageStoreUnavailable, 503, "store_unavailable"),
)
_REASONS = {400: "bad_request", 401: "unauthorized", 404: "not_found", 413: "too_large",
            415: "unsupported_type", 422: "not_an_image"}
# Probes and scrapes: not logged (they would drown the log).
QUIET_PATHS = frozenset({"/", "/healthz", "/readyz", "/metrics", "/openapi.json"})


class ApiError(Exception):
    """An answer other than 200, with the message the caller reads."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _start_and_authorize() -> None:
    g.start = time.perf_counter()
    g.detail = ""
    token = services().settings.api_token
    if token and request.path.startswith("/scan/"):
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise ApiError(401, "missing or wrong bearer token")


def _measure_and_log(response: Response) -> Response:
    seconds = time.perf_counter() - g.get("start", time.perf_counter())
    route = request.url_rule.rule if request.url_rule else "unmatched"
    metrics.REQUEST_SECONDS.labels(request.method, route).observe(seconds)
    if request.path.startswith("/scan/") and response.status_code >= 400:
        kind = "url" if request.path == "/scan/url" else "upload"
        reason = g.get("reason") or _REASONS.get(response.status_code, str(response.status_code))
        metrics.SCANS_REJECTED.labels(kind, reason).inc()
    if request.path not in QUIET_PATHS:
        log = services().log
        log.info("%s %s -> %d (%.1f ms)", request.method, request.path,
                 response.status_code, seconds * 1000)
        if g.get("detail"):
            log.debug("%s %s: %s", request.method, request.path, g.detail)
    return response


def _api_error(exc: ApiError) -> tuple[Response, int]:
    g.detail = str(exc)
    return jsonify(error=str(exc)), exc.status


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    g.detail = exc.description or ""
    response = jsonify(error=exc.description or exc.name)
    for key, value in exc.get_headers():  # e.g. Allow on 405
        if key.lower() not in ("content-type", "content-length"):
            response.headers[key] = value
    return response, exc.code or 500


def _ours(status: int, reason: str) -> Callable[[Exception], tuple[Response, int]]:
    def handler(exc: Exception) -> tuple[Response, int]:
        g.detail = repr(exc)
        g.reason = reason
        message = str(exc) if status != 503 else f"service unavailable: {exc}"
        return jsonify(error=message), status
    return handler


def init_app(app: Flask) -> None:
    app.before_request(_start_and_authorize)
    app.after_request(_measure_and_log)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    for error_type, status, reason in STATUS:
        app.register_error_handler(error_type, _ours(status, reason))
