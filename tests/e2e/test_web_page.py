"""The web page in a real browser, against a real rest, worker, Redis and RabbitMQ.

The tests of this module run in file order on one service, as a person would use it:
upload, look, follow a match, search, name a person, erase. Each test opens its own
browser context (nothing carried over but what the service holds) and fails on any
console error or uncaught exception of its pages.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import time
from typing import Any

import pytest
from playwright.sync_api import Page, Request, expect

from facerec.messages import sha256_hex
from tests.e2e.conftest import Console, Service, axe_violations, ready, screenshot
from tests.services import FACES, Vhost, http, image_server

UPLOADS = ["kit_harington/john1.jpeg", "rose_leslie/img1.jpg", "groups/kit_with_rose.jpg"]
HASH = {p: sha256_hex((FACES / p).read_bytes()) for p in [*UPLOADS, "rose_leslie/img2.jpg"]}
GROUP = HASH["groups/kit_with_rose.jpg"]
KIT = HASH["kit_harington/john1.jpeg"]
ROSE = HASH["rose_leslie/img1.jpg"]
KEYS = "admin:full:full-secret-e2e,viewer:read:read-secret-e2e"


def api(service: Service, path: str) -> Any:
    reply = http("GET", service.url + path)
    assert reply.status == 200, (path, reply.body)
    return reply.body


def confirmations(page: Page) -> list[str]:
    """Accept every confirmation the page asks for; the list of what they said."""
    said: list[str] = []

    def accept(dialog: Any) -> None:
        said.append(dialog.message)
        dialog.accept()
    page.on("dialog", accept)
    return said


def test_three_photos_uploaded_through_the_page_reach_done_without_reload_or_polling_storm(
        page: Page, service: Service) -> None:
    polls: list[tuple[float, list[str]]] = []

    def record(request: Request) -> None:
        if request.url.endswith("/ui/api/status"):
            polls.append((time.monotonic(), json.loads(request.post_data or "{}")["hashes"]))
    page.on("request", record)
    page.goto(service.url + "/ui")
    ready(page)
    expect(page.locator("#gallery-count")).to_have_text("No images yet.")
    page.evaluate("window.notReloaded = true")
    page.set_input_files("#files", [str(FACES / p) for p in UPLOADS])
    uploads = page.locator("#uploads li")
    expect(uploads).to_have_count(3)
    expect(page.locator("#uploads li[data-state='done']")).to_have_count(3, timeout=180_000)
    expect(page.locator("#overall-text")).to_have_text("3 of 3 done, 0 failed")
    assert page.evaluate("window.notReloaded") is True
    # Each file's line: its name, a full progress bar, done with its faces.
    for name, faces in (("john1.jpeg", 1), ("img1.jpg", 1), ("kit_with_rose.jpg", 2)):
        line = uploads.filter(has_text=name)
        expect(line.locator(".detail")).to_have_text(f"{faces} face{'s' if faces > 1 else ''}")
        assert line.locator("progress").evaluate("p => p.value === p.max")
    # One request for the whole batch each time, never two within the shortest interval.
    assert polls, "the page never asked for the batch's status"
    assert max(len(hashes) for _, hashes in polls) == 3
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(polls)]
    assert all(gap >= 0.9 for gap in gaps), gaps
    # The gallery filled in by itself, newest first, as the API orders it.
    cards = page.locator("#gallery li.card")
    expect(cards).to_have_count(3)
    newest = [v["hash"] for v in api(service, "/ui/api/images")["images"]]
    assert [cards.nth(i).get_attribute("data-hash") for i in range(3)] == newest
    expect(page.locator("#gallery-count")).to_have_text("3 images")
    thumbs = page.locator("#gallery img.thumb")
    expect(thumbs).to_have_count(3)
    for i in range(3):
        expect(thumbs.nth(i)).to_have_attribute("src", re.compile(r"^blob:"))
        width = thumbs.nth(i).evaluate("img => img.decode().then(() => img.naturalWidth)")
        assert 0 < width <= 320
    screenshot(page, "gallery")


def test_the_gallery_filters_by_name(page: Page, service: Service) -> None:
    page.goto(service.url + "/ui")
    ready(page)
    page.fill("#name-filter", "KIT_with")
    page.press("#name-filter", "Enter")
    expect(page.locator("#gallery li.card")).to_have_count(1)
    expect(page.locator("#gallery li.card")).to_have_attribute("data-hash", GROUP)
    assert "name=KIT_with" in page.url
    page.fill("#name-filter", "nobody-has-this-name")
    page.click("#filter button")
    expect(page.locator("#gallery li.card")).to_have_count(0)
    expect(page.locator("#gallery-count")).to_contain_text("No image has a name containing")


def test_the_group_photo_has_a_drawn_box_for_each_face_the_api_reports(
        page: Page, service: Service) -> None:
    view = api(service, f"/image/{GROUP}")
    assert len(view["faces"]) == 2
    page.goto(f"{service.url}/ui/image/{GROUP}")
    ready(page)
    boxes = page.locator("#photo .box")
    expect(boxes).to_have_count(len(view["faces"]))
    photo = page.locator("#photo-img").bounding_box()
    assert photo is not None
    natural = page.locator("#photo-img").evaluate("i => [i.naturalWidth, i.naturalHeight]")
    scale = photo["width"] / natural[0]
    for i, face in enumerate(view["faces"]):
        box = boxes.nth(i).bounding_box()
        assert box is not None
        # Where the API says the face is, on the photo as shown (3 px borders aside).
        assert abs(box["x"] - (photo["x"] + face["left"] * scale)) < 4
        assert abs(box["y"] - (photo["y"] + face["top"] * scale)) < 4
        assert abs(box["width"] - (face["right"] - face["left"]) * scale) < 4
    faces = page.locator("#faces li.face")
    expect(faces).to_have_count(2)
    # Each face lists the images that matched it: Kit's face Kit's photo, Rose's Rose's.
    matched = {faces.nth(i).locator(".match a").first.get_attribute("href")
               for i in range(2)}
    assert matched == {f"/ui/image/{KIT}", f"/ui/image/{ROSE}"}
    for i, face in enumerate(view["faces"]):
        expect(faces.nth(i).locator(".match")).to_have_count(len(face["matches"]))
        if face["person"] is not None:
            expect(faces.nth(i).locator(f"a[href='/ui/people/{face['person']}']")).to_be_visible()
    expect(faces.nth(0).locator(".match .names").first).not_to_be_empty()
    expect(page.locator("#image-status .status")).to_have_text("done")
    screenshot(page, "image")


def test_a_match_leads_to_the_matching_image_which_matches_back(
        page: Page, service: Service) -> None:
    page.goto(f"{service.url}/ui/image/{GROUP}")
    ready(page)
    page.locator(f"#faces .match a[href='/ui/image/{ROSE}']").click()
    page.wait_for_url(f"**/ui/image/{ROSE}")
    ready(page)
    expect(page.locator("#image-names")).to_have_text("img1.jpg")
    expect(page.locator("#photo .box")).to_have_count(1)
    expect(page.locator(f"#faces .match a[href='/ui/image/{GROUP}']")).to_be_visible()
    expect(page.locator(f"#faces .match a[href='/ui/image/{KIT}']")).to_have_count(0)


def test_search_by_photo_boxes_its_faces_lists_their_matches_and_stores_nothing(
        page: Page, service: Service) -> None:
    page.goto(service.url + "/ui/search")
    ready(page)
    page.set_input_files("#search-file", str(FACES / "rose_leslie/img2.jpg"))
    expect(page.locator("#search-status")).to_have_text(
        "1 face found; nothing was stored.", timeout=60_000)
    expect(page.locator("#photo .box")).to_have_count(1)
    links = {a.get_attribute("href") for a in page.locator("#faces .match a").all()}
    assert links == {f"/ui/image/{ROSE}", f"/ui/image/{GROUP}"}
    expect(page.locator("#faces .match img.thumb").first).to_have_attribute(
        "src", re.compile(r"^blob:"))
    rose = api(service, f"/image/{ROSE}")["faces"][0]["person"]
    expect(page.locator("#faces .who-is a")).to_have_attribute("href", f"/ui/people/{rose}")
    assert http("GET", f"{service.url}/image/{HASH['rose_leslie/img2.jpg']}").status == 404
    screenshot(page, "search")


def _people_routes(service: Service) -> None:
    if http("GET", service.url + "/people").status == 404:
        pytest.fail("GET /people answers 404: rest/people.py's blueprint is not registered")


def _person_of(service: Service, image_hash: str, matching: str | None = None) -> int:
    """The person of an image's face (of the face that matched `matching`, if given)."""
    faces = api(service, f"/image/{image_hash}")["faces"]
    for face in faces:
        if matching is None or any(m["hash"] == matching for m in face["matches"]):
            return int(face["person"])
    raise AssertionError(f"no face of {image_hash} matches {matching}")


