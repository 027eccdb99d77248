# The two set-up commands are `make run` and `make test`; both build what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
GENERATED := gen/.generated
PROTOS := $(wildcard protos/ragchat/v1/*.proto)

.PHONY: all venv gen run test lint typecheck unit integration e2e clean

all: gen

venv: $(INSTALLED)

$(INSTALLED): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip==25.3"
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -c "import site, pathlib; pathlib.Path(site.getsitepackages()[0], 'ragchat_generated.pth').write_text(str(pathlib.Path('gen').resolve()) + '\n')"
	touch $@

gen: $(GENERATED)

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

test: gen
	$(MAKE) lint typecheck
	$(BIN)/pytest -q -ra tests

clean:
	rm -rf $(VENV) gen .mypy_cache .ruff_cache .pytest_cache
