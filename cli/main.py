"""facerec: scan photos, ask for matches, follow the logs.

    facerec scan PATH|URL ... [--from-file LIST] [-j N] [--wait]
    facerec match HASH|FILE [-v] [--tolerance T]
    facerec search FILE [--tolerance T] [--limit N]
    facerec status HASH
    facerec delete HASH|FILE | --name NAME
    facerec logs [PATTERN]
    facerec dead list | requeue
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cli.client import Client, ClientError
from facerec.deadletters import list_dead, requeue_dead
from facerec.errors import BrokerUnavailable
from facerec.messages import is_image_hash, sha256_hex
from facerec.settings import Settings
from facerec.topiclog import component_of, follow

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


@dataclass
class Item:
    name: str  # file path relative to its root, or the URL
    path: Path | None = None
    image_hash: str = ""
    outcome: str = ""  # queued | duplicate | known_url | failed
    error: str = ""
    status: dict[str, Any] = field(default_factory=dict)


@dataclass
class Ctx:
    client: Client
    as_json: bool


def expand(targets: Iterable[str]) -> list[Item]:
    """Files, directories (recursively, image files only) and URLs, in a stable order."""
    items: list[Item] = []
    for target in targets:
        if target.startswith(("http://", "https://")):
            items.append(Item(target))
            continue
        path = Path(target)
        if path.is_dir():
            for f in sorted(p for p in path.rglob("*")
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
                items.append(Item(f.relative_to(path).as_posix(), f))
        elif path.is_file():
            items.append(Item(path.name, path))
        else:
            items.append(Item(target, error="no such file or directory"))
    return items


def progress(total: int, what: str) -> Progress:
    return Progress(TextColumn(f"[bold]{what}"), BarColumn(), MofNCompleteColumn(),
                    TaskProgressColumn(), TextColumn("{task.fields[rate]}"),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                    console=err, disable=not err.is_terminal, transient=False)


def run_all(items: list[Item], jobs: int, what: str, work: Any) -> None:
    """Run work(item) over items on `jobs` threads with a progress bar (a TTY) or lines."""
    start = time.monotonic()
    with progress(len(items), what) as bar, ThreadPoolExecutor(max(1, jobs)) as pool:
        task = bar.add_task(what, total=len(items), rate="")
        futures = {pool.submit(work, item): item for item in items}
        for n, future in enumerate(as_completed(futures), 1):
            item = futures[future]
            future.result()
            rate = n / max(time.monotonic() - start, 1e-9)
            bar.update(task, advance=1, rate=f"{rate:.1f}/s")
            if not err.is_terminal:
                state = f"FAILED ({item.error})" if item.error else item.outcome
                err.print(f"[{n}/{len(items)}] {item.name}: {state}", highlight=False)


@click.group(help=__doc__)
@click.option("--rest", envvar="FACEREC_URL", default="http://localhost:5000",
              show_default=True, help="REST service URL (env FACEREC_URL)")
@click.option("--token", envvar="FACEREC_TOKEN", default="",
              help="API token, when the service requires one (env FACEREC_TOKEN)")
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
@click.pass_context
def cli(ctx: click.Context, rest: str, token: str, as_json: bool) -> None:
    client = Client(rest, token)
    ctx.call_on_close(client.close)
    ctx.obj = Ctx(client, as_json)


@cli.command()
@click.argument("targets", nargs=-1)
@click.option("--from-file", "from_file", type=click.File("r"),
              help="read more targets from this file, one per line")
@click.option("-j", "--jobs", default=4, show_default=True, help="concurrent uploads")
@click.option("--wait", is_flag=True, help="wait until processed; print faces and matches")
@click.option("--timeout", default=600.0, show_default=True, help="seconds --wait waits")
@click.pass_obj
def scan(ctx: Ctx, targets: tuple[str, ...], from_file: Any, jobs: int, wait: bool,
         timeout: float) -> None:
    """Send files, folders and URLs to be scanned."""
    names = list(targets)
    if from_file is not None:
        names += [line.strip() for line in from_file if line.strip()
                  and not line.lstrip().startswith("#")]
    if not names:
        raise click.UsageError("nothing to scan: give files, folders, URLs or --from-file")
    items = expand(names)
    seen: dict[str, str] = {}

    def send(item: Item) -> None:
        if item.error:
            return
        try:
            if item.path is None:
                scanned = ctx.client.scan_url(item.name)
            else:
                data = item.path.read_bytes()
                scanned = ctx.client.scan_bytes(item.name, data)
            item.image_hash, item.outcome = scanned.image_hash, scanned.outcome
        except (ClientError, OSError) as exc:
            item.error = str(exc)

    run_all(items, jobs, "scanning", send)
    for item in items:  # same bytes twice in one run: the second is a duplicate
        if item.image_hash and item.outcome == "queued" and item.image_hash in seen:
            item.outcome = "duplicate"
        seen.setdefault(item.image_hash, item.name)
    if wait:
        wait_for(ctx, [i for i in items if i.image_hash], timeout)
    report(ctx, items, wait)
    if any(i.error or i.status.get("status") == "failed" for i in items):
        sys.exit(1)


def wait_for(ctx: Ctx, items: list[Item], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = {i.image_hash for i in items}
    views: dict[str, dict[str, Any]] = {}
    with progress(len(pending), "processing") as bar:
        task = bar.add_task("processing", total=len(pending), rate="")
        while pending and time.monotonic() < deadline:
            for h in sorted(pending):
                view = ctx.client.image(h)
                if view["status"] in ("done", "failed"):
                    views[h] = view
                    pending.discard(h)
                    bar.update(task, advance=1)
            if pending:
                time.sleep(0.5)
    # Matches of an image processed early grow as later ones arrive: read them at the end.
    final = {h: ctx.client.image(h) for h in views}
    for item in items:
        if item.image_hash in final:
            item.status = final[item.image_hash]
        else:
            item.error = f"not processed within {timeout:.0f}s"


def report(ctx: Ctx, items: list[Item], waited: bool) -> None:
    if ctx.as_json:
        out.print_json(json.dumps([{
            "name": i.name, "hash": i.image_hash or None, "outcome": i.outcome or "failed",
            "error": i.error or None,
            **({"status": i.status.get("status"), "faces": len(i.status.get("faces", [])),
                "matches": sorted({n for m in i.status.get("matches", []) for n in m["names"]})}
               if i.status else {})} for i in items]))
        return
    if waited:
        for i in items:
            if not i.status:
                continue
            matches = sorted({n for m in i.status.get("matches", []) for n in m["names"]})
            if i.status["status"] == "failed":
                out.print(f"{i.name}: [red]failed[/red] ({i.status.get('reason', '')})")
            else:
                out.print(f"{i.name}: {len(i.status['faces'])} face(s); matches: "
                          f"{', '.join(matches) or '-'}", highlight=False)
    sent = sum(1 for i in items if i.image_hash)
    dups = sum(1 for i in items if i.outcome in ("duplicate", "known_url"))
    failed = [i for i in items if i.error]
    err.print(f"sent {sent}, deduplicated {dups}, failed {len(failed)}", highlight=False)
    for i in failed:
        err.print(f"  {i.name}: {i.error}", highlight=False)


def resolve_hash(target: str) -> str:
    path = Path(target)
    if path.is_file():
        return sha256_hex(path.read_bytes())
    if is_image_hash(target):
        return target
    raise click.BadParameter(f"{target!r} is neither a file nor a SHA-256 hash")


@cli.command()
@click.argument("target")
@click.option("-v", "--verbose", is_flag=True, help="also print hashes and distances")
@click.option("--tolerance", type=float, default=None,
              help="only matches at most this far (at most the service's MATCH_TOLERANCE)")
@click.pass_obj
def match(ctx: Ctx, target: str, verbose: bool, tolerance: float | None) -> None:
    """Names of the images with a face matching HASH (or FILE, hashed locally)."""
    image_hash = resolve_hash(target)
    if not verbose:
        names = ctx.client.match(image_hash, tolerance)
        if ctx.as_json:
            out.print_json(json.dumps(names))
        else:
            for name in names:
                out.print(name, highlight=False)
        return
    try:
        view = ctx.client.image(image_hash)
    except ClientError as exc:
        if "HTTP 404" in str(exc):
            raise ClientError(f"{image_hash} was never scanned") from None
        raise
    matches = [m for m in by_distance(view["matches"])
               if tolerance is None or (m["distance"] is not None and m["distance"] <= tolerance)]
    if ctx.as_json:
        out.print_json(json.dumps(matches))
        return
    for m in matches:
        distance = "?" if m["distance"] is None else f"{m['distance']:.3f}"
        out.print(f"{m['hash']}  {distance}  {', '.join(m['names'])}", highlight=False)


def by_distance(matches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Nearest first (a match recorded without a distance last)."""
    return sorted(matches, key=lambda m: (m["distance"] is None, m["distance"] or 0.0,
                                          m["hash"]))


