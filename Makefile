# bunq-sessiond — build, test and run. `make test` works on a fresh Debian/Ubuntu machine with Swift installed:
# it installs the system packages it needs, builds, and runs every test.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
SWIFT ?= swift
export PATH := $(PATH):/opt/swift/usr/bin

# System packages the build and the tests need (headers for the C bindings, the openssl command for interop
# tests, CA certificates for TLS, Python for the official-SDK compatibility test, systemd-nspawn and debootstrap
# for the test under a real systemd, socat for the half-closed-client test, PostgreSQL for the PostgreSQL backend's
# tests, which start servers of their own; redis-server for make bench's yardstick row, which starts its own).
DEB_PACKAGES := libssl-dev libcurl4-openssl-dev libsystemd-dev libsqlite3-dev sqlite3 pkg-config openssl ca-certificates curl \
  python3 python3-venv systemd-container debootstrap socat postgresql prometheus lintian patchelf redis-server
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
BUILD_LOG := .build/make-build.log
# bunq's official Python SDK, for the emulator's compatibility test, in a virtualenv under .build/.
SDK_VENV := .build/sdk-venv
SDK_PACKAGES := bunq-sdk==1.28.0 prometheus-client==0.23.1
# Every debug build here is made without the index store, and the suites run as Swift Testing alone: the test
# bundle has its own entry point (Tests/XCTMain.swift says why). C is compiled without debug information: the only
# C compiled is our dependencies' (BoringSSL twice, through swift-nio-ssl and swift-crypto, is 40% of a fresh
# build's CPU, a tenth of it debug information). A `swift build` without these flags compiles everything anew;
# `make check FILTER=…` runs a few suites.
SWIFT_DEBUG := --disable-index-store -Xcc -g0
SWIFT_TESTING := --enable-swift-testing --disable-xctest

.PHONY: all deps build test check test-deb sdk-compat run sandbox bench install install-files deb deb-files clean

all: build

## deps: install the missing system packages (apt-get, as root or through sudo)
deps:
	@missing=""; \
	for package in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$package" 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "make deps: installing$$missing"; \
	  $(SUDO) apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	else \
	  echo "make deps: all system packages present"; \
	fi

## build: compile everything, tests included; fails on any compiler warning in our own code
build: deps
	@mkdir -p .build
	$(SWIFT) build --build-tests $(SWIFT_DEBUG) 2>&1 | tee $(BUILD_LOG)
	@if grep -E "^$(CURDIR)/(Sources|Tests)/.*: warning:" $(BUILD_LOG); then \
	  echo "make build: compiler warnings in our code (above) are errors"; exit 1; \
	fi

## test: deps, build, then every test: the Swift suites and, beside them (they wait on clocks far more than they
## compute), the official-SDK compatibility test and the daemon, installed from a .deb of this build, under a real
## systemd (nspawn; prints SKIPPED where it cannot run). Their output follows the suites'. The SDK's virtualenv is
## installed while the build compiles (pip waits on the network, the compiler on the cores).
test: deps
	@mkdir -p .build
	@$(MAKE) --no-print-directory $(SDK_VENV)/.installed > .build/make-sdk-venv.log 2>&1 & venv=$$!; \
	status=0; $(MAKE) --no-print-directory build || status=$$?; \
	wait $$venv || { echo "make test: the SDK's virtualenv failed:"; cat .build/make-sdk-venv.log; exit 1; }; \
	exit $$status
	@bin="$$($(SWIFT) build --show-bin-path)"; \
	( $(SDK_VENV)/bin/python Tests/sdk-compat/python_sdk_compat.py "$$bin/bunq-sandbox" ) > $(BESIDE_LOG).sdk 2>&1 & sdk=$$!; \
	( $(MAKE) --no-print-directory test-deb BIN="$$bin" \
	  && { lintian --fail-on error $(TEST_DEB) > $(BESIDE_LOG).lintian 2>&1 & lint=$$!; \
	       nspawn=0; BIN="$$bin" DEB="$(CURDIR)/$(TEST_DEB)" bash Tests/systemd/nspawn-test.sh || nspawn=$$?; \
	       linted=0; wait $$lint || linted=$$?; \
	       echo "--- lintian $(TEST_DEB)"; cat $(BESIDE_LOG).lintian; \
	       [ $$nspawn = 0 ] && [ $$linted = 0 ]; } ) > $(BESIDE_LOG).deb 2>&1 & deb=$$!; \
	status=0; $(SWIFT) test --skip-build $(SWIFT_DEBUG) $(SWIFT_TESTING) || status=$$?; \
	wait $$sdk || status=$$?; \
	wait $$deb || status=$$?; \
	echo "--- beside the suites: the official SDK against bunq-sandbox"; cat $(BESIDE_LOG).sdk; \
	echo "--- beside the suites: the .deb of this build under systemd, and lintian beside it"; cat $(BESIDE_LOG).deb; \
	exit $$status
