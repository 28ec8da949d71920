"""Where image bytes travel: inline in the message, or stored first (claim check).

With a store, rest writes the image under its hash before publishing, and the message
carries only the reference; the worker reads the bytes back and checks their hash. The
reference in a message is never trusted as a location: a worker only reads the object
its own store names for that hash, so a message cannot point it anywhere else.

    IMAGE_STORE=inline                  bytes in the message (default: needs no cloud)
    IMAGE_STORE=gs://bucket[/prefix]    Google Cloud Storage (Application Default
                                        Credentials; STORAGE_EMULATOR_HOST for an emulator)
    IMAGE_STORE=file:///absolute/dir    a local directory (development)

A store that keeps objects also keeps one thumbnail per image, next to it (`<hash>` and
`<hash>.thumbnail`), made once by whoever first asks for it (rest's web page); delete()
removes both, the thumbnail first, so an erasure that failed half-way and is repeated
still finds the image and removes what is left.
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
        """Remove the object and its thumbnail if present; True if there was an object."""

    def read_thumbnail(self, image_hash: str) -> bytes | None:
        """The image's stored thumbnail, or None (always None when inline)."""

    def put_thumbnail(self, image_hash: str, data: bytes) -> None:
        """Store (or replace) the image's thumbnail; nothing when inline."""


THUMBNAIL_SUFFIX = ".thumbnail"


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

    def read_thumbnail(self, image_hash: str) -> bytes | None:
        return None

    def put_thumbnail(self, image_hash: str, data: bytes) -> None:
        return None


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

    def _write(self, path: Path, data: bytes) -> None:
        try:
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".upload-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise ImageStoreUnavailable(f"cannot write {path}: {exc}") from exc

    def _read(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ImageStoreUnavailable(f"cannot read {name}: {exc}") from exc

    def _unlink(self, name: str) -> bool:
        try:
            (self.root / name).unlink()
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise ImageStoreUnavailable(f"cannot delete {name}: {exc}") from exc

    def put(self, image_hash: str, data: bytes) -> bool:
        path = self.root / image_hash
        if path.exists():
            return False
        self._write(path, data)
        return True

    def read(self, image_hash: str) -> bytes | None:
        return self._read(image_hash)

    def delete(self, image_hash: str) -> bool:
        self._unlink(image_hash + THUMBNAIL_SUFFIX)
        return self._unlink(image_hash)

    def read_thumbnail(self, image_hash: str) -> bytes | None:
        return self._read(image_hash + THUMBNAIL_SUFFIX)

    def put_thumbnail(self, image_hash: str, data: bytes) -> None:
        self._write(self.root / (image_hash + THUMBNAIL_SUFFIX), data)


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

    def _download(self, name: str) -> bytes | None:
        from google.api_core import exceptions

        try:
            return bytes(self._bucket.blob(name).download_as_bytes(
                timeout=self.timeout, retry=self.retry))
        except exceptions.NotFound:
            return None
        except Exception as exc:
            raise ImageStoreUnavailable(f"download of gs://{self.bucket_name}/{name} "
                                        f"failed: {exc}") from exc

    def _delete(self, name: str) -> bool:
        from google.api_core import exceptions

        try:
            self._bucket.blob(name).delete(timeout=self.timeout, retry=self.retry)
            return True
        except exceptions.NotFound:
            return False
        except Exception as exc:  # google-cloud raises many types
            raise ImageStoreUnavailable(f"delete of gs://{self.bucket_name}/{name} "
                                        f"failed: {exc}") from exc

    def read(self, image_hash: str) -> bytes | None:
        return self._download(self._name(image_hash))

    def delete(self, image_hash: str) -> bool:
        self._delete(self._name(image_hash) + THUMBNAIL_SUFFIX)
        return self._delete(self._name(image_hash))

    def read_thumbnail(self, image_hash: str) -> bytes | None:
        return self._download(self._name(image_hash) + THUMBNAIL_SUFFIX)

    def put_thumbnail(self, image_hash: str, data: bytes) -> None:
        name = self._name(image_hash) + THUMBNAIL_SUFFIX
        try:
            self._bucket.blob(name).upload_from_string(
                data, content_type="image/jpeg", timeout=self.timeout, retry=self.retry)
        except Exception as exc:  # google-cloud raises many types
            raise ImageStoreUnavailable(f"upload to gs://{self.bucket_name}/{name} "
                                        f"failed: {exc}") from exc


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
