"""Access rules, applied before every request: credentials and scopes, cross-site writes.

Each view says what it needs with `@needs(...)`: OPEN (probes, the lab's banner, metrics,
the API description), READ or FULL (facerec.credentials). With no credential configured
every route is open (development); with any, a route that reads or changes data refuses a
request without a credential (401) or with one of too small a scope (403), and an
unknown path needs a credential too (401 before 404: routes are not probed for free).

Whatever the credentials, a request that could change data and comes from another site's
page is refused (403) unless it carries an Authorization header, which a browser sends
cross-site only after a CORS preflight that this service never grants: so no page
elsewhere can make a visitor's browser scan or erase anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

from flask import current_app, g, request

from facerec.credentials import FULL, READ, identify
from rest.errors import ApiError
from rest.services import services

OPEN = "open"
F = TypeVar("F", bound=Callable[..., object])
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_SCOPE_ATTRIBUTE = "facerec_scope"

__all__ = ["FULL", "OPEN", "READ", "authorize", "needs"]


def needs(scope: str) -> Callable[[F], F]:
    """Declare what a view needs: OPEN, READ or FULL."""
    def mark(view: F) -> F:
        setattr(view, _SCOPE_ATTRIBUTE, scope)
        return view
    return mark


def _needed() -> str:
    view = current_app.view_functions.get(request.endpoint or "")
    scope = getattr(view, _SCOPE_ATTRIBUTE, None)
    if scope is None and view is not None:
        raise RuntimeError(f"view {request.endpoint} does not say what it needs (@needs)")
    return scope or READ


def _cross_site() -> bool:
    """True when a browser says (or an Origin shows) that another site's page sent this."""
    if request.headers.get("Sec-Fetch-Site") in ("cross-site", "same-site"):
        return True
    origin = request.headers.get("Origin")
    return bool(origin) and urlsplit(origin).netloc != request.host


def authorize() -> None:
    """before_request: who is calling (g.credential), and may they?"""
    g.credential = None
    if request.method not in _SAFE_METHODS and _cross_site() \
            and "Authorization" not in request.headers:
        raise ApiError(403, "cross-site request refused: send a credential (Authorization)")
    credentials = services().credentials
    needed = _needed()
    if not credentials or needed == OPEN:
        return
    credential = identify(credentials, request.headers.get("Authorization", ""))
    if credential is None:
        raise ApiError(401, "missing or wrong credential (Authorization: Bearer <secret>)")
    g.credential = credential.id
    if not credential.allows(needed):
        raise ApiError(403, f"credential {credential.id!r} may only read; this needs {FULL}")
