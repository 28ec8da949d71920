"""Scan a folder of photos through the REST API and print who matches whom.

    python scripts/demo.py [--rest URL] [--token SECRET] FOLDER

Uses only the lab-style routes (POST /scan/image/<name>, GET /match/<hash>) plus
/image/<hash> to wait until each image is processed. The credential, when the service
requires one, is --token, else FACEREC_TOKEN, else the service's own settings in this
environment (API_TOKEN, or the first full-scope entry of API_KEYS), as `make up` has them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facerec.credentials import FULL, parse

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


HEADERS: dict[str, str] = {}


def call(method: str, url: str, data: bytes | None = None) -> object:
    req = urllib.request.Request(url, data=data, method=method, headers=HEADERS)
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def default_token() -> str:
    if os.environ.get("FACEREC_TOKEN"):
        return os.environ["FACEREC_TOKEN"]
    full = [c for c in parse(os.environ.get("API_KEYS", ""), os.environ.get("API_TOKEN", ""))
            if c.scope == FULL]
    return full[0].secret if full else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rest", default="http://127.0.0.1:5000")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--token", default=None, help="credential (default: see above)")
    args = parser.parse_args()
    token = default_token() if args.token is None else args.token
    if token:
        HEADERS["Authorization"] = f"Bearer {token}"

    files = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    hashes: dict[str, str] = {}
    for path in files:
        name = str(path.relative_to(args.folder))
        hashes[name] = call("POST", f"{args.rest}/scan/image/{name}", path.read_bytes())["hash"]
    print(f"scanned {len(files)} photos from {args.folder}; waiting for the workers...")
    deadline = time.monotonic() + args.timeout
    pending = set(hashes.values())
    while pending and time.monotonic() < deadline:
        pending = {h for h in pending
                   if call("GET", f"{args.rest}/image/{h}")["status"] not in ("done", "failed")}
        time.sleep(0.5)
    if pending:
        print(f"{len(pending)} images still not processed after {args.timeout:.0f}s",
              file=sys.stderr)
        return 1
    width = max(map(len, hashes))
    for name, h in hashes.items():
        view = call("GET", f"{args.rest}/image/{h}")
        matches = call("GET", f"{args.rest}/match/{h}")
        faces = len(view["faces"])
        shown = ", ".join(m for m in matches if m != name) or "-"
        print(f"{name:<{width}}  {faces} face{'s' if faces != 1 else ' '}  matches: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
