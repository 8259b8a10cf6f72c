# The two entry points of the README: `make demo` and `make test`. Both install what they need.
# `make kernel-test`: the cachefiles on-demand transport in a qemu VM with the project's own kernel
# (kernel-tests/; the first run builds the kernel, about 10 minutes, then it is cached).
SHELL := /bin/bash
NODE ?= node

.PHONY: all deps build test demo bench-build kernel kernel-test clean

all: build

deps:
	scripts/install-deps

build: deps
	npx tsc -p tsconfig.json

test: build
	$(NODE) --test dist/test/*.test.js

demo: build
	scripts/demo

bench-build: build
	scripts/bench-build $(BENCH_SRC)

kernel:
	kernel-tests/build-kernel

kernel-test: build kernel
	kernel-tests/run-vm --timeout 900 -- kernel-tests/probe.sh
	kernel-tests/run-vm --timeout 1800 -- $(NODE) dist/kernel-tests/cachefiles-smoke.js

clean:
	rm -rf dist build