def test_people_are_listed_each_with_a_face_and_its_count(page: Page, service: Service) -> None:
    _people_routes(service)
    listed = api(service, "/people")
    # PEOPLE_TOLERANCE=0.3: each of the four faces is a person of its own for now.
    assert listed["total"] == 4
    page.goto(service.url + "/ui/people")
    ready(page)
    cards = page.locator("#people li.card")
    expect(cards).to_have_count(4)
    expect(page.locator("#people-count")).to_have_text("4 people, most faces first")
    for i, person in enumerate(listed["people"]):
        expect(cards.nth(i)).to_have_attribute("data-person", str(person["id"]))
        expect(cards.nth(i).locator(".meta")).to_have_text("1 face")
        expect(cards.nth(i).locator("img.face-crop")).to_have_attribute(
            "src", re.compile("^blob:"))
        width = cards.nth(i).locator("img.face-crop").evaluate(
            "img => img.decode().then(() => img.naturalWidth)")
        assert 0 < width <= 128


def test_two_people_are_merged_then_named_and_a_refused_merge_says_why(
        page: Page, service: Service, console: Console) -> None:
    _people_routes(service)
    kit = _person_of(service, KIT)
    kit_in_group = _person_of(service, GROUP, matching=KIT)
    rose_in_group = _person_of(service, GROUP, matching=ROSE)
    page.goto(f"{service.url}/ui/people/{kit}")
    ready(page)
    expect(page.locator("#person-title")).to_have_text(f"Unnamed person #{kit}")
    expect(page.locator("#person-faces li.card")).to_have_count(1)
    page.on("dialog", lambda dialog: dialog.accept())
    page.fill("#merge-from", str(kit_in_group))
    page.click("#merge button")
    expect(page.locator("#message")).to_have_text(f"Merged person #{kit_in_group} into this one.")
    expect(page.locator("#person-faces li.card")).to_have_count(2)
    expect(page.locator("#person-faces .names")).to_have_text(["john1.jpeg", "kit_with_rose.jpg"])
    assert len(api(service, f"/people/{kit}")["faces"]) == 2
    # Names are text: markup in one stays markup-looking text.
    page.fill("#person-name", "Kit <b>Harington</b>")
    page.click("#rename button")
    expect(page.locator("#message")).to_have_text("Renamed to Kit <b>Harington</b>.")
    expect(page.locator("#person-title")).to_have_text("Kit <b>Harington</b>")
    assert page.locator("#person-title b, #message b").count() == 0
    page.fill("#person-name", "Kit Harington")
    page.press("#person-name", "Enter")
    expect(page.locator("#person-title")).to_have_text("Kit Harington")
    assert api(service, f"/people/{kit}")["name"] == "Kit Harington"
    screenshot(page, "person")
    # Rose's face in the group photo shares that photo with Kit: the service refuses.
    console.expect_refusal(409)
    page.fill("#merge-from", str(rose_in_group))
    page.click("#merge button")
    expect(page.locator("#message")).to_contain_text("Could not merge: ")
    expect(page.locator("#message")).to_have_class(re.compile("error"))
    expect(page.locator("#person-faces li.card")).to_have_count(2)
    page.goto(service.url + "/ui/people")
    ready(page)
    expect(page.locator("#people li.card")).to_have_count(3)
    expect(page.locator("#people li.card").first.locator(".names")).to_have_text("Kit Harington")
    expect(page.locator("#people li.card").first.locator(".meta")).to_have_text("2 faces")
    screenshot(page, "people")
    page.goto(f"{service.url}/ui/image/{GROUP}")
    ready(page)
    expect(page.locator(f"#faces a[data-person='{kit}']")).to_have_text("Kit Harington")


