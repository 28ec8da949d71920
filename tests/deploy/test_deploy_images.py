"""Static checks of Dockerfile.rest, Dockerfile.worker and .dockerignore (no Docker engine)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {"rest": REPO / "Dockerfile.rest", "worker": REPO / "Dockerfile.worker"}
# The packages pyproject.toml installs: the images get them by copying the build context.
PACKAGES = tuple(tomllib.loads((REPO / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
CODE = tuple(f"{package}/" for package in PACKAGES)
# Instructions that make a layer: everything before the last of them must be the same in
# both final stages, or the builder cannot reuse one image's layers for the other.
LAYER_STEPS = ("RUN", "COPY", "ADD", "WORKDIR")


def tool(name: str) -> str:
    """A linter from this Python environment (pip package) or PATH; missing is a failure."""
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -r requirements/test.txt")
    return found


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in dockerfile.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    pairs = []
    for text in logical:
        keyword, _, args = text.strip().partition(" ")
        pairs.append((keyword.upper(), " ".join(args.split())))
    return pairs


def stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, args in instructions(dockerfile):
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, args))
    return result


def stage(dockerfile: Path, name: str) -> list[tuple[str, str]]:
    """The stage `FROM ... AS name`."""
    (found,) = [s for s in stages(dockerfile) if s[0][1].split()[-2:] == ["AS", name]]
    return found


def base_images(dockerfile: Path) -> list[str]:
    args = dict(
        a.split("=", 1) for k, a in instructions(dockerfile) if k == "ARG" and "=" in a
    )
    images = []
    for keyword, value in instructions(dockerfile):
        if keyword == "FROM":
            image = value.split()[0]
            images.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image))
    return images


# Docker's .dockerignore rules: Go filepath.Match patterns plus "**", "!" re-includes, the
# last matching line wins, and a pattern that matches a directory matches all inside it.
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(path: str, lines: list[str]) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex = _pattern_regex(line.lstrip("!").strip("/"))
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def repo_files() -> list[str]:
    skip = {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", ".run"}
    return [
        str(p.relative_to(REPO)) for p in REPO.rglob("*")
        if p.is_file() and not skip & set(p.relative_to(REPO).parts)
    ]


# --- tests -------------------------------------------------------------------------------


def test_hadolint_rejects_a_careless_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nRUN pip install flask\n")
    result = subprocess.run([tool("hadolint"), str(bad)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # latest tag


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_hadolint_passes_on_the_dockerfile(image: str) -> None:
    result = subprocess.run([tool("hadolint"), str(DOCKERFILES[image])], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_image_is_multi_stage_from_a_pinned_slim_python(image: str) -> None:
    dockerfile = DOCKERFILES[image]
    assert len(stages(dockerfile)) >= 2
    names = {args.split()[-1] for keyword, args in instructions(dockerfile)
             if keyword == "FROM" and " AS " in args}
    for base in base_images(dockerfile):  # the pinned image, or a stage built on it
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base) or base in names, base
    # CI runs Python 3.11: the images must use the interpreter CI proves the requirements on.


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_image_runs_as_a_numeric_non_root_user_with_a_healthcheck(image: str) -> None:
    final = stages(DOCKERFILES[image])[-1]
    users = [args for keyword, args in final if keyword == "USER"]
    assert users, "the final stage must switch user"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric, so runAsNonRoot can verify it"
    healthchecks = [args for keyword, args in final if keyword == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and " CMD " in f" {healthchecks[0]} "
    (cmd,) = [args for keyword, args in final if keyword == "CMD"]
    assert cmd == f'["python", "-m", "{image}"]'


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dependency_layers_come_before_the_code(image: str) -> None:
    build = stage(DOCKERFILES[image], "build")
    steps = [f"{keyword} {args}" for keyword, args in build]

    def first(pattern: str) -> int:
        matches = [i for i, step in enumerate(steps) if re.search(pattern, step)]
        assert matches, f"no step matches {pattern!r}"
        return matches[0]

    copy_requirements = first(r"^COPY requirements/base\.txt requirements/face\.txt ")
    install_base = first(r"^RUN .*pip install [^&]*-r requirements/base\.txt")
    install_face = first(r"pip install [^&]*--no-deps [^&]*-r requirements/face\.txt")
    copy_code = first(r"^COPY \. \.$")
    install_project = first(r"^RUN .*pip install [^&]*--no-deps [^&]* \.( &&|$)")
    assert copy_requirements < install_base <= install_face < copy_code < install_project


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_final_stage_holds_only_the_virtualenv_not_the_sources(image: str) -> None:
    final = stages(DOCKERFILES[image])[-1]
    copies = [args for keyword, args in final if keyword in ("COPY", "ADD")]
    assert copies == ["--from=build /opt/venv /opt/venv"]


def test_both_images_share_their_build_stages_so_the_dependency_layers_are_shared() -> None:
    rest, worker = (stages(DOCKERFILES[name])[:-1] for name in ("rest", "worker"))
    assert rest == worker


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_the_fast_dlib_is_compiled_in_a_stage_of_its_own_and_replaces_dlib_bin(
        image: str) -> None:
    # The 8-10 minute compile is a layer of its own, before the build stage: a change to the
    # requirements or the code reuses it. Its input is the dlib-bin pin alone (copied by
    # content from a stage that extracts it) and the script.
    dockerfile = DOCKERFILES[image]
    dlib = stage(dockerfile, "dlib")
    assert ("COPY", "--from=dlib-pin /dlib-pin.txt requirements/base.txt") in dlib
    assert not [a for k, a in dlib if k == "COPY" and not a.startswith("--from")
                and a != "scripts/fast-dlib.sh scripts/"]
    assert [a for k, a in dlib if k == "RUN" and "scripts/fast-dlib.sh build /wheels" in a]
    build = stage(dockerfile, "build")
    steps = [f"{keyword} {args}" for keyword, args in build]
    (install,) = [s for s in steps if "-r requirements/base.txt" in s]
    assert re.search(r"pip uninstall --yes dlib-bin && pip install [^&]*--no-deps "
                     r"/wheels/dlib-\*\.whl", install), install
    # The build stage starts from the dlib stage: the wheel is in /wheels, and the compiler
    # that built dlib builds facerec._scan too; the install fails if it was not built.
    assert build[0] == ("FROM", "dlib AS build")
    (project,) = [s for s in steps if "--no-build-isolation ." in s]
    assert 'python -P -c "from facerec import _scan"' in project  # -P: not /src's copy
    # The runtime libraries the wheel links, in the final stage of both images.
    final = " ".join(a for k, a in stages(dockerfile)[-1] if k == "RUN")
    assert "libopenblas0-pthread" in final


def shared_prefix(dockerfile: Path) -> list[tuple[str, str]]:
    """The final stage down to its last layer-making instruction."""
    final = stages(dockerfile)[-1]
    last = max(i for i, (keyword, _) in enumerate(final) if keyword in LAYER_STEPS)
    return final[: last + 1]


def test_both_final_stages_make_the_same_layers_before_anything_image_specific() -> None:
    # The virtualenv layer is one layer only if the steps before it are the same: a LABEL or
    # ENV that differs before COPY --from gives the second image its own copy (other /opt
    # timestamps, other digest). tests/containers compares the real digests.
    rest, worker = (shared_prefix(DOCKERFILES[name]) for name in ("rest", "worker"))
    assert rest == worker
    # The virtualenv is the top layer: the images differ in their configuration only.
    assert rest[-1] == ("COPY", "--from=build /opt/venv /opt/venv")
    for name, dockerfile in DOCKERFILES.items():
        tail = stages(dockerfile)[-1][len(shared_prefix(dockerfile)):]
        assert not [k for k, _ in tail if k in LAYER_STEPS], name


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_no_dockerfile_makes_buildkit_fetch_a_frontend_from_a_registry(image: str) -> None:
    # `# syntax=docker/dockerfile:1` makes BuildKit pull that image before building anything:
    # offline (air-gapped clusters, this CI) the build fails at once. The engine's built-in
    # frontend reads these files.
    text = DOCKERFILES[image].read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I)


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_the_image_user_is_a_regular_account_with_the_uid_the_final_stage_runs_as(
        image: str) -> None:
    # useradd/groupadd --system with an id of 1000 or more print a warning (system ids end at
    # 999); tests/containers runs the command and checks that it prints nothing.
    final = stages(DOCKERFILES[image])[-1]
    (user,) = [args for keyword, args in final if keyword == "USER"]
    uid, gid = user.split(":")
    (create,) = [args for keyword, args in final if keyword == "RUN" and "useradd" in args]
    assert "--system" not in create and " -r " not in f" {create} "
    assert re.search(rf"useradd [^&]*--uid {uid}\b", create)
    assert re.search(rf"groupadd [^&]*--gid {gid}\b", create)


def test_images_install_the_pinned_requirement_files_ci_installs() -> None:
    for name in ("base.txt", "face.txt"):
        lines = [
            line.split("#")[0].strip()
            for line in (REPO / "requirements" / name).read_text().splitlines()
        ]
        for requirement in filter(None, lines):
            assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.]+", requirement), requirement
    base = (REPO / "requirements" / "base.txt").read_text()
    assert re.search(r"^dlib-bin==", base, re.M), "dlib must come as the prebuilt wheel"
    assert not re.search(r"^dlib==", base, re.M), "dlib from source takes ~15 minutes to build"
    assert re.search(r"^face_recognition_models==", base, re.M)


def test_every_package_the_project_declares_is_copied_into_the_images() -> None:
    # The build stage copies the whole context, so .dockerignore decides: it must let in
    # every package pyproject.toml lists (with its sources) and the readme it names.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    for dockerfile in DOCKERFILES.values():
        assert ("COPY", ". .") in stage(dockerfile, "build"), dockerfile.name
    for package in PACKAGES:
        assert (REPO / package / "__init__.py").is_file(), f"{package} is not a package"
        assert not dockerignore_excludes(f"{package}/__init__.py", ignore), package
    readme = pyproject["project"].get("readme")
    if readme:
        assert not dockerignore_excludes(readme, ignore)
    assert not dockerignore_excludes("pyproject.toml", ignore)


def test_every_file_the_dockerfiles_copy_exists_and_passes_dockerignore() -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    for dockerfile in DOCKERFILES.values():
        for keyword, args in (step for s in stages(dockerfile)[:-1] for step in s):
            if keyword != "COPY" or args.startswith("--from"):
                continue
            for source in args.split()[:-1]:
                assert (REPO / source).exists(), f"{dockerfile.name} copies missing {source}"
                if (REPO / source).is_file():
                    assert not dockerignore_excludes(source.rstrip("/"), ignore), source
    python_sources = [f for f in repo_files() if f.endswith(".py") and f.startswith(CODE)]
    assert python_sources, "no package sources found"
    for source in python_sources:
        assert not dockerignore_excludes(source, ignore), f".dockerignore drops {source}"


@pytest.mark.parametrize("path", [
    ".git/config", ".venv/bin/python", "tests/conftest.py", "deploy/base/kustomization.yaml",
    "redis/deployment.yaml", "rest/deployment.yaml", "rest/__pycache__/app.cpython-311.pyc",
    ".run/port-forwards.pids", "bench/report.py", "Dockerfile.rest", "requirements/test.txt",
])
def test_dockerignore_keeps_everything_else_out_of_the_build_context(path: str) -> None:
    assert dockerignore_excludes(path, (REPO / ".dockerignore").read_text().splitlines())
