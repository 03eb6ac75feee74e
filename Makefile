# obdsnap — containerd proxy snapshotter for overlaybd images.
#   make run     install what is needed, start obdsnap with a local default config
#   make test    install what is needed, run the whole test suite
#   make unit-test, make integration-test   the suite in two halves: tests/unit, the rest
#   make lint    ruff + mypy --strict
#   make proto   regenerate obdsnap/genproto from proto/
#   make install install on this node: /opt/obdsnap, /usr/local/bin/obdsnap, units, config
#   make deb     build .build/deb/obdsnap_<version>_<arch>.deb (same layout, Debian paths)
#   make image   build .build/image/obdsnap-<version>.oci.tar (localhost/obdsnap:<version>)
#   make bench-quick  small benchmarks (under 2 min), JSON + PNG in .build/bench; make bench: full

SHELL := /bin/bash
PYTHON ?= python3
PIP := $(PYTHON) -m pip
RUN_DIR ?= $(CURDIR)/.run
APT_PACKAGES := golang-go golang-github-containerd-containerd-dev containerd runc \
	busybox-static e2fsprogs xfsprogs erofs-utils util-linux kmod fuse3 docker-registry
APT_PACKAGES += python3-venv mmdebstrap
PROTO_FILES := $(shell find proto -name '*.proto')
STAMP := .deps

.PHONY: run test lint proto deps apt-deps py-deps unit-test integration-test clean install deb image
.PHONY: bench bench-quick

# Install layout. `make deb` stages the same layout with Debian's paths.
DESTDIR ?=
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
VENV_DIR ?= /opt/obdsnap
UNIT_DIR ?= /etc/systemd/system
CONFIG_DIR ?= /etc/overlaybd-snapshotter
# Debian's interpreter, not whichever python3 comes first on PATH (pyenv's, say).
SYSTEM_PYTHON ?= /usr/bin/python3
UNITS := $(wildcard deploy/obdsnap.service deploy/obdsnap.socket)
BUILD_DIR ?= $(or $(OBDSNAP_BUILD_DIR),$(CURDIR)/.build)
PACKAGE_VERSION := $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml)

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

# The benchmarks' extra (matplotlib for the charts, py-spy for storm.py --profile): only the bench targets install it.
$(STAMP)/bench: pyproject.toml $(STAMP)/py
	$(PIP) install -q --disable-pip-version-check -e '.[bench]'
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

integration-test: deps
	$(PYTHON) -m pytest -p no:cacheprovider -ra tests --ignore=tests/unit

lint: py-deps
	$(PYTHON) -m ruff check obdsnap tcmusim tests benchmarks
	$(PYTHON) -m ruff format --check obdsnap tcmusim tests benchmarks
	$(PYTHON) -m mypy

proto: py-deps
	rm -rf obdsnap/genproto && mkdir -p obdsnap/genproto
	$(PYTHON) -m grpc_tools.protoc -I proto --python_betterproto_out=obdsnap/genproto $(PROTO_FILES)

# Benchmarks (benchmarks/README.md): JSON + PNG in $(BENCH_OUT), then the figures and
# targets. Root, /dev/fuse and loop devices for the storms; Go for the reference (scale.py).
BENCH_OUT ?= $(BUILD_DIR)/bench
BENCH_RUN = $(PYTHON) benchmarks
bench-quick: deps $(STAMP)/bench
	@rm -rf $(BENCH_OUT) && mkdir -p $(BENCH_OUT)
	$(BENCH_RUN)/storm.py --concurrency 1,8 --out $(BENCH_OUT) >/dev/null
	$(BENCH_RUN)/usage_load.py --snapshots 1000 --concurrency 8 --interval 2 --out $(BENCH_OUT) >/dev/null
	$(BENCH_RUN)/scale.py --snapshots 10000 --out $(BENCH_OUT) >/dev/null
	@$(BENCH_RUN)/report.py $(BENCH_OUT)