def test_erasing_an_image_removes_it_from_the_gallery_and_from_the_others_matches(
        page: Page, service: Service) -> None:
    face = http("GET", f"{service.url}/image/{KIT}/face/0")
    assert face.status == 200 and face.headers["Content-Type"] == "image/jpeg"
    cached = {"If-None-Match": face.headers["ETag"]}
    assert http("GET", f"{service.url}/image/{KIT}/face/0", headers=cached).status == 304
    page.goto(f"{service.url}/ui/image/{KIT}")
    ready(page)
    dialogs = confirmations(page)
    page.click("#erase-image")
    page.wait_for_url(re.compile(r"/ui$"))
    ready(page)
    assert dialogs and "john1.jpeg" in dialogs[0]
    expect(page.locator("#message")).to_have_text("Erased the image john1.jpeg.")
    expect(page.locator("#gallery li.card")).to_have_count(2)
    expect(page.locator(f"#gallery [data-hash='{KIT}']")).to_have_count(0)
    assert http("GET", f"{service.url}/image/{KIT}").status == 404
    assert not (service.images / KIT).exists()
    assert not (service.images / f"{KIT}.thumbnail").exists()
    # A browser's copy of a face is not confirmed any more.
    assert http("GET", f"{service.url}/image/{KIT}/face/0", headers=cached).status == 404
    page.goto(f"{service.url}/ui/image/{GROUP}")
    ready(page)
    expect(page.locator("#photo .box")).to_have_count(2)
    expect(page.locator(f"#faces a[href='/ui/image/{ROSE}']")).to_be_visible()
    expect(page.locator(f"#faces a[href='/ui/image/{KIT}']")).to_have_count(0)


