# facerec: `make up` runs the whole service locally, `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 5000
WORKERS ?= 2
export PORT WORKERS PY

.PHONY: help venv system-deps services up down demo test lint images test-containers bench bench-quick clean fast-dlib

help:
	@echo "make up      start Redis/RabbitMQ if needed, rest + $(WORKERS) workers + logs, demo scan"
	@echo "make down    stop what make up started"
	@echo "make test    install what is needed and run the whole test suite"
	@echo "make bench   run the benchmarks (< 15 min) and write BENCHMARKS.md; bench-quick: ~2 min"
	@echo "make fast-dlib  opt-in: dlib for AVX2 + OpenBLAS in place of dlib-bin (compiled once, 8-10 min)"

$(VENV)/.installed: requirements/base.txt requirements/face.txt requirements/test.txt pyproject.toml \
		setup.py facerec/_scan.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/base.txt -r requirements/test.txt
	# face_recognition's metadata asks for a source build of dlib; dlib-bin provides it.
	$(PY) -m pip install --quiet --no-deps -r requirements/face.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@$(PY) -c "from facerec import _scan" 2>/dev/null || echo "WARNING: facerec._scan (the \
	index's C scan, setup.py) did not build: it needs a C compiler and Python's headers \
	(apt-get install gcc python3.11-dev). The index falls back to numpy (same answers, \
	~50x slower) and make test fails on it." >&2
	touch $@

venv: $(VENV)/.installed

# Opt-in, never on make up's or make test's path: dlib compiled for x86-64-v3 with the system
# OpenBLAS (scripts/fast-dlib.sh; README "A faster dlib") replaces dlib-bin in the venv. The
# wheel is built once into $(WHEELS) (8-10 min on 2 cores), then installed in seconds.
WHEELS ?= .cache/wheels
fast-dlib: venv
	@scripts/fast-dlib.sh install $(PY) $(WHEELS)

system-deps:
	@scripts/system-deps.sh

services: system-deps
	@scripts/services.sh start

up: venv services
	@scripts/up.sh

demo: venv
	$(PY) scripts/demo.py --rest http://127.0.0.1:$(PORT) tests/data/faces

down:
	@scripts/down.sh

test: venv services lint
	$(PY) -m pytest

# Both must pass: ruff on the whole tree, mypy --strict on the packages (pyproject.toml).
lint: venv
	$(PY) -m ruff check .
	$(PY) -m mypy

# Both images (facerec-rest:$(TAG), facerec-worker:$(TAG); TAG=dev by default, the dev
# overlay's), on the pinned python base or, where no registry answers, a stand-in built
# with debootstrap; starts a Docker engine (docker.io) if none answers, and leaves it running.
images:
	@scripts/docker-engine.sh start
	@TAG=$(or $(TAG),dev) scripts/images.sh

# The images built and run as the dev overlay runs them (tests/containers, ~5 minutes warm;
# it starts an engine if none answers, and stops that one at the end).
test-containers: venv services
	$(PY) -m pytest tests/containers

$(VENV)/.bench-installed: requirements/bench.txt $(VENV)/.installed
	$(PY) -m pip install --quiet -r requirements/bench.txt
	touch $@

bench: venv services $(VENV)/.bench-installed
	$(PY) bench/run.py

bench-quick: venv services $(VENV)/.bench-installed
	$(PY) bench/run.py --quick

clean: down
	rm -rf $(VENV) .run .pytest_cache .hypothesis
