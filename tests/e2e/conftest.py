"""Browser tests of the web page: Debian's Chromium, headless, driven by Playwright, against
a real rest, a real worker, the session's private redis-server and RabbitMQ vhost, and a
local-directory image store.

Playwright's own browser download cannot work here: the browser is /usr/bin/chromium
(packages chromium and chromium-driver, installed by scripts/system-deps.sh).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, sync_playwright

from tests.services import ROOT, Env, RedisServer, Vhost, reset_vhost, shared_rest

CHROMIUM = os.environ.get("FACEREC_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = ROOT / "docs" / "screenshots"
AXE = ROOT / "rest" / "static" / "vendor" / "axe-core" / "axe.min.js"


@dataclass
class Service:
    """One running facerec: rest's address, the Env that started it, where images go."""

    env: Env
    url: str
    images: Path
    extra: dict[str, str] = field(default_factory=dict)

    def start_rest(self, **extra: str) -> str:
        """Another rest on the same Redis, broker and store (other settings, e.g. keys)."""
        return self.env.start_rest(**{**self.extra, **extra})


@pytest.fixture(scope="module")
def service(redis_server: RedisServer, vhost: Vhost, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Service]:
    """rest and one worker with a file image store, on empty databases and queues."""
    images = tmp_path_factory.mktemp("images")
    # PEOPLE_TOLERANCE below every distance between the uploaded photos: each face starts
    # as a person of its own, so the tests have people to merge through the page.
    extra = {"IMAGE_STORE": images.as_uri(), "IMAGE_STORE_KEEP": "true",
             "PEOPLE_TOLERANCE": "0.3", "FETCH_ALLOW_NETWORKS": "127.0.0.0/8"}
    redis_server.flush()
    with shared_rest(redis_server, vhost, **extra) as (env, url):
        reset_vhost(env.settings)
        env.start_worker(**extra)
        yield Service(env, url, images, extra)


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run scripts/system-deps.sh"
    b = playwright.chromium.launch(executable_path=CHROMIUM,
                                   args=["--no-sandbox", "--disable-background-networking"])
    yield b
    b.close()


@dataclass
class Console:
    """What the pages of one test wrote to the console as errors, and uncaught exceptions."""

    errors: list[str] = field(default_factory=list)
    # What a test provokes on purpose: the browser logs each refused request as an error.
    expected: list[str] = field(default_factory=list)

    def expect_refusal(self, status: int) -> None:
        self.expected.append(f"the server responded with a status of {status} ")

    def attach(self, page: Page) -> Page:
        def on_console(message: ConsoleMessage) -> None:
            if message.type in ("error", "assert") \
                    and not any(e in message.text for e in self.expected):
                self.errors.append(f"{page.url}: {message.text}")
        page.on("console", on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"{page.url}: uncaught {exc}"))
        return page


@pytest.fixture
def console() -> Iterator[Console]:
    found = Console()
    yield found
    assert found.errors == [], "console errors:\n" + "\n".join(found.errors)


@pytest.fixture
def page(browser: Browser, console: Console) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    yield console.attach(context.new_page())
    context.close()


def screenshot(page: Page, name: str) -> None:
    """<name>.png once every picture has loaded: in docs/screenshots (the README shows
    them) when FACEREC_SCREENSHOTS=docs, else beside the test run's temporary files, so
    that running the tests leaves the committed ones alone."""
    page.wait_for_load_state("networkidle")
    page.wait_for_function("[...document.images].every((img) => img.complete)")
    if os.environ.get("FACEREC_SCREENSHOTS") == "docs":
        folder = SCREENSHOTS
    else:
        folder = Path(os.environ.get("TMPDIR", "/tmp")) / "facerec-screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def ready(page: Page) -> None:
    """Wait until the page's script has loaded what it shows first."""
    page.wait_for_selector("body[data-ready='1']")


def axe_violations(page: Page) -> list[dict[str, object]]:
    """axe-core's serious and critical violations on the page as it is now. The vendored
    script is evaluated through the DevTools protocol: the page itself never serves it."""
    page.evaluate(AXE.read_text())
    result = page.evaluate("async () => JSON.stringify(await axe.run(document))")
    violations: list[dict[str, object]] = json.loads(result)["violations"]
    return [{"id": v["id"], "impact": v["impact"], "help": v["help"],
             "nodes": [n["target"] for n in v["nodes"]]}  # type: ignore[attr-defined]
            for v in violations if v["impact"] in ("serious", "critical")]