def test_a_dismissed_confirmation_erases_nothing(page: Page, service: Service) -> None:
    page.goto(f"{service.url}/ui/image/{ROSE}")
    ready(page)
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("#erase-image")
    page.wait_for_timeout(500)
    assert http("GET", f"{service.url}/image/{ROSE}").status == 200
    assert page.url.endswith(f"/ui/image/{ROSE}")


def test_names_are_shown_as_text_never_as_markup(page: Page, service: Service) -> None:
    hostile = '<img src=x onerror="window.pwned=1">.jpg'
    page.goto(service.url + "/ui")
    ready(page)
    page.set_input_files("#files", {"name": hostile, "mimeType": "image/jpeg",
                                    "buffer": (FACES / "obama/obama_small.jpg").read_bytes()})
    expect(page.locator("#uploads li[data-state='done']")).to_have_count(1, timeout=120_000)
    card = page.locator("#gallery li.card").filter(has_text="onerror")
    expect(card.locator(".names")).to_have_text(hostile)
    page.reload()
    ready(page)
    expect(page.locator("#gallery .names").filter(has_text="onerror")).to_have_text(hostile)
    assert page.locator("img[src='x']").count() == 0
    assert page.evaluate("window.pwned") is None


def test_pasted_urls_are_fetched_and_reach_done(page: Page, service: Service) -> None:
    with image_server((FACES / "biden/biden.jpg").read_bytes()) as (base, requested):
        page.goto(service.url + "/ui")
        ready(page)
        page.fill("#urls", f"{base}/biden.jpg")
        page.click("#url-form button")
        line = page.locator("#uploads li").filter(has_text=f"{base}/biden.jpg")
        expect(line).to_have_attribute("data-state", "done", timeout=120_000)
        expect(line.locator(".detail")).to_have_text("1 face")
        assert requested == ["/biden.jpg"]
    expect(page.locator("#gallery .names").filter(has_text="biden.jpg")).to_have_count(1)


