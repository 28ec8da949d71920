"""The two images as `make images` builds them: BuildKit's own frontend, one virtualenv
layer shared by digest, a runtime with what runs and no build tools, sizes as the README
states them, a quiet account creation, and the official image's Python paths."""

from __future__ import annotations

import json
import re

import pytest

from tests.containers.conftest import Images, report
from tests.containers.harness import Docker
from tests.services import ROOT

# The build is the session fixture's (with its own time limit); each test is short.
pytestmark = pytest.mark.timeout(300, func_only=True)


def run_in(docker: Docker, image: str, *command: str, user: str = "10001:10001") -> str:
    """A throw-away container: no network, read-only root, as the pods run."""
    result = docker("run", "--rm", "--network", "none", "--read-only", "--user", user,
                    "--cap-drop", "ALL", "--entrypoint", command[0], image, *command[1:],
                    timeout=120, check=False)
    assert result.returncode == 0, f"{' '.join(command)[:200]}:\n{result.stderr}"
    return result.stdout


def test_both_images_build_with_buildkit_and_its_built_in_dockerfile_frontend(
        docker: Docker, images: Images) -> None:
    # A `# syntax=` line makes BuildKit resolve a frontend image from a registry first; with
    # none reachable the build stops there. The fixture built both with DOCKER_BUILDKIT=1.
    assert "[internal] load build definition from Dockerfile.rest" in images.log, "BuildKit"
    assert "[internal] load build definition from Dockerfile.worker" in images.log
    assert "resolve image config" not in images.log
    assert "docker/dockerfile" not in images.log
    for image in (images.rest, images.worker):
        assert docker.inspect(image)[0]["Config"]["User"] == "10001:10001"


def test_the_two_images_share_their_virtualenv_layer_by_digest(docker: Docker,
                                                               images: Images) -> None:
    rest_layers, worker_layers = docker.layers(images.rest), docker.layers(images.worker)
    rest_venv, rest_size = docker.venv_layer(images.rest)
    worker_venv, worker_size = docker.venv_layer(images.worker)
    assert rest_venv == worker_venv, "each image has its own copy of the virtualenv"
    assert rest_size == worker_size > 100_000_000
    # Not only that layer: the same layers below it too, so the engine and a registry store
    # one copy and a node pulls it once. The images differ in their configuration only.
    assert rest_layers == worker_layers
    base_layers = docker.layers(images.base)
    assert rest_layers[: len(base_layers)] == base_layers
    report(f"layers: rest and worker have the same {len(rest_layers)} layers "
           f"({len(base_layers)} of the base); the virtualenv layer {rest_venv[:19]}… "
           f"({rest_size / 1e6:.0f} MB) is the top one of both")


SITE_REPORT = r"""
import importlib.util, json, pathlib, sys
site = pathlib.Path(sys.prefix, "lib", "python3.11", "site-packages")
sizes = {}
for entry in site.iterdir():
    files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
    sizes[entry.name] = sum(p.stat().st_size for p in files)
print(json.dumps({
    "prefix": sys.prefix,
    "found": {m: importlib.util.find_spec(m) is not None
              for m in ("pip", "wheel", "setuptools", "pkg_resources", "cryptography")},
    "bin": sorted(p.name for p in pathlib.Path(sys.prefix, "bin").iterdir()),
    "tests": sorted(str(p.relative_to(site)) for p in site.rglob("tests") if p.is_dir()),
    "sizes": sizes,
}))
"""


def test_the_runtime_virtualenv_ships_no_installer_and_no_test_suites(docker: Docker,
                                                                      images: Images) -> None:
    found = json.loads(run_in(docker, images.worker, "python", "-c", SITE_REPORT))
    assert found["prefix"] == "/opt/venv"
    assert not found["found"]["pip"] and not found["found"]["wheel"], "an installer is left"
    assert not [b for b in found["bin"] if b.startswith("pip")], found["bin"]
    assert found["tests"] == [], "test suites of installed packages are shipped"
    # What stays although it looks like build tooling: see the next test for why.
    assert found["found"]["pkg_resources"] and found["found"]["cryptography"]
    total = sum(found["sizes"].values())
    biggest = sorted(found["sizes"].items(), key=lambda kv: -kv[1])[:8]
    report(f"virtualenv site-packages: {total / 1e6:.0f} MB; biggest: "
           + ", ".join(f"{name} {size / 1e6:.0f}" for name, size in biggest))