@cli.command()
@click.argument("image_hash")
@click.pass_obj
def status(ctx: Ctx, image_hash: str) -> None:
    """What the service knows about one image."""
    view = ctx.client.image(resolve_hash(image_hash))
    if ctx.as_json:
        out.print_json(json.dumps(view))
        return
    out.print(f"hash:    {view['hash']}", highlight=False)
    out.print(f"status:  {view['status']}" + (f" ({view['reason']})" if "reason" in view else ""),
              highlight=False)
    out.print(f"names:   {', '.join(view['names']) or '-'}", highlight=False)
    out.print(f"faces:   {len(view['faces'])}", highlight=False)
    for f in view["faces"]:
        out.print(f"  top {f['top']}, right {f['right']}, bottom {f['bottom']}, "
                  f"left {f['left']}", highlight=False)
    out.print(f"matches: {len(view['matches'])}", highlight=False)
    for m in by_distance(view["matches"]):
        distance = "?" if m["distance"] is None else f"{m['distance']:.3f}"
        out.print(f"  {distance}  {', '.join(m['names'])}  ({m['hash'][:12]}…)",
                  highlight=False)


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tolerance", type=float, default=None,
              help="match distance, in (0, 1] (default: the service's MATCH_TOLERANCE)")
@click.option("--limit", type=int, default=None, help="matches per face at most")
@click.pass_obj
def search(ctx: Ctx, file: Path, tolerance: float | None, limit: int | None) -> None:
    """Who is in FILE? Its faces and, for each, the matching images; nothing is stored."""
    answer = ctx.client.search(file.read_bytes(), tolerance, limit)
    if ctx.as_json:
        out.print_json(json.dumps(answer))
        return
    if not answer["faces"]:
        out.print("no face found", highlight=False)
    for n, face in enumerate(answer["faces"], 1):
        top, right, bottom, left = face["box"]
        out.print(f"face {n} (top {top}, right {right}, bottom {bottom}, left {left}): "
                  f"{len(face['matches'])} match(es)", highlight=False)
        for m in face["matches"]:
            out.print(f"  {m['distance']:.3f}  {', '.join(m['names']) or '-'}  "
                      f"({m['hash'][:12]}…)", highlight=False, markup=False)


