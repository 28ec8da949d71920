"""python -m rest: serve the REST API with gunicorn (threads per worker process)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
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
            "child_exit": _child_exit,
            # gunicorn's control socket (for gunicornc) would go under $HOME/.gunicorn/: the
            # home is /nonexistent and the root read-only in the images. Nothing uses it.
            "control_socket_disable": True,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # In each gunicorn process, after the fork: connections and threads are per process.
        from facerec.topiclog import setup_logging
        from rest.app import create_app

        setup_logging(self.settings, "rest")
        return create_app(self.settings)


def _child_exit(_server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def main() -> int:
    # Each gunicorn process counts into files here; /metrics sums them (see facerec.metrics).
    own_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_dir = tempfile.mkdtemp(prefix="facerec-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_dir
    try:
        _Server(Settings.from_env()).run()
    finally:
        if own_dir:
            shutil.rmtree(own_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
