"""A small HTTP client of the REST API, used by the `facerec` command."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from facerec.messages import OUTCOME_HEADER


class ClientError(Exception):
    """A request failed: the message is one line meant for a person."""


@dataclass(frozen=True)
class Scanned:
    image_hash: str
    outcome: str  # queued | duplicate | known_url (see rest.scan)


class Client:
    """Thread-safe (httpx pools connections); one per command."""

    def __init__(self, base_url: str, token: str = "", timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise ClientError(f"cannot reach facerec at {self.base_url} (is it running? "
                              f"`make up`, or set --rest / FACEREC_URL)") from None
        except httpx.HTTPError as exc:
            raise ClientError(f"request to {self.base_url}{path} failed: {exc}") from None
        if response.status_code >= 400:
            try:
                reason = response.json().get("error", response.text)
            except ValueError:
                reason = response.text.strip() or response.reason_phrase
            raise ClientError(f"HTTP {response.status_code}: {reason}")
        return response

    def _scanned(self, response: httpx.Response) -> Scanned:
        return Scanned(response.json()["hash"], response.headers.get(OUTCOME_HEADER, "queued"))

    def scan_bytes(self, name: str, data: bytes) -> Scanned:
        return self._scanned(self._request("POST", f"/scan/image/{name}", content=data))

    def scan_url(self, url: str) -> Scanned:
        return self._scanned(self._request("POST", "/scan/url", json={"url": url}))

    def match(self, image_hash: str, tolerance: float | None = None) -> list[str]:
        params = {} if tolerance is None else {"tolerance": repr(tolerance)}
        return list(self._request("GET", f"/match/{image_hash}", params=params).json())

    def search(self, data: bytes, tolerance: float | None = None, limit: int | None = None
               ) -> dict[str, Any]:
        params: dict[str, str] = {}
        if tolerance is not None:
            params["tolerance"] = repr(tolerance)
        if limit is not None:
            params["limit"] = str(limit)
        return dict(self._request("POST", "/search", content=data, params=params).json())

    def image(self, image_hash: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/image/{image_hash}").json())

    def delete_image(self, image_hash: str) -> dict[str, Any]:
        return dict(self._request("DELETE", f"/image/{image_hash}").json())

    def delete_name(self, name: str) -> dict[str, Any]:
        # URLs are names too: every reserved character is escaped, slashes included.
        return dict(self._request("DELETE", f"/name/{quote(name, safe='')}").json())

    def people(self, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        params = {"offset": str(offset), "limit": str(limit)}
        return dict(self._request("GET", "/people", params=params).json())

    def person(self, person_id: int) -> dict[str, Any]:
        return dict(self._request("GET", f"/people/{person_id}").json())

    def name_person(self, person_id: int, name: str | None) -> dict[str, Any]:
        return dict(self._request("PUT", f"/people/{person_id}", json={"name": name}).json())

    def merge_people(self, person_id: int, other: int) -> dict[str, Any]:
        return dict(self._request("POST", f"/people/{person_id}/merge",
                                  json={"from": other}).json())

    def split_person(self, person_id: int, faces: list[tuple[str, int]]) -> dict[str, Any]:
        body = {"faces": [{"hash": h, "face": j} for h, j in faces]}
        return dict(self._request("POST", f"/people/{person_id}/split", json=body).json())

    def mark_apart(self, person_id: int, other: int) -> dict[str, Any]:
        return dict(self._request("POST", f"/people/{person_id}/apart",
                                  json={"from": other}).json())
