# bunq-sessiond — build, test and run. `make test` works on a fresh Debian/Ubuntu machine with Swift installed:
# it installs the system packages it needs, builds, and runs every test.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
SWIFT ?= swift
export PATH := $(PATH):/opt/swift/usr/bin

# System packages the build and the tests need (headers for the C bindings, the openssl command for interop
# tests, CA certificates for TLS).
DEB_PACKAGES := libssl-dev libcurl4-openssl-dev libsystemd-dev libsqlite3-dev pkg-config openssl ca-certificates
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
BUILD_LOG := .build/make-build.log

.PHONY: all deps build test run clean

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
	$(SWIFT) build --build-tests 2>&1 | tee $(BUILD_LOG)
	@if grep -E "^$(CURDIR)/(Sources|Tests)/.*: warning:" $(BUILD_LOG); then \
	  echo "make build: compiler warnings in our code (above) are errors"; exit 1; \
	fi

## test: deps, build, then every test
test: build
	$(SWIFT) test --skip-build

## run: the daemon against the local bunq sandbox emulator (arrives with the emulator)
run:
	@echo "make run: the bunq-sandbox emulator and the daemon demo are not built yet (see README, 'Status')."
	@exit 2

clean:
	rm -rf .build
