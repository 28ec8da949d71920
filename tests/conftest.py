from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Iterator

import pytest
from flask.testing import FlaskClient

from facerec.settings import Settings
from rest.app import create_app
from tests.services import Env, RedisServer, Vhost, reset_vhost


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def vhost() -> Iterator[Vhost]:
    v = Vhost().create()
    yield v
    v.delete()


@pytest.fixture
def settings(redis_server: RedisServer, vhost: Vhost) -> Settings:
    return Settings.from_env({}, redis_port=redis_server.port, rabbitmq_vhost=vhost.name,
                             fetch_allow_networks=(ipaddress.ip_network("127.0.0.0/8"),))


@pytest.fixture
def env(settings: Settings, redis_server: RedisServer) -> Iterator[Env]:
    """Empty databases and queues before the test; its processes stopped after it."""
    redis_server.flush()
    reset_vhost(settings)
    e = Env(settings, redis_server)
    yield e
    e.stop_all()


@pytest.fixture
def make_client(env: Env) -> Iterator[Callable[..., FlaskClient]]:
    """make_client(**settings) -> a Flask test client of the real app (no gunicorn), on the
    test's Redis and RabbitMQ vhost; its connections are closed after the test."""
    apps = []

    def make(**overrides: object) -> FlaskClient:
        app = create_app(dataclasses.replace(env.settings, **overrides))
        apps.append(app)
        return app.test_client()
    yield make
    for app in apps:
        app.extensions["facerec"].close()


@pytest.fixture
def client(make_client: Callable[..., FlaskClient]) -> FlaskClient:
    return make_client()