def test_an_image_queued_elsewhere_turns_done_in_the_open_gallery_by_itself(
        page: Page, service: Service) -> None:
    # A rest on a vhost of its own with no worker yet: what it queues stays queued.
    vhost = Vhost().create()
    try:
        rest = service.start_rest(RABBITMQ_VHOST=vhost.name)
        photo = (FACES / "alex_lacamoire/img1.jpg").read_bytes()
        h = http("POST", f"{rest}/scan/image/alex.jpg", photo).body["hash"]
        page.goto(service.url + "/ui")
        ready(page)
        card = page.locator(f"#gallery li[data-hash='{h}']")
        expect(card.locator(".status")).to_have_text("queued")
        page.evaluate("window.notReloaded = true")
        worker = service.env.start_worker(RABBITMQ_VHOST=vhost.name, **service.extra)
        expect(card.locator(".status")).to_have_text("done", timeout=120_000)
        expect(card.locator(".meta")).to_have_text("done · 1 face")
        assert page.evaluate("window.notReloaded") is True
        service.env.stop(worker)
    finally:
        vhost.delete()


def test_a_file_that_is_not_an_image_fails_with_the_service_s_reason(
        page: Page, service: Service, console: Console) -> None:
    console.expect_refusal(400)
    page.goto(service.url + "/ui")
    ready(page)
    page.set_input_files("#files", {"name": "notes.jpg", "mimeType": "image/jpeg",
                                    "buffer": b"these are not the pixels you are looking for"})
    line = page.locator("#uploads li").filter(has_text="notes.jpg")
    expect(line).to_have_attribute("data-state", "failed")
    expect(line.locator(".detail")).to_contain_text("not a decodable image")
    expect(page.locator("#overall-text")).to_have_text("0 of 1 done, 1 failed")


def test_a_photo_dropped_on_the_page_is_uploaded(page: Page, service: Service) -> None:
    page.goto(service.url + "/ui")
    ready(page)
    photo = base64.b64encode((FACES / "rose_leslie/img1.jpg").read_bytes()).decode()
    transfer = page.evaluate_handle("""(b64) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped.jpg", {type: "image/jpeg"}));
        return transfer;
    }""", photo)
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    line = page.locator("#uploads li").filter(has_text="dropped.jpg")
    # The same bytes as img1.jpg: a second name for an image already done.
    expect(line).to_have_attribute("data-state", "done")
    assert "dropped.jpg" in api(service, f"/image/{ROSE}")["names"]
    expect(page.locator(f"#gallery [data-hash='{ROSE}'] .names")).to_have_text(
        "dropped.jpg, img1.jpg")


@pytest.mark.parametrize("width", [375])
def test_the_pages_fit_a_phone_width(page: Page, service: Service, width: int) -> None:
    page.set_viewport_size({"width": width, "height": 800})
    person = api(service, "/people")["people"][0]["id"]
    for path in ("/ui", f"/ui/image/{GROUP}", "/ui/search", "/ui/people", f"/ui/people/{person}"):
        page.goto(service.url + path)
        ready(page)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, (path, overflow)
    page.goto(f"{service.url}/ui/image/{GROUP}")
    ready(page)
    expect(page.locator("#photo .box")).to_have_count(2)
    screenshot(page, "phone-image")


