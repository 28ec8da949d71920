"""Errors as JSON, mapped once; and what happens around every request (auth, metrics, log)."""

from __future__ import annotations

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
    SearchUnavailable,
    TooManyNames,
)
from rest.services import services

# Errors of ours, mapped once to an HTTP status and a metrics label.
STATUS: tuple[tuple[type[Exception], int, str], ...] = (
    (ForbiddenURL, 400, "forbidden_url"), (InvalidMessage, 400, "invalid_name"),
    (InvalidImage, 400, "invalid_image"), (FetchError, 422, "fetch_failed"),
    (TooManyNames, 409, "too_many_names"),
    (BrokerUnavailable, 503, "broker_unavailable"), (RedisUnavailable, 503, "redis_unavailable"),
    (ImageStoreUnavailable, 503, "store_unavailable"),
    (SearchUnavailable, 503, "search_unavailable"),
)
_REASONS = {400: "bad_request", 401: "unauthorized", 404: "not_found", 413: "too_large",
            415: "unsupported_type", 422: "not_an_image"}
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Probes and scrapes: not logged (they would drown the log).
QUIET_PATHS = frozenset({"/", "/healthz", "/readyz", "/metrics", "/openapi.json"})


class ApiError(Exception):
    """An answer other than 200, with the message the caller reads."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _start() -> None:
    g.start = time.perf_counter()
    g.detail = ""


def _measure_and_log(response: Response) -> Response:
    seconds = time.perf_counter() - g.get("start", time.perf_counter())
    # Labels only from fixed sets: an invented method must not become a new time series.
    route = request.url_rule.rule if request.url_rule else "unmatched"
    method = request.method if request.method in _METHODS else "other"
    metrics.REQUEST_SECONDS.labels(method, route).observe(seconds)
    if request.path.startswith("/scan/") and response.status_code >= 400:
        kind = "url" if request.path == "/scan/url" else "upload"
        reason = g.get("reason") or _REASONS.get(response.status_code, str(response.status_code))
        metrics.SCANS_REJECTED.labels(kind, reason).inc()
    if request.path not in QUIET_PATHS:
        log = services().log
        who = g.get("credential")
        log.info("%s %s -> %d (%.1f ms)%s", request.method, request.path,
                 response.status_code, seconds * 1000, f" by {who}" if who else "")
        if g.get("detail"):
            log.debug("%s %s: %s", request.method, request.path, g.detail)
    return response


def _api_error(exc: ApiError) -> tuple[Response, int]:
    g.detail = str(exc)
    response = jsonify(error=str(exc))
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="facerec"'
    return response, exc.status


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


def init_app(app: Flask, authorize: Callable[[], None]) -> None:
    app.before_request(_start)
    app.before_request(authorize)
    app.after_request(_measure_and_log)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    for error_type, status, reason in STATUS:
        app.register_error_handler(error_type, _ours(status, reason))
