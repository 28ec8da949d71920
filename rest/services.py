"""What the routes use, built once per process and kept on the app (`app.extensions`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import current_app

from facerec import credentials
from facerec.broker import Broker
from facerec.fetch import Fetcher
from facerec.imagestore import ImageStore, open_store
from facerec.settings import Settings
from facerec.store import Store

EXTENSION = "facerec"


@dataclass
class Services:
    settings: Settings
    store: Store
    images: ImageStore
    fetcher: Fetcher
    broker: Broker  # one connection per process, thread-safe (its own I/O thread)
    log: logging.Logger
    credentials: tuple[credentials.Credential, ...]

    @classmethod
    def create(cls, settings: Settings) -> Services:
        return cls(settings, Store(settings), open_store(settings),
                   Fetcher(settings.max_upload_bytes, settings.fetch_timeout,
                           settings.fetch_max_redirects, settings.fetch_allow_networks),
                   Broker(settings, name="facerec-rest"), logging.getLogger("facerec.rest"),
                   credentials.parse(settings.api_keys, settings.api_token))

    def close(self) -> None:
        self.broker.close()
        self.store.close()


def services() -> Services:
    """The services of the app handling the current request."""
    found: Services = current_app.extensions[EXTENSION]
    return found
