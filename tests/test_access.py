"""Access rules: every route that reads or changes data needs a credential of the right
scope once any is configured; probes stay open; no other site's page can write.

Through Flask's test client: the real app on the test's real Redis and RabbitMQ vhost.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest
from flask.testing import FlaskClient

from facerec.messages import sha256_hex
from tests.services import FACES, ROOT, Env, image_server

PHOTO = (FACES / "obama/obama_small.jpg").read_bytes()
H = sha256_hex(PHOTO)
KEYS = "admin:full:full-secret-1,ops2:full:full-secret-2,viewer:read:read-secret-1"
CREDENTIALS = {"none": None, "wrong": "not-a-secret", "read": "read-secret-1",
               "full": "full-secret-1", "full2": "full-secret-2"}

# (method, path, body) of every route; what each credential gets is in ACCESS.
ROUTES = {
    "banner": ("GET", "/", None), "healthz": ("GET", "/healthz", None),
    "readyz": ("GET", "/readyz", None), "openapi": ("GET", "/openapi.json", None),
    "metrics": ("GET", "/metrics", None),
    "scan_image": ("POST", "/scan/image/a.jpg", PHOTO),
    "scan_url": ("POST", "/scan/url", b'{"url": "http://192.0.2.1/a.jpg"}'),
    "match": ("GET", f"/match/{H}", None), "image": ("GET", f"/image/{H}", None),
    "content": ("GET", f"/image/{H}/content", None),
    "erase_image": ("DELETE", f"/image/{'0' * 64}", None),
    "erase_name": ("DELETE", "/name/nobody.jpg", None),
    "unknown": ("GET", "/no/such/route", None),
    "people": ("GET", "/people", None), "person": ("GET", "/people/1", None),
    "name_person": ("PUT", "/people/1", b'{"name": "Ada"}'),
    "merge_people": ("POST", "/people/1/merge", b'{"from": 2}'),
    "erase_person": ("DELETE", "/people/1", None),
    "split_person": ("POST", "/people/1/split",
                     b'{"faces": [{"hash": "' + H.encode() + b'", "face": 0}]}'),
    "apart_people": ("POST", "/people/1/apart", b'{"from": 2}'),
    # No worker serves this test's vhost: a search past the access check is a 503.
    "search": ("POST", "/search", PHOTO),
}
JSON_ROUTES = {"scan_url", "name_person", "merge_people", "split_person", "apart_people"}
OPEN_ROUTES = {"banner": 200, "healthz": 200, "readyz": 200, "openapi": 200, "metrics": 200}
# What the route answers once past the access check (with this test's data).
ALLOWED = {"scan_image": 200, "scan_url": 400, "match": 200, "image": 404, "content": 404,
           "erase_image": 404, "erase_name": 404, "unknown": 404, "people": 200,
           "person": 404, "name_person": 404, "merge_people": 404, "erase_person": 404,
           "search": 503, "split_person": 404, "apart_people": 404}
READ_ROUTES = {"match", "image", "content", "unknown", "people", "person", "search"}


def expected(route: str, who: str) -> int:
    if route in OPEN_ROUTES:
        return OPEN_ROUTES[route]
    if who in ("none", "wrong"):
        return 401
    if who == "read" and route not in READ_ROUTES:
        return 403
    return ALLOWED[route]


def call(app: FlaskClient, route: str, secret: str | None) -> int:
    method, path, body = ROUTES[route]
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    if route in JSON_ROUTES:
        headers["Content-Type"] = "application/json"
    return app.open(path, method=method, data=body, headers=headers).status_code


@pytest.fixture
def guarded(make_client: Callable[..., FlaskClient]) -> FlaskClient:
    return make_client(api_keys=KEYS)


@pytest.mark.parametrize("who", sorted(CREDENTIALS))
@pytest.mark.parametrize("route", sorted(ROUTES))
def test_each_route_answers_each_credential_as_the_access_table_says(
        guarded: FlaskClient, route: str, who: str) -> None:
    assert call(guarded, route, CREDENTIALS[who]) == expected(route, who)


def test_without_credentials_configured_every_route_is_open(client: FlaskClient) -> None:
    for route in sorted(ROUTES, key=lambda r: r.startswith("scan_")):  # reads first
        status = call(client, route, None)
        assert status == (OPEN_ROUTES.get(route) or ALLOWED[route]), route


def test_a_401_says_how_to_authenticate_and_never_echoes_a_secret(guarded: FlaskClient) -> None:
    reply = guarded.get(f"/match/{H}", headers={"Authorization": "Bearer full-secret-1x"})
    assert reply.status_code == 401
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert "full-secret" not in reply.get_data(as_text=True)


def test_the_older_api_token_is_a_full_credential(
        make_client: Callable[..., FlaskClient]) -> None:
    app = make_client(api_token="legacy-token")
    assert app.get(f"/match/{H}").status_code == 401
    good = {"Authorization": "Bearer legacy-token"}
    assert app.get(f"/match/{H}", headers=good).status_code == 200
    assert app.post("/scan/image/a.jpg", data=PHOTO, headers=good).status_code == 200


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Origin": "null"},
])
def test_a_write_from_another_sites_page_is_refused_without_a_credential(
        env: Env, client: FlaskClient, headers: dict[str, str]) -> None:
    # A "simple" cross-site form post: no preflight, so a browser would send it.
    for path, body in (("/scan/image/a.jpg", PHOTO), (f"/image/{H}", None),
                       ("/name/a.jpg", None)):
        method = "POST" if body else "DELETE"
        reply = client.open(path, method=method, data=body,
                            headers={**headers, "Content-Type": "text/plain"})
        assert reply.status_code == 403, (path, reply.get_json())
        assert "cross-site" in reply.get_json()["error"]
        assert "Access-Control-Allow-Origin" not in reply.headers
    assert env.queue_depth() == 0
    # Reads and same-origin writes are not affected.
    assert client.get(f"/match/{H}", headers=headers).status_code == 200
    same = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}
    assert client.post("/scan/image/a.jpg", data=PHOTO, headers=same).status_code == 200


def test_no_response_grants_cross_origin_access(guarded: FlaskClient) -> None:
    for route in ROUTES:
        method, path, body = ROUTES[route]
        for m in (method, "OPTIONS"):
            reply = guarded.open(path, method=m, data=body if m == method else None,
                                 headers={"Origin": "https://evil.example",
                                          "Access-Control-Request-Method": "DELETE",
                                          "Authorization": "Bearer full-secret-1"})
            names = [k for k, _v in reply.headers.items()]
            assert not any(k.lower().startswith("access-control-allow") for k in names), (
                route, m)


def test_two_full_credentials_are_valid_at_once_for_rotation(guarded: FlaskClient) -> None:
    for secret in ("full-secret-1", "full-secret-2"):
        reply = guarded.post("/scan/image/a.jpg", data=PHOTO,
                             headers={"Authorization": f"Bearer {secret}"})
        assert reply.status_code == 200


def test_upload_names_never_fill_the_url_cache(env: Env, client: FlaskClient) -> None:
    fetched = (FACES / "biden/biden2.jpg").read_bytes()
    with image_server(fetched) as (base, requested):
        url = f"{base}/who.jpg"
        # An upload whose name is the URL, with other bytes than the URL serves…
        assert client.post(f"/scan/image/{url}", data=PHOTO).get_json() == {"hash": H}
        # …must not make /scan/url answer without fetching, nor with the upload's hash.
        reply = client.post("/scan/url", json={"url": url})
        assert reply.status_code == 200, reply.get_json()
        assert reply.get_json() == {"hash": sha256_hex(fetched)}
        assert requested == ["/who.jpg"]
        # The URL's own scan is what answers next time, without a fetch.
        reply = client.post("/scan/url", json={"url": url})
        assert reply.headers["X-Facerec-Outcome"] == "known_url"
        assert requested == ["/who.jpg"]


def test_the_demo_scan_works_with_a_credential_set(env: Env) -> None:
    rest = env.start_rest(API_TOKEN="demo-secret-1")
    env.start_worker()
    folder = FACES / "rose_leslie"
    demo = subprocess.run([sys.executable, "scripts/demo.py", "--rest", rest, str(folder)],
                          cwd=ROOT, env=env.environ(API_TOKEN="demo-secret-1"),
                          capture_output=True, text=True, timeout=240)
    assert demo.returncode == 0, demo.stderr
    assert "img1.jpg  1 face   matches: img2.jpg" in demo.stdout