@cli.command()
@click.argument("target", required=False)
@click.option("--name", "name", default=None, help="remove this name (a file name or URL)")
@click.pass_obj
def delete(ctx: Ctx, target: str | None, name: str | None) -> None:
    """Erase an image (HASH, or FILE hashed locally) with everything it brought, or a name.

    An image left without any name is erased too.
    """
    if (target is None) == (name is None):
        raise click.UsageError("give an image (HASH or FILE) or --name NAME, not both")
    if name is not None:
        answer = ctx.client.delete_name(name)
        erased = answer["erased"]
    else:
        answer = ctx.client.delete_image(resolve_hash(target or ""))
        erased = [answer]
    if ctx.as_json:
        out.print_json(json.dumps(answer))
        return
    if name is not None:
        out.print(f"name {name!r} removed", highlight=False, markup=False)
    for e in erased:
        out.print(f"erased {e['hash']}: {e['faces']} face(s), {len(e['names'])} name(s), "
                  f"{e['matches']} match(es), stored object "
                  f"{'deleted' if e['stored_object'] else 'none'}, "
                  f"{e['dead_letters']} dead letter(s)", highlight=False)


def _person_line(p: dict[str, Any]) -> str:
    return f"{p['id']:>6}  {p['faces']:>5} face(s)  {p['name'] or '(no name)'}"


def _face_ref(text: str) -> tuple[str, int]:
    h, _, j = text.rpartition(":")
    if not (h and j.isdigit()):
        raise click.UsageError(f"a face is HASH:POSITION, not {text!r}")
    return resolve_hash(h), int(j)


def _person_id(text: str) -> int:
    if not text.isdigit():
        raise click.UsageError(f"a person id is a number, not {text!r}")
    return int(text)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("words", nargs=-1)