RUNTIME_IMPORTS = r"""
import sys
import rest.__main__, rest.app, worker.__main__, logs.__main__
import dlib, face_recognition, numpy, PIL.Image
import face_recognition_models as models
from google.cloud import storage  # IMAGE_STORE=gs://
import os
for where in (models.face_recognition_model_location(), models.pose_predictor_model_location(),
              models.cnn_face_detector_model_location()):
    assert os.path.getsize(where) > 100_000, where
print(" ".join(m for m in ("pkg_resources", "cryptography") if m in sys.modules))
"""


@pytest.mark.parametrize("image", ["rest", "worker"])
def test_everything_rest_worker_and_logs_import_at_run_time_is_in_the_image(
        docker: Docker, images: Images, image: str) -> None:
    # setuptools stays for pkg_resources (face_recognition_models finds its model files with
    # it) and cryptography for google-auth (IMAGE_STORE=gs://): both are imported here.
    tag = images.rest if image == "rest" else images.worker
    imported = run_in(docker, tag, "python", "-W", "ignore", "-c", RUNTIME_IMPORTS).split()
    assert imported == ["pkg_resources", "cryptography"]


def test_the_worker_image_searches_with_the_native_scan(docker: Docker, images: Images) -> None:
    # Built by the image's own install (setup.py); the numpy fallback would answer the same,
    # ~50× slower, so an image without it must not pass.
    out = run_in(docker, images.worker, "python", "-c",
                 "from facerec import _kernels, _scan; print(_kernels.get_scan()[0], "
                 "_scan.kernel())")
    assert out.split()[0] == "native"
    assert out.split()[1] in ("avx2", "portable")


def dockerfile_run(dockerfile: str, contains: str) -> str:
    """The shell command of the one RUN instruction of the final stage containing `contains`."""
    text = (ROOT / dockerfile).read_text()
    final = text[text.rindex("\nFROM "):]
    joined = re.sub(r"\\\n", " ", final)
    (command,) = [line[len("RUN "):] for line in joined.splitlines()
                  if line.startswith("RUN ") and contains in line]
    return " ".join(command.split())


@pytest.mark.parametrize("dockerfile", ["Dockerfile.rest", "Dockerfile.worker"])
def test_creating_the_image_user_prints_no_warning(docker: Docker, images: Images,
                                                   dockerfile: str) -> None:
    # Run on the base image, as the build does: a cached build would not show its output.
    command = dockerfile_run(dockerfile, "useradd")
    result = docker("run", "--rm", "--network", "none", "--user", "0:0", "--entrypoint",
                    "/bin/sh", images.base, "-c", f"{command} && getent passwd 10001",
                    timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", f"{command} printed:\n{result.stderr}"
    assert result.stdout.strip() == "facerec:x:10001:10001::/nonexistent:/usr/sbin/nologin"


@pytest.mark.parametrize("image", ["rest", "worker"])
def test_the_images_run_python_3_11_from_the_official_image_s_paths_as_uid_10001(
        docker: Docker, images: Images, image: str) -> None:
    tag = images.rest if image == "rest" else images.worker
    out = run_in(docker, tag, "python", "-c",
                 "import os, sys; print(os.getuid(), os.getgid(), '%d.%d' % sys.version_info[:2],"
                 " sys.executable, os.readlink('/opt/venv/bin/python'),"
                 " all(os.access('/usr/local/bin/' + p, os.X_OK)"
                 " for p in ('python', 'python3', 'python3.11')))",
                 user=docker.inspect(tag)[0]["Config"]["User"])
    assert out.split() == ["10001", "10001", "3.11", "/opt/venv/bin/python",
                           "/usr/local/bin/python", "True"]


def test_the_readme_states_the_measured_sizes(docker: Docker, images: Images) -> None:
    readme = (ROOT / "README.md").read_text()
    stated = re.search(r"virtualenv layer is\s+\*\*(\d+) MB\*\*\s+and each\s+image\s+"
                       r"\*\*(\d+) MB\*\*", readme)
    assert stated, "README: the measured sizes sentence is missing"
    _, venv = docker.venv_layer(images.worker)
    image = max(docker.inspect(t)[0]["Size"] for t in (images.rest, images.worker))
    report(f"sizes: virtualenv layer {venv / 1e6:.0f} MB, images "
           + ", ".join(f"{t} {docker.inspect(t)[0]['Size'] / 1e6:.0f} MB"
                       for t in (images.base, images.rest, images.worker)))
    for text, measured in zip(stated.groups(), (venv, image), strict=True):
        assert abs(int(text) * 1e6 - measured) <= 0.05 * measured, (text, measured)
