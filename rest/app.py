"""The Flask application factory. Routes keep the lab assignment's paths exactly."""

from __future__ import annotations

from flask import Flask

from facerec.settings import Settings
from rest import access, erase, errors, ops, people, queries, scan, search, ui
from rest.services import EXTENSION, Services


def create_app(settings: Settings | None = None, services: Services | None = None) -> Flask:
    """The REST app; logging is the entrypoint's to set up (rest/__main__.py)."""
    settings = settings or Settings.from_env()
    # No app-wide /static route: the page serves its own few files (rest.ui), and the
    # test tools vendored beside them are never served.
    app = Flask("rest", static_folder=None)
    # Werkzeug refuses a larger Content-Length before the route runs (see scan.read_body).
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes + 1
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION] = services or Services.create(settings)
    # Names may be URLs ("http://..."): a double slash is part of the name, not a typo.
    app.url_map.merge_slashes = False
    errors.init_app(app, access.authorize)
    for blueprint in (ops.bp, scan.bp, queries.bp, erase.bp, search.bp, people.bp, ui.bp):
        app.register_blueprint(blueprint)
    return app
