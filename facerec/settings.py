"""Settings, built once from the environment and passed explicitly to whoever needs them."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from facerec import credentials

# The most deliveries of one message: RabbitMQ's own limit on the image queue (its
# arguments are fixed once the queue exists), which MAX_DELIVERIES may only lower.
DELIVERY_CEILING = 5


def _parse_networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(part.strip(), strict=False)
                 for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """Every knob of rest, worker and logs. Field name upper-cased is the environment variable."""

    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    redis_password: str = ""
    rabbitmq_host: str = "127.0.0.1"
    rabbitmq_port: int = 5672
    rabbitmq_user: str = "guest"
    rabbitmq_password: str = "guest"
    rabbitmq_vhost: str = "/"
    # AMQP heartbeat in seconds: the worker's I/O loop keeps answering while an image is
    # processed on another thread, so a short value only detects dead peers sooner.
    rabbitmq_heartbeat: int = 30

    host: str = "127.0.0.1"
    port: int = 5000
    web_concurrency: int = 2
    web_threads: int = 8

    match_tolerance: float = 0.6
    # Faces closer than this (and this close to the person's centroid) are one person;
    # MATCH_TOLERANCE if that is lower, since people are built from the matches.
    people_tolerance: float = 0.55
    # The longest a search (POST /search) may wait for a worker's answer, in seconds.
    search_timeout: float = 10.0
    detection_model: str = "hog"
    # Faces are detected on a copy whose longer side is at most this many pixels (0: full
    # resolution); encodings are computed on the full image. See README for the evidence.
    detect_max_side: int = 1024
    detect_upsample: int = 1

    max_upload_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    fetch_timeout: float = 10.0
    fetch_max_redirects: int = 3
    # Networks URL fetching may reach although they are not public (tests, private setups).
    fetch_allow_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # Credentials (facerec.credentials): with any set, every route that reads or changes
    # data needs one. API_TOKEN is one more full-scope credential (id "token").
    api_keys: str = ""
    api_token: str = ""
    # inline | gs://bucket[/prefix] | file:///dir (see facerec.imagestore)
    image_store: str = "inline"
    # Keep stored images after processing (GET /image/<hash>/content) or delete them.
    image_store_keep: bool = True

    # Deliveries of one message before it is dead-lettered (crashes count too), at most
    # DELIVERY_CEILING.
    max_deliveries: int = DELIVERY_CEILING
    prefetch: int = 1
    # What a worker consumes: "all" (images and searches), "images" (no searches) or
    # "search" (searches only: never busy with a scan when a search comes, see README).
    worker_role: str = "all"
    worker_heartbeat_file: str = "/tmp/facerec-worker.heartbeat"
    metrics_port: int = 9100
    log_level: str = "DEBUG"
    hostname: str = field(default_factory=socket.gethostname)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read every field from its upper-case environment variable; overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f.name.upper())
            if raw is None or f.name in overrides:
                continue
            if f.name == "fetch_allow_networks":
                values[f.name] = _parse_networks(raw)
            elif f.type in ("int", int):
                values[f.name] = int(raw)
            elif f.type in ("float", float):
                values[f.name] = float(raw)
            elif f.type in ("bool", bool):
                if raw.strip().lower() not in ("1", "true", "yes", "0", "false", "no"):
                    raise ValueError(f"{f.name.upper()} must be true or false, not {raw!r}")
                values[f.name] = raw.strip().lower() in ("1", "true", "yes")
            else:
                values[f.name] = raw
        values.update(overrides)
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.detection_model not in ("hog", "cnn"):
            raise ValueError(f"DETECTION_MODEL must be hog or cnn, not {self.detection_model!r}")
        if not 0 < self.match_tolerance < 2:
            raise ValueError("MATCH_TOLERANCE must be in (0, 2)")
        if not 0 < self.people_tolerance < 2:
            raise ValueError("PEOPLE_TOLERANCE must be in (0, 2)")
        if not 0 < self.search_timeout <= 600:
            raise ValueError("SEARCH_TIMEOUT must be in (0, 600] seconds")
        if not 1 <= self.max_deliveries <= DELIVERY_CEILING:
            raise ValueError(f"MAX_DELIVERIES must be in 1..{DELIVERY_CEILING}")
        if self.worker_role not in ("all", "images", "search"):
            raise ValueError(f"WORKER_ROLE must be all, images or search, "
                             f"not {self.worker_role!r}")
        if self.prefetch < 1:
            raise ValueError("PREFETCH must be at least 1")
        credentials.parse(self.api_keys, self.api_token)
