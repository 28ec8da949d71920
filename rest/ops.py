"""Routes for operators: the lab's banner, probes, metrics and the API description."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from facerec import metrics
from facerec.errors import RedisUnavailable
from rest.access import OPEN, needs
from rest.openapi import document
from rest.services import services

bp = Blueprint("ops", __name__)


@bp.get("/")
@needs(OPEN)
def index() -> Response:
    return jsonify(service="facerec", status="ok")


@bp.get("/healthz")
@needs(OPEN)
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
@needs(OPEN)
def readyz() -> tuple[Response, int]:
    s = services()
    checks = {"redis": False, "rabbitmq": s.broker.ping()}
    try:
        checks["redis"] = s.store.ping()
    except RedisUnavailable:
        pass
    ready = all(checks.values())
    return jsonify(ready=ready, **checks), 200 if ready else 503


@bp.get("/openapi.json")
@needs(OPEN)
def openapi() -> Response:
    return jsonify(document(services().settings.match_tolerance))


@bp.get("/metrics")
@needs(OPEN)
def metrics_text() -> Response:
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)
