"""The image message: a small versioned header (AMQP headers table) and the raw bytes.

Schema 1 carries the image bytes as the body. Schema 2 (IMAGE_STORE set: claim check)
carries an empty body and a `ref` header naming the stored object; the worker reads the
bytes from its own store and checks their hash (facerec.imagestore).

Nothing in a message is ever unpickled or JSON-decoded into objects: the header is a flat
table of strings and integers, checked field by field, and the body is only ever handed to
the image decoder after its SHA-256 matches the header.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from facerec.errors import InvalidMessage

INLINE_SCHEMA = 1
STORED_SCHEMA = 2
CONTENT_TYPE = "application/octet-stream"
KINDS = frozenset({"upload", "url"})
# The longest name (a file name, or a URL) and the longest URL accepted, in characters.
MAX_NAME_LENGTH = 2048
# The HTTP response header in which rest says what a scan did (queued, duplicate,
# known_url); the JSON body stays the lab's {"hash": ...}.
OUTCOME_HEADER = "X-Facerec-Outcome"
# An image is named by the SHA-256 of its bytes (the OpenAPI document uses the same pattern).
HASH_PATTERN = "^[0-9a-f]{64}$"
HASH_DESCRIPTION = "64 lowercase hex digits (SHA-256)"
_HASH = re.compile(HASH_PATTERN)
TICKET_BYTES = 16
_TICKET = re.compile(f"[0-9a-f]{{{2 * TICKET_BYTES}}}")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_image_hash(text: str) -> bool:
    return _HASH.fullmatch(text) is not None


@dataclass(frozen=True)
class ImageMessage:
    image_hash: str
    name: str
    kind: str
    body: bytes
    ref: str = ""  # where the bytes are stored (schema 2); "" when they are the body
    # Random id given by rest (facerec.store: tickets keep erased images erased); "" in
    # messages of versions before erasure existed.
    ticket: str = ""

    @classmethod
    def for_image(cls, body: bytes, name: str, kind: str) -> ImageMessage:
        msg = cls(sha256_hex(body), name, kind, body)
        msg.check(hashed=True)
        return msg

    def stored_at(self, ref: str) -> ImageMessage:
        """The schema-2 form of this message: no body, a reference instead."""
        return dataclasses.replace(self, body=b"", ref=ref)

    def with_ticket(self) -> ImageMessage:
        """This message with a new random ticket."""
        return dataclasses.replace(self, ticket=secrets.token_hex(TICKET_BYTES))

    def with_body(self, body: bytes) -> ImageMessage:
        """The message with the bytes read back from the store, checked against the hash."""
        msg = dataclasses.replace(self, body=body, ref="")
        msg.check()  # the bytes came back from the store: they must be the ones named
        return msg

    def headers(self) -> dict[str, Any]:
        headers: dict[str, Any] = {"schema": STORED_SCHEMA if self.ref else INLINE_SCHEMA,
                                   "hash": self.image_hash, "name": self.name,
                                   "kind": self.kind}
        if self.ref:
            headers["ref"] = self.ref
        if self.ticket:
            headers["ticket"] = self.ticket
        return headers

    def check(self, hashed: bool = False) -> None:
        """Validate every field; `hashed`: the hash was just computed from the body."""
        if not is_image_hash(self.image_hash):
            raise InvalidMessage(f"header hash is not {HASH_DESCRIPTION}")
        if not self.name or len(self.name) > MAX_NAME_LENGTH:
            raise InvalidMessage(f"header name must have 1 to {MAX_NAME_LENGTH} characters")
        if self.kind not in KINDS:
            raise InvalidMessage(f"header kind must be one of {sorted(KINDS)}")
        if self.ticket and _TICKET.fullmatch(self.ticket) is None:
            raise InvalidMessage(f"header ticket must be {2 * TICKET_BYTES} lowercase hex "
                                 f"digits")
        if self.ref:
            if self.body:
                raise InvalidMessage("a message with a ref must have an empty body")
            if len(self.ref) > MAX_NAME_LENGTH:
                raise InvalidMessage("header ref is too long")
            return
        if not self.body:
            raise InvalidMessage("empty body")
        if not hashed and sha256_hex(self.body) != self.image_hash:
            raise InvalidMessage("body does not match the header hash")

    @classmethod
    def parse(cls, headers: Mapping[str, Any] | None, content_type: str | None,
              body: bytes) -> ImageMessage:
        """Validate a received message; raise InvalidMessage saying what is wrong."""
        if content_type != CONTENT_TYPE:
            raise InvalidMessage(f"content type {content_type!r} is not {CONTENT_TYPE}")
        if not isinstance(headers, Mapping):
            raise InvalidMessage("message has no headers")
        schema = headers.get("schema")
        if schema not in (INLINE_SCHEMA, STORED_SCHEMA) or isinstance(schema, bool):
            raise InvalidMessage(f"unsupported schema {schema!r}")
        keys = ("hash", "name", "kind") + (("ref",) if schema == STORED_SCHEMA else ())
        optional = ("ticket",)
        fields = {}
        for key in keys + optional:
            value = headers.get(key)
            if value is None and key in optional:
                continue
            if isinstance(value, bytes):
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError:
                    raise InvalidMessage(f"header {key} is not UTF-8") from None
            if not isinstance(value, str):
                raise InvalidMessage(f"header {key} missing or not a string")
            fields[key] = value
        msg = cls(fields["hash"], fields["name"], fields["kind"], bytes(body),
                  fields.get("ref", ""), fields.get("ticket", ""))
        if schema == STORED_SCHEMA and not msg.ref:
            raise InvalidMessage("schema 2 needs a non-empty ref")
        msg.check()
        return msg
