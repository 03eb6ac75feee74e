# obdsnap — containerd proxy snapshotter for overlaybd images.
#   make run     install what is needed, start obdsnap with a local default config
#   make test    install what is needed, run the whole test suite
#   make lint    ruff + mypy --strict
#   make proto   regenerate obdsnap/genproto from proto/

SHELL := /bin/bash
PYTHON ?= python3
PIP := $(PYTHON) -m pip
RUN_DIR ?= $(CURDIR)/.run
APT_PACKAGES := golang-go golang-github-containerd-containerd-dev containerd runc \
	busybox-static e2fsprogs xfsprogs util-linux kmod fuse3 docker-registry
PROTO_FILES := $(shell find proto -name '*.proto')
STAMP := .deps

.PHONY: run test lint proto deps apt-deps py-deps unit-test integration-test clean

$(STAMP)/apt: Makefile
	@mkdir -p $(STAMP)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "installing apt packages: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  fi; \
	else echo "not root or no apt-get: skipping system packages ($(APT_PACKAGES))"; fi
	@touch $@

$(STAMP)/py: pyproject.toml
	@mkdir -p $(STAMP)
	$(PIP) install -q --disable-pip-version-check -e '.[test,dev]'
	@command -v pyenv >/dev/null && pyenv rehash || true
	@touch $@

apt-deps: $(STAMP)/apt
py-deps: $(STAMP)/py
deps: apt-deps py-deps

run: deps
	@mkdir -p $(RUN_DIR)
	@[ -f $(RUN_DIR)/config.json ] || sed 's|@RUN_DIR@|$(RUN_DIR)|g' deploy/config.local.json > $(RUN_DIR)/config.json
	@echo "obdsnap config: $(RUN_DIR)/config.json"
	@echo "obdsnap socket: $(RUN_DIR)/obdsnap.sock"
	@$(PYTHON) -m obdsnap containerd-config --config $(RUN_DIR)/config.json
	exec $(PYTHON) -m obdsnap serve --config $(RUN_DIR)/config.json

test: deps lint
	$(PYTHON) -m pytest -p no:cacheprovider -ra tests

unit-test: py-deps
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/unit

lint: py-deps
	$(PYTHON) -m ruff check obdsnap tcmusim tests benchmarks
	$(PYTHON) -m ruff format --check obdsnap tcmusim tests benchmarks
	$(PYTHON) -m mypy

proto: py-deps
	rm -rf obdsnap/genproto && mkdir -p obdsnap/genproto
	$(PYTHON) -m grpc_tools.protoc -I proto --python_betterproto_out=obdsnap/genproto $(PROTO_FILES)

clean:
	rm -rf $(STAMP) $(RUN_DIR) .pytest_cache .mypy_cache