@click.option("--limit", type=int, default=50, show_default=True, help="people listed")
@click.option("--offset", type=int, default=0, help="skip the largest OFFSET people")
@click.pass_obj
def people(ctx: Ctx, words: tuple[str, ...], limit: int, offset: int) -> None:
    """The people the faces were grouped into.

    \b
    facerec people                 list them, largest first
    facerec people ID              one person's faces
    facerec people name ID NAME    name a person ("" clears the name)
    facerec people merge ID OTHER  move every face of OTHER into ID
    facerec people split ID HASH:FACE...   move these faces out to a new person
    facerec people apart ID OTHER  never the same person
    """
    if not words:
        answer = ctx.client.people(offset, limit)
        if ctx.as_json:
            out.print_json(json.dumps(answer))
            return
        for p in answer["people"]:
            out.print(_person_line(p), highlight=False, markup=False)
        err.print(f"{answer['total']} people", highlight=False)
        return
    verbs = ("name", "merge", "split", "apart")
    verb, args = (words[0], words[1:]) if words[0] in verbs else ("show", words)
    if verb == "split" and len(args) >= 2:
        answer = ctx.client.split_person(_person_id(args[0]), [_face_ref(a) for a in args[1:]])
        answer = answer["person"]
    elif verb == "apart" and len(args) == 2:
        answer = ctx.client.mark_apart(_person_id(args[0]), _person_id(args[1]))
    elif verb == "name" and len(args) == 2:
        answer = ctx.client.name_person(_person_id(args[0]), args[1] or None)
    elif verb == "merge" and len(args) == 2:
        answer = ctx.client.merge_people(_person_id(args[0]), _person_id(args[1]))
    elif verb == "show" and len(args) == 1:
        answer = ctx.client.person(_person_id(args[0]))
    else:
        raise click.UsageError("facerec people [ID] | people name ID NAME | people merge "
                               "ID OTHER | people split ID HASH:FACE... | people apart ID "
                               "OTHER")
    if ctx.as_json:
        out.print_json(json.dumps(answer))
        return
    faces = answer["faces"]
    out.print(_person_line({**answer, "faces": len(faces) if isinstance(faces, list)
                            else faces}), highlight=False, markup=False)
    for f in faces if isinstance(faces, list) else []:
        out.print(f"  {f['hash'][:12]}… face {f['face']}  {', '.join(f['names']) or '-'}",
                  highlight=False, markup=False)


COMPONENT_STYLE = {"rest": "cyan", "worker": "green", "logs": "magenta"}


@cli.command()
@click.argument("pattern", default="#")
@click.option("--seconds", type=float, default=None, hidden=True,
              help="stop after this many seconds (tests)")
@click.pass_obj
def logs(ctx: Ctx, pattern: str, seconds: float | None) -> None:
    """Follow the logs exchange (RABBITMQ_* settings), e.g. PATTERN '*.worker.info'."""
    def emit(key: str, text: str) -> None:
        if ctx.as_json:
            print(json.dumps({"key": key, "message": text}), flush=True)
            return
        component, level = component_of(key)
        style = COMPONENT_STYLE.get(component, "white")
        out.print(f"[{style}]{key}[/{style}] " + (f"[dim]{text}[/dim]" if level == "debug"
                                                   else text), highlight=False)

    stop = threading.Event()
    if seconds is not None:
        timer = threading.Timer(seconds, stop.set)
        timer.daemon = True
        timer.start()
    try:
        follow(Settings.from_env(), pattern, emit, stop)
    except KeyboardInterrupt:
        stop.set()


@cli.group()
def dead() -> None:
    """The dead-letter queue (RABBITMQ_* settings): images that could not be processed."""


@dead.command("list")
@click.option("--limit", type=int, default=None, help="show at most this many")
@click.pass_obj
def dead_list(ctx: Ctx, limit: int | None) -> None:
    """Show each dead letter: hash, name, deliveries and reason (the queue is unchanged)."""
    letters = list_dead(Settings.from_env(), limit)
    if ctx.as_json:
        out.print_json(json.dumps([{"hash": d.image_hash or None, "name": d.name or None,
                                    "deliveries": d.count, "reason": d.reason}
                                   for d in letters]))
        return
    for d in letters:
        out.print(f"{d.image_hash[:12] or '-':<12}  {d.name or '-'}  "
                  f"(deliveries: {d.count or '?'})  {d.reason}", highlight=False)
    err.print(f"{len(letters)} dead letter(s)", highlight=False)


@dead.command("requeue")
@click.option("--limit", type=int, default=None, help="requeue at most this many")
@click.pass_obj
def dead_requeue(ctx: Ctx, limit: int | None) -> None:
    """Send dead letters back to the workers, with their full number of attempts."""
    moved = requeue_dead(Settings.from_env(), limit)
    if ctx.as_json:
        out.print_json(json.dumps({"requeued": moved}))
    else:
        err.print(f"requeued {moved} dead letter(s)", highlight=False)


def main() -> None:
    try:
        cli(standalone_mode=False)
    except (ClientError, BrokerUnavailable) as exc:
        err.print(f"facerec: {exc}", highlight=False, markup=False)
        sys.exit(1)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
