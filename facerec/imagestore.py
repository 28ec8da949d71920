"""Where image bytes travel: inline in the message, or stored first (claim check).

With a store, rest writes the image under its hash before publishing, and the message
carries only the reference; the worker reads the bytes back and checks their hash. The
reference in a message is never trusted as a location: a worker only reads the object
its own store names for that hash, so a message cannot point it anywhere else.

    IMAGE_STORE=inline                  bytes in the message (default: needs no cloud)
    IMAGE_STORE=gs://bucket[/prefix]    Google Cloud Storage (Application Default
                                        Credentials; STORAGE_EMULATOR_HOST for an emulator)
    IMAGE_STORE=file:///absolute/dir    a local directory (development)
"""

from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from facerec.errors import ImageMissing, ImageStoreUnavailable, InvalidMessage
from facerec.settings import Settings


class ImageStore(Protocol):
    inline: bool

    def ref(self, image_hash: str) -> str:
        """The reference a message carries for this hash ("" when inline)."""

    def put(self, image_hash: str, data: bytes) -> bool:
        """Store the bytes unless already stored; True if they were uploaded now."""

    def get(self, image_hash: str) -> bytes:
        """The stored bytes; ImageMissing if there are none."""

    def read(self, image_hash: str) -> bytes | None:
        """The stored bytes for viewing, or None (always None when inline)."""

    def delete(self, image_hash: str) -> bool:
        """Remove the object if present; True if there was one."""


class InlineStore:
    inline = True

    def ref(self, image_hash: str) -> str:
        return ""

    def put(self, image_hash: str, data: bytes) -> bool:
        return False

    def get(self, image_hash: str) -> bytes:
        raise ImageMissing("IMAGE_STORE is inline: images are only in their messages")

    def read(self, image_hash: str) -> bytes | None:
        return None

    def delete(self, image_hash: str) -> bool:
        return False


class _ObjectStore(ABC):
    """What stores that keep objects share: get() is read() that must find the object."""

    inline = False

    @abstractmethod
    def ref(self, image_hash: str) -> str: ...

    @abstractmethod
    def read(self, image_hash: str) -> bytes | None: ...

    def get(self, image_hash: str) -> bytes:
        data = self.read(image_hash)
        if data is None:
            raise ImageMissing(f"no stored image {self.ref(image_hash)}")
        return data


class LocalStore(_ObjectStore):
    """Objects as files <root>/<hash>; written to a temporary file, then renamed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def ref(self, image_hash: str) -> str:
        return (self.root / image_hash).as_uri()

    def put(self, image_hash: str, data: bytes) -> bool:
        path = self.root / image_hash
        if path.exists():
            return False
        try:
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".upload-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise ImageStoreUnavailable(f"cannot write {path}: {exc}") from exc
        return True

    def read(self, image_hash: str) -> bytes | None:
        try:
            return (self.root / image_hash).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ImageStoreUnavailable(f"cannot read {image_hash}: {exc}") from exc

    def delete(self, image_hash: str) -> bool:
        try:
            (self.root / image_hash).unlink()
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise ImageStoreUnavailable(f"cannot delete {image_hash}: {exc}") from exc


class GCSStore(_ObjectStore):
    """Objects gs://bucket/prefix/<hash> in Google Cloud Storage."""

    def __init__(self, bucket: str, prefix: str, timeout: float = 10.0) -> None:
        from google.cloud import storage  # only deployments that use GCS pay the import
        from google.cloud.storage.retry import DEFAULT_RETRY

        if os.environ.get("STORAGE_EMULATOR_HOST"):
            from google.auth.credentials import AnonymousCredentials

            client = storage.Client(project="facerec-local",
                                    credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]
        else:
            client = storage.Client()  # Application Default Credentials / workload identity
        self.bucket_name = bucket
        self.prefix = prefix.strip("/")
        self.timeout = timeout
        # The library retries for up to 120 s by default: bound it, so that rest answers
        # 503 in seconds and a worker's own backoff (facerec.pipeline) takes over.
        self.retry = DEFAULT_RETRY.with_timeout(timeout)
        self._bucket = client.bucket(bucket)

    def _name(self, image_hash: str) -> str:
        return f"{self.prefix}/{image_hash}" if self.prefix else image_hash

    def ref(self, image_hash: str) -> str:
        return f"gs://{self.bucket_name}/{self._name(image_hash)}"

    def put(self, image_hash: str, data: bytes) -> bool:
        from google.api_core import exceptions

        blob = self._bucket.blob(self._name(image_hash))
        try:
            if blob.exists(timeout=self.timeout, retry=self.retry):
                return False
            # Content-addressed: a racing second upload writes the same bytes, and real GCS
            # refuses it anyway (if_generation_match=0: only if no object exists yet).
            blob.upload_from_string(data, content_type="application/octet-stream",
                                    if_generation_match=0, timeout=self.timeout,
                                    retry=self.retry)
        except exceptions.PreconditionFailed:
            return False
        except Exception as exc:  # google-cloud raises many types
            raise ImageStoreUnavailable(f"upload to {self.ref(image_hash)} failed: {exc}") from exc
        return True

    def read(self, image_hash: str) -> bytes | None:
        from google.api_core import exceptions

        try:
            return bytes(self._bucket.blob(self._name(image_hash)).download_as_bytes(
                timeout=self.timeout, retry=self.retry))
        except exceptions.NotFound:
            return None
        except Exception as exc:
            raise ImageStoreUnavailable(f"download of {self.ref(image_hash)} failed: "
                                        f"{exc}") from exc

    def delete(self, image_hash: str) -> bool:
        from google.api_core import exceptions

        try:
            self._bucket.blob(self._name(image_hash)).delete(timeout=self.timeout,
                                                             retry=self.retry)
            return True
        except exceptions.NotFound:
            return False
        except Exception as exc:  # google-cloud raises many types
            raise ImageStoreUnavailable(f"delete of {self.ref(image_hash)} failed: "
                                        f"{exc}") from exc


def open_store(settings: Settings) -> ImageStore:
    """The store IMAGE_STORE names; ValueError for a setting it cannot use."""
    spec = settings.image_store
    if spec in ("", "inline"):
        return InlineStore()
    parts = urlsplit(spec)
    if parts.scheme == "gs" and parts.netloc:
        return GCSStore(parts.netloc, parts.path)
    if parts.scheme == "file" and parts.path.startswith("/"):
        return LocalStore(Path(parts.path))
    raise ValueError(f"IMAGE_STORE must be inline, gs://bucket[/prefix] or file:///dir, "
                     f"not {spec!r}")


def check_ref(store: ImageStore, image_hash: str, ref: str) -> None:
    """Refuse a message whose reference is not the one this store gives its hash."""
    if store.inline or ref != store.ref(image_hash):
        raise InvalidMessage(f"reference {ref[:200]!r} is not this service's store "
                             f"location for the image")
