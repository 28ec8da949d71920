"""python -m rest: serve the REST API with gunicorn (threads per worker process)."""

from __future__ import annotations

import sys
from typing import Any

from gunicorn.app.base import BaseApplication

from facerec.settings import Settings


class _Server(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        options: dict[str, Any] = {
            "bind": f"{self.settings.host}:{self.settings.port}",
            "workers": self.settings.web_concurrency,
            "threads": self.settings.web_threads,
            "worker_class": "gthread",
            # Fetching a URL may take up to 3 x FETCH_TIMEOUT.
            "timeout": int(3 * self.settings.fetch_timeout) + 30,
            "graceful_timeout": 20,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "warning",
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from rest.app import create_app  # in each worker process, after the fork

        return create_app(self.settings)


def main() -> int:
    _Server(Settings.from_env()).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