BESIDE_LOG := .build/make-test-beside.log

## check: the Swift suites alone, on `make test`'s build; FILTER=regex runs the tests whose names match, e.g.
## `make check FILTER=ProxyTests`. Neither the SDK test nor systemd runs here.
check: build
	$(SWIFT) test --skip-build $(SWIFT_DEBUG) $(SWIFT_TESTING) $(if $(FILTER),--filter '$(FILTER)')

## test-deb: $(TEST_DEB), the package `make test` installs under systemd: the same files as `make deb`'s, from this
## (debug) build's binaries relinked with Swift's runtime inside, so they need only Debian's libraries as the
## release ones do. The relink runs SwiftPM's own link command from its manifest (packaging/relink-static.py), not
## `swift build`: SwiftPM holds the build directory while `swift test` runs, and this runs beside it. A debug link
## does not order the toolchain's Foundation archives by itself: they are named as one group. BIN: the debug build's
## directory, when the caller knows it (then nothing is built here).
SWIFT_STATIC_DIR := $(shell dirname "$$(dirname "$$(readlink -f "$$(PATH="$$PATH:/opt/swift/usr/bin" command -v $(SWIFT))")")")/lib/swift_static/linux
DEBUG_STATIC_LINK = -Xlinker --start-group $(foreach archive,$(wildcard $(SWIFT_STATIC_DIR)/*.a),-Xlinker $(archive)) -Xlinker --end-group
TEST_DEB_ROOT := .build/test-deb/root
TEST_DEB = .build/test-deb/bunq-sessiond_$(VERSION)_$(ARCH).deb
test-deb: deps
	@bin="$(BIN)"; \
	if [ -z "$$bin" ]; then $(SWIFT) build $(SWIFT_DEBUG) && bin="$$($(SWIFT) build --show-bin-path)"; fi; \
	mkdir -p .build/test-deb/bin; \
	for product in bunq-sessiond bunq-sessionctl bunq-sandbox; do \
	  echo "relinking $$product with Swift's runtime inside"; \
	  python3 packaging/relink-static.py .build/debug.yaml "$$bin" $$product .build/test-deb/bin/$$product \
	    $(DEBUG_STATIC_LINK); \
	done
	$(MAKE) --no-print-directory deb-files BUILT="$(CURDIR)/.build/test-deb/bin" DEB=$(TEST_DEB) DEB_ROOT=$(TEST_DEB_ROOT) \
	  DEB_COMPRESSION="-Zgzip -z1"

$(SDK_VENV)/.installed: Makefile
	python3 -m venv $(SDK_VENV)
	$(SDK_VENV)/bin/pip install --quiet --disable-pip-version-check $(SDK_PACKAGES)
	touch $@

## sdk-compat: bunq's official Python SDK (bunq-sdk 1.28.0) against bunq-sandbox
sdk-compat: $(SDK_VENV)/.installed
	$(SWIFT) build $(SWIFT_DEBUG) --product bunq-sandbox
	$(SDK_VENV)/bin/python Tests/sdk-compat/python_sdk_compat.py "$$($(SWIFT) build --show-bin-path)/bunq-sandbox"

## run: the demo: bunq-sandbox + bunq-sessiond, a PSD2 provider, an API-key identity and an OAuth user, live
run: deps
	$(SWIFT) build $(SWIFT_DEBUG)
	bash scripts/demo.sh

## bench: throughput, latency, signing, memory and start-up figures (release build; not a test)
bench: deps
	$(SWIFT) build -c release
	"$$($(SWIFT) build -c release --show-bin-path)/bunq-sessiond-bench" "$$($(SWIFT) build -c release --show-bin-path)"

## deb: .build/deb/bunq-sessiond_VERSION_ARCH.deb from the release binaries (Swift's runtime linked in, so the
## package needs only Debian's libraries), checked by lintian --fail-on error
VERSION := $(shell sed -n 's/.*static let current = "\(.*\)".*/\1/p' Sources/BunqAPI/BunqEndpoints.swift)
ARCH := $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
DEB := .build/deb/bunq-sessiond_$(VERSION)_$(ARCH).deb
deb: deps
	$(SWIFT) build -c release --static-swift-stdlib --product bunq-sessiond
	$(SWIFT) build -c release --static-swift-stdlib --product bunq-sessionctl
	$(SWIFT) build -c release --static-swift-stdlib --product bunq-sandbox
	$(MAKE) --no-print-directory deb-files BUILT="$$($(SWIFT) build -c release --show-bin-path)"
	lintian --fail-on error --info $(DEB)

## deb-files: the package itself, from already built binaries in BUILT (no build step)
DEB_ROOT := .build/deb/root
# xz for the package that ships; make test's own (debug binaries, twice the size) is gzipped fast.
DEB_COMPRESSION := -Zxz
deb-files:
	@test -n "$(BUILT)" || { echo "deb-files: set BUILT to the directory of the built binaries"; exit 2; }
	rm -rf $(DEB_ROOT) $(DEB)
	$(MAKE) --no-print-directory install-files BUILT="$(BUILT)" DESTDIR="$(CURDIR)/$(DEB_ROOT)" PREFIX=/usr SYSCONFDIR=/etc \
	  UNITDIR=/lib/systemd/system SYSUSERSDIR=/usr/lib/sysusers.d CONFIG_GROUP=root > /dev/null
	strip --strip-unneeded --remove-section=.comment --remove-section=.note $(DEB_ROOT)/usr/bin/bunq-*
	@# A RUNPATH into the Swift toolchain has no place in a package (the release build links Swift's runtime in).
	for binary in $(DEB_ROOT)/usr/bin/bunq-*; do \
	  if readelf -d "$$binary" | grep -q 'R.*PATH'; then patchelf --remove-rpath "$$binary"; fi; \
	done
	install -d $(DEB_ROOT)/usr/share/lintian/overrides
	install -m 0644 packaging/debian/lintian-overrides $(DEB_ROOT)/usr/share/lintian/overrides/bunq-sessiond
	install -d -m 0755 $(DEB_ROOT)/DEBIAN
	install -m 0644 packaging/debian/copyright $(DEB_ROOT)/usr/share/doc/bunq-sessiond/copyright
	sed 's|@VERSION@|$(VERSION)|g' packaging/debian/changelog | gzip -9n > $(DEB_ROOT)/usr/share/doc/bunq-sessiond/changelog.gz
	gzip -9n $(DEB_ROOT)/usr/share/doc/bunq-sessiond/README.md
	install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm $(DEB_ROOT)/DEBIAN/
	echo /etc/bunq-sessiond/bunq-sessiond.yaml > $(DEB_ROOT)/DEBIAN/conffiles
	@# Depends: dpkg-shlibdeps on the binaries (versioned, from the libraries they link), plus systemd.
	rm -rf .build/deb/shlibs && mkdir -p .build/deb/shlibs/debian
	printf 'Source: bunq-sessiond\n\nPackage: bunq-sessiond\nArchitecture: any\n' > .build/deb/shlibs/debian/control
	cd .build/deb/shlibs && dpkg-shlibdeps -O $(foreach b,bunq-sessiond bunq-sessionctl bunq-sandbox,-e$(CURDIR)/$(DEB_ROOT)/usr/bin/$(b)) \
	  | sed -n 's/^shlibs:Depends=//p' > depends
	sed -e 's|@VERSION@|$(VERSION)|' -e 's|@ARCH@|$(ARCH)|' -e "s|@SIZE@|$$(du -sk --exclude=DEBIAN $(DEB_ROOT) | cut -f1)|" \
	  -e "s|@DEPENDS@|$$(cat .build/deb/shlibs/depends), systemd|" packaging/debian/control.in > $(DEB_ROOT)/DEBIAN/control
	cd $(DEB_ROOT) && find . -type f ! -path './DEBIAN/*' -printf '%P\n' | sort | xargs md5sum > DEBIAN/md5sums
	chmod 0644 $(DEB_ROOT)/DEBIAN/md5sums $(DEB_ROOT)/DEBIAN/control $(DEB_ROOT)/DEBIAN/conffiles
	dpkg-deb --root-owner-group $(DEB_COMPRESSION) --build $(DEB_ROOT) $(DEB)
	@echo "built $(DEB)"

## install: binaries, systemd units, sysusers and the example config (PREFIX, DESTDIR, SYSCONFDIR)
PREFIX ?= /usr/local
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
CONFIG_GROUP ?= bunq-sessiond
install:
	$(SWIFT) build -c release --product bunq-sessiond
	$(SWIFT) build -c release --product bunq-sessionctl
	$(SWIFT) build -c release --product bunq-sandbox
	$(MAKE) --no-print-directory install-files BUILT="$$($(SWIFT) build -c release --show-bin-path)"

## install-files: the installation itself, from already built binaries in BUILT (no build step)
install-files:
	@test -n "$(BUILT)" || { echo "install-files: set BUILT to the directory of the built binaries"; exit 2; }
	install -d "$(DESTDIR)$(PREFIX)/bin" "$(DESTDIR)$(UNITDIR)" "$(DESTDIR)$(SYSUSERSDIR)" \
	  "$(DESTDIR)$(SYSCONFDIR)/bunq-sessiond" "$(DESTDIR)$(PREFIX)/share/doc/bunq-sessiond"
	install -m 0755 "$(BUILT)/bunq-sessiond" "$(BUILT)/bunq-sessionctl" "$(BUILT)/bunq-sandbox" "$(DESTDIR)$(PREFIX)/bin/"
	sed 's|@BINDIR@|$(PREFIX)/bin|g; s|@PREFIX@|$(PREFIX)|g' systemd/bunq-sessiond.service.in \
	  > "$(DESTDIR)$(UNITDIR)/bunq-sessiond.service"
	chmod 0644 "$(DESTDIR)$(UNITDIR)/bunq-sessiond.service"
	install -m 0644 systemd/bunq-sessiond.socket systemd/bunq-sessiond-proxy.socket "$(DESTDIR)$(UNITDIR)/"
	install -m 0644 systemd/sysusers-bunq-sessiond.conf "$(DESTDIR)$(SYSUSERSDIR)/bunq-sessiond.conf"
	install -m 0644 README.md "$(DESTDIR)$(PREFIX)/share/doc/bunq-sessiond/"
	@# The service reads its config as the group CONFIG_GROUP (its own, made by sysusers: made now when installing
	@# into this system as root); others cannot read it.
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && command -v systemd-sysusers >/dev/null \
	    && ! getent group "$(CONFIG_GROUP)" >/dev/null; then \
	  systemd-sysusers "$(SYSUSERSDIR)/bunq-sessiond.conf"; \
	fi
	@target="$(DESTDIR)$(SYSCONFDIR)/bunq-sessiond/bunq-sessiond.yaml"; \
	if [ -e "$$target" ]; then target="$$target.example"; fi; \
	install -m 0640 config/bunq-sessiond.yaml "$$target"; \
	chgrp "$(CONFIG_GROUP)" "$$target" 2>/dev/null \
	  || echo "note: group $(CONFIG_GROUP) does not exist yet: after systemd-sysusers, chgrp $(CONFIG_GROUP) $$target"
	@echo "installed into $(DESTDIR)$(PREFIX); next: systemd-sysusers, edit $(SYSCONFDIR)/bunq-sessiond/bunq-sessiond.yaml," \
	  "systemctl daemon-reload, systemctl enable --now bunq-sessiond.socket"

## sandbox: only the bunq sandbox emulator, in the foreground on http://127.0.0.1:8089
sandbox: deps
	$(SWIFT) build $(SWIFT_DEBUG) --product bunq-sandbox
	"$$($(SWIFT) build --show-bin-path)/bunq-sandbox" --port 8089 --session-timeout 120 --psd2-first-session-timeout 60

clean:
	rm -rf .build
