"""Fixtures for the deployment checks: the repository root and the rendered kustomizations."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

# Every kustomization a user applies: the top level (`kubectl apply -k .`) and each overlay.
KUSTOMIZATIONS = {
    "base": ".",
    "dev": "deploy/overlays/dev",
    "dev-infra": "deploy/overlays/dev-infra",
    "cloud": "deploy/overlays/cloud",
}


class Rendered:
    """The output of `kubectl kustomize` for one kustomization: text and parsed objects."""

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.text = text
        self.objects: list[dict[str, Any]] = [o for o in yaml.safe_load_all(text) if o]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: expected one {kind} {name}, found {len(found)}"
        return found[0]


def kustomize(directory: str) -> str:
    """Render a kustomization with the real kubectl; a missing kubectl is a failure."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not on PATH: the manifests cannot be rendered")
    result = subprocess.run(
        [kubectl, "kustomize", str(REPO / directory)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def kustomizations() -> dict[str, str]:
    return dict(KUSTOMIZATIONS)


@pytest.fixture(scope="session")
def rendered_all() -> dict[str, Rendered]:
    return {name: Rendered(name, kustomize(path)) for name, path in KUSTOMIZATIONS.items()}


@pytest.fixture(params=sorted(KUSTOMIZATIONS))
def rendered(request: pytest.FixtureRequest, rendered_all: dict[str, Rendered]) -> Rendered:
    return rendered_all[request.param]