def test_every_page_can_be_used_with_the_keyboard(page: Page, service: Service) -> None:
    page.goto(service.url + "/ui")
    ready(page)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Enter")
    # Tab through to the name filter, type, Enter: filtered without a mouse.
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "name-filter":
            break
    else:
        pytest.fail("the name filter cannot be reached with Tab")
    page.keyboard.type("img1")
    page.keyboard.press("Enter")
    expect(page.locator("#gallery li.card")).to_have_count(1)
    page.keyboard.press("Tab")  # the Filter button
    page.keyboard.press("Tab")  # the gallery's first link
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/ui/image/{ROSE}")


@pytest.mark.parametrize("path", ["/ui", f"/ui/image/{GROUP}", "/ui/search", "/ui/people",
                                  "person"])
def test_axe_finds_no_serious_or_critical_violation(page: Page, service: Service,
                                                   path: str) -> None:
    if path == "person":
        _people_routes(service)
        path = f"/ui/people/{api(service, '/people')['people'][0]['id']}"
    page.goto(service.url + path)
    ready(page)
    if path == "/ui/search":
        page.set_input_files("#search-file", str(FACES / "rose_leslie/img2.jpg"))
        expect(page.locator("#search-status")).to_contain_text("found", timeout=60_000)
    page.wait_for_load_state("networkidle")
    assert axe_violations(page) == []