bench: deps $(STAMP)/bench
	@rm -rf $(BENCH_OUT) && mkdir -p $(BENCH_OUT)
	$(BENCH_RUN)/storm.py --concurrency 1,16,100,300 --out $(BENCH_OUT) >/dev/null
	$(BENCH_RUN)/usage_load.py --snapshots 5000 --concurrency 100 --mode both --out $(BENCH_OUT) >/dev/null
	$(BENCH_RUN)/scale.py --snapshots 10000,100000 --out $(BENCH_OUT) >/dev/null
	@$(BENCH_RUN)/report.py $(BENCH_OUT)

clean:
	rm -rf $(STAMP) $(RUN_DIR) .pytest_cache .mypy_cache

# The environment is built where it runs, or, with DESTDIR, staged so that its paths
# still read $(VENV_DIR) (see deploy/make-venv). The units name the command where
# BINDIR puts it. An existing config is never replaced.
install:
	@dpkg -s python3-venv >/dev/null 2>&1 || { [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; }; }
	deploy/make-venv $(SYSTEM_PYTHON) . $(VENV_DIR) $(DESTDIR)$(VENV_DIR)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNIT_DIR)
	ln -sfn $(VENV_DIR)/bin/obdsnap $(DESTDIR)$(BINDIR)/obdsnap
	for unit in $(UNITS); do \
	  sed 's|/usr/local/bin/obdsnap|$(BINDIR)/obdsnap|g' $$unit > $(DESTDIR)$(UNIT_DIR)/.$$(basename $$unit).new && \
	  chmod 0644 $(DESTDIR)$(UNIT_DIR)/.$$(basename $$unit).new && \
	  mv $(DESTDIR)$(UNIT_DIR)/.$$(basename $$unit).new $(DESTDIR)$(UNIT_DIR)/$$(basename $$unit); \
	done
	@if [ -e $(DESTDIR)$(CONFIG_DIR)/config.json ] || [ -L $(DESTDIR)$(CONFIG_DIR)/config.json ]; then \
	  echo "kept $(DESTDIR)$(CONFIG_DIR)/config.json"; \
	else \
	  install -d -m 0755 $(DESTDIR)$(CONFIG_DIR) && \
	  install -m 0600 deploy/config.json $(DESTDIR)$(CONFIG_DIR)/config.json && \
	  echo "installed $(DESTDIR)$(CONFIG_DIR)/config.json"; \
	fi
	@[ -n "$(DESTDIR)" ] || echo "next: systemctl daemon-reload && systemctl enable --now obdsnap"

# A Debian package of the same layout. Debian packages put commands in /usr/bin:
# /usr/local belongs to the administrator (Policy 9.1.2), and `make install` uses it.
DEB_DIR := $(BUILD_DIR)/deb
DEB_STAGE := $(DEB_DIR)/stage
deb:
	rm -rf $(DEB_STAGE)
	$(MAKE) --no-print-directory install DESTDIR=$(DEB_STAGE) PREFIX=/usr UNIT_DIR=/lib/systemd/system
	deploy/debian/build-deb $(DEB_STAGE) $(DEB_DIR) $(PACKAGE_VERSION) $(SYSTEM_PYTHON)

# The container image: a Debian 12 root by mmdebstrap (cached under $(BUILD_DIR)/debian-root,
# keyed on its packages and apt sources) with the .deb installed, as an OCI archive.
# Timestamps are the last commit's unless SOURCE_DATE_EPOCH says otherwise.
IMAGE_DIR := $(BUILD_DIR)/image
DEB_ARCH = $(shell dpkg --print-architecture)
# Exported to the package build too: pip then writes bytecode that does not depend on
# when the sources were unpacked, and dpkg-deb clamps the package's times.
image: export SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 1700000000)
image: deb
	$(SYSTEM_PYTHON) deploy/image/build_image.py --version $(PACKAGE_VERSION) \
	  --deb $(DEB_DIR)/obdsnap_$(PACKAGE_VERSION)_$(DEB_ARCH).deb --output $(IMAGE_DIR)
