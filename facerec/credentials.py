"""Who may do what: API credentials with an id and a scope, checked in constant time.

    API_KEYS="ops:full:<secret>,dashboard:read:<secret>"     (a Kubernetes Secret)

`read` may look (matches, image views and bytes, searches); `full` may also change
(scan, erase). Several credentials may be valid at once, so a secret is rotated by adding
the new one, moving clients, then removing the old one. The id, never the secret, is what
logs show. The older `API_TOKEN=<secret>` is one more `full` credential, id `token`.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, field

READ = "read"
FULL = "full"
SCOPES = (READ, FULL)
_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
BEARER = "Bearer "


@dataclass(frozen=True)
class Credential:
    id: str
    scope: str
    secret: str = field(repr=False)

    def allows(self, needed: str) -> bool:
        return self.scope == FULL or needed == READ


def parse(api_keys: str, api_token: str = "") -> tuple[Credential, ...]:
    """The credentials API_KEYS and API_TOKEN configure; ValueError saying what is wrong
    (never quoting a secret)."""
    found: list[Credential] = []
    for n, entry in enumerate((e.strip() for e in api_keys.replace("\n", ",").split(",")), 1):
        if not entry:
            continue
        parts = entry.split(":", 2)
        if len(parts) != 3:
            raise ValueError(f"API_KEYS entry {n} must be id:scope:secret")
        ident, scope, secret = parts
        if not _ID.fullmatch(ident):
            raise ValueError(f"API_KEYS entry {n}: the id must be 1-64 of A-Z a-z 0-9 _ . -")
        if scope not in SCOPES:
            raise ValueError(f"API_KEYS entry {n} ({ident}): scope must be read or full")
        if len(secret) < 8:
            raise ValueError(f"API_KEYS entry {n} ({ident}): the secret is shorter than 8")
        found.append(Credential(ident, scope, secret))
    if api_token:
        found.append(Credential("token", FULL, api_token))
    ids = [c.id for c in found]
    if len(set(ids)) != len(ids):
        raise ValueError("API_KEYS/API_TOKEN: two credentials have the same id")
    if len({c.secret for c in found}) != len(found):
        raise ValueError("API_KEYS/API_TOKEN: two credentials have the same secret")
    return tuple(found)


def identify(credentials: tuple[Credential, ...], authorization: str) -> Credential | None:
    """The credential an `Authorization: Bearer <secret>` header presents, or None.

    Every configured secret is compared, in constant time, whatever matched: the answer's
    timing says nothing about which secret was close or which one matched.
    """
    if not authorization.startswith(BEARER):
        return None
    given = authorization[len(BEARER):].encode()
    found = None
    for credential in credentials:
        if hmac.compare_digest(given, credential.secret.encode()):
            found = credential
    return found