def test_a_read_only_credential_sees_everything_and_can_change_nothing(
        page: Page, service: Service) -> None:
    url = service.start_rest(API_KEYS=KEYS)
    secrets: list[str] = []
    page.on("request", lambda r: secrets.append(r.url) if "secret-e2e" in r.url else None)
    page.goto(url + "/ui")
    expect(page.locator("#sign-in")).to_be_visible()
    expect(page.locator("#main")).to_be_hidden()
    screenshot(page, "sign-in")
    page.fill("#credential", "not-the-secret")
    page.press("#credential", "Enter")
    expect(page.locator("#sign-in-error")).to_have_text("That credential was not accepted.")
    page.fill("#credential", "read-secret-e2e")
    page.press("#credential", "Enter")
    ready(page)
    expect(page.locator("#who")).to_have_text("Signed in as viewer (read only)")
    expect(page.locator("#upload")).to_be_hidden()
    expect(page.locator("#gallery li.card")).to_have_count(api(service, "/ui/api/images")["total"])
    expect(page.locator("#gallery img.thumb").first).to_have_attribute(
        "src", re.compile("^blob:"))
    assert page.evaluate("sessionStorage.getItem('facerec.credential')") == "read-secret-e2e"
    assert page.evaluate("localStorage.length") == 0
    page.goto(f"{url}/ui/image/{GROUP}")
    ready(page)
    expect(page.locator("#photo .box")).to_have_count(2)
    expect(page.locator("#erase-image")).to_be_hidden()
    if http("GET", service.url + "/people").status == 200:
        person = api(service, "/people")["people"][0]["id"]
        page.goto(f"{url}/ui/people/{person}")
        ready(page)
        expect(page.locator("#rename")).to_be_hidden()
        expect(page.locator("#merge")).to_be_hidden()
        expect(page.locator("#erase-person")).to_be_hidden()
        expect(page.locator("#person-faces li.card").first).to_be_visible()
        for hidden in ("#apart", "#split", "#split-button", "#split-hint"):
            expect(page.locator(hidden)).to_be_hidden()
        expect(page.locator("#person-faces input[type=checkbox]")).to_have_count(0)
    # A full credential gets the controls; signing out forgets the credential.
    page.click("#sign-out")
    expect(page.locator("#sign-in")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    page.fill("#credential", "full-secret-e2e")
    page.press("#credential", "Enter")
    ready(page)
    expect(page.locator("#who")).to_have_text("Signed in as admin (full access)")
    page.goto(url + "/ui")
    ready(page)
    expect(page.locator("#upload")).to_be_visible()
    assert secrets == [], "a secret appeared in a URL"


def test_without_stored_images_the_page_says_so_and_asks_for_no_picture(
        page: Page, service: Service) -> None:
    url = service.start_rest(IMAGE_STORE="inline")
    pictures: list[str] = []
    page.on("request", lambda r: pictures.append(r.url)
            if "/thumbnail" in r.url or "/content" in r.url or "/face/" in r.url else None)
    page.goto(url + "/ui")
    ready(page)
    expect(page.locator("#not-stored")).to_be_visible()
    expect(page.locator("#gallery li.card")).to_have_count(api(service, "/ui/api/images")["total"])
    expect(page.locator("#gallery .nopic").first).to_have_text("not stored")
    screenshot(page, "not-stored")
    page.goto(f"{url}/ui/image/{GROUP}")
    ready(page)
    expect(page.locator("#photo")).to_be_hidden()
    expect(page.locator("#faces li.face")).to_have_count(2)
    assert pictures == []


def test_a_face_moved_out_through_the_page_becomes_a_person_never_merged_back(
        page: Page, service: Service, console: Console) -> None:
    _people_routes(service)
    rose = _person_of(service, ROSE)
    rose_in_group = _person_of(service, GROUP, matching=ROSE)
    page.goto(f"{service.url}/ui/people/{rose}")
    ready(page)
    dialogs = confirmations(page)
    page.fill("#merge-from", str(rose_in_group))
    page.click("#merge button")
    expect(page.locator("#message")).to_have_text(f"Merged person #{rose_in_group} into this one.")
    cards = page.locator("#person-faces li.card")
    expect(cards).to_have_count(2)
    group_face = next(f["face"] for f in api(service, f"/people/{rose}")["faces"]
                      if f["hash"] == GROUP)
    button = page.locator("#split-button")
    expect(button).to_be_disabled()
    expect(page.locator("#split-count")).to_have_text("No face chosen.")
    # Each checkbox is labelled with the face it chooses.
    choose_group = page.get_by_label(f"Choose face {group_face + 1} of kit_with_rose.jpg")
    choose_rose = page.get_by_label("Choose face 1 of dropped.jpg, img1.jpg")
    # Every face chosen: a person keeps one, said before anything is asked of the service.
    choose_group.check()
    choose_rose.check()
    expect(button).to_be_enabled()
    expect(page.locator("#split-count")).to_have_text("2 faces chosen.")
    button.click()
    expect(page.locator("#message")).to_contain_text("keeps at least one face")
    assert len(api(service, f"/people/{rose}")["faces"]) == 2
    # By keyboard: Space unchooses Rose's own photo, Enter on the button moves the other.
    choose_rose.focus()
    page.keyboard.press("Space")
    expect(choose_rose).not_to_be_checked()
    expect(page.locator("#split-count")).to_have_text("1 face chosen.")
    button.focus()
    page.keyboard.press("Enter")
    message = page.locator("#message")
    expect(message).to_contain_text("Moved 1 face to a new person: Unnamed person #")
    expect(message).not_to_have_class(re.compile("error"))
    assert dialogs[-1].startswith("Move 1 face out of ")
    link = message.locator("a")
    href = link.get_attribute("href") or ""
    new = int(href.rsplit("/", 1)[1])
    expect(link).to_have_text(f"Unnamed person #{new}")
    expect(link).to_be_focused()
    # The list is this person's again: one face, nothing chosen.
    expect(cards).to_have_count(1)
    expect(cards.locator(".names")).to_have_text("dropped.jpg, img1.jpg")
    expect(button).to_be_disabled()
    assert axe_violations(page) == []
    moved = api(service, f"/people/{new}")
    assert [(f["hash"], f["face"]) for f in moved["faces"]] == [(GROUP, group_face)]
    assert [f["hash"] for f in api(service, f"/people/{rose}")["faces"]] == [ROSE]
    refused = http("POST", f"{service.url}/people/{rose}/merge", json_body={"from": new})
    assert refused.status == 409 and "apart" in refused.body["error"], refused.body
    # The message's link leads to the new person.
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/ui/people/{new}")
    ready(page)
    expect(page.locator("#person-faces .names")).to_have_text(["kit_with_rose.jpg"])
    # And the page says why a merge of the two is refused.
    console.expect_refusal(409)
    page.fill("#merge-from", str(rose))
    page.click("#merge button")
    expect(page.locator("#message")).to_have_text(
        "Could not merge: these cannot be merged: marked apart")


def test_two_people_marked_apart_through_the_page_are_never_merged(
        page: Page, service: Service, console: Console) -> None:
    _people_routes(service)
    biden = _person_of(service, sha256_hex((FACES / "biden/biden.jpg").read_bytes()))
    alex = _person_of(service, sha256_hex((FACES / "alex_lacamoire/img1.jpg").read_bytes()))
    page.goto(f"{service.url}/ui/people/{biden}")
    ready(page)
    dialogs = confirmations(page)
    console.expect_refusal(409)
    console.expect_refusal(404)
    # The service's refusals are shown as it gives them.
    page.fill("#apart-from", str(biden))
    page.click("#apart button")
    expect(page.locator("#message")).to_have_text(
        "Could not mark apart: a person cannot be apart from itself")
    expect(page.locator("#message")).to_have_class(re.compile("error"))
    page.fill("#apart-from", "987654")
    page.press("#apart-from", "Enter")
    expect(page.locator("#message")).to_have_text(
        "Could not mark apart: no person with one of these ids")
    page.get_by_label("Never the same person as #").fill(str(alex))
    page.click("#apart button")
    expect(page.locator("#message")).to_have_text(
        f"Person #{alex} is marked as never the same person as Unnamed person #{biden}.")
    expect(page.locator("#message a")).to_have_attribute("href", f"/ui/people/{alex}")
    expect(page.locator("#apart-from")).to_have_value("")
    assert f"Mark person #{alex} as never the same person as" in dialogs[-1]
    refused = http("POST", f"{service.url}/people/{alex}/merge", json_body={"from": biden})
    assert refused.status == 409 and "marked apart" in refused.body["error"], refused.body
    page.fill("#merge-from", str(alex))
    page.click("#merge button")
    expect(page.locator("#message")).to_have_text(
        "Could not merge: these cannot be merged: marked apart")
    assert len(api(service, f"/people/{biden}")["faces"]) == 1
    assert len(api(service, f"/people/{alex}")["faces"]) == 1


def test_erasing_a_person_erases_every_image_holding_their_faces(
        page: Page, service: Service) -> None:
    _people_routes(service)
    obama_photo = sha256_hex((FACES / "obama/obama_small.jpg").read_bytes())
    obama = _person_of(service, obama_photo)
    before = {v["hash"] for v in api(service, "/ui/api/images?limit=100")["images"]}
    assert obama_photo in before
    page.goto(f"{service.url}/ui/people/{obama}")
    ready(page)
    dialogs = confirmations(page)
    page.click("#erase-person")
    page.wait_for_url(re.compile(r"/ui/people$"))
    ready(page)
    assert dialogs and "every image holding one of their 1 face" in dialogs[0]
    expect(page.locator("#message")).to_have_text("Erased 1 image.")
    expect(page.locator(f"#people [data-person='{obama}']")).to_have_count(0)
    after = {v["hash"] for v in api(service, "/ui/api/images?limit=100")["images"]}
    assert after == before - {obama_photo}
    assert not (service.images / obama_photo).exists()
    page.goto(service.url + "/ui")
    ready(page)
    expect(page.locator(f"#gallery [data-hash='{obama_photo}']")).to_have_count(0)
