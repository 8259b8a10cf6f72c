# The two entry points of the README: `make demo` and `make test`. Both install what they need.
# `make kernel-test`: the cachefiles on-demand transport in a qemu VM with the project's own kernel
# (kernel-tests/; the first run builds the kernel, about 15 minutes on 2 cores, then it is cached).
# `make test` runs it too, after the host tests; SKIP_KERNEL_TESTS=1 leaves it out.
SHELL := /bin/bash
NODE ?= node

.PHONY: all deps build lint test demo bench-build kernel kernel-test clean

all: build

deps:
	scripts/install-deps

build: deps
	npx tsc -p tsconfig.json

# typescript-eslint's recommended rules, and the layout prettier gives (npm run format fixes it).
lint: deps
	npm run --silent lint

# Two tiers: test/unit runs unprivileged with no registry, mounts or system tools (`npm test`);
# test/system needs root, a registry, the kernel's mounts and erofs-utils/umoci/skopeo/debootstrap.
test: build lint
	$(NODE) --test dist/test/unit/*.test.js
	$(NODE) --test dist/test/system/*.test.js
	@if [ -n "$$SKIP_KERNEL_TESTS" ]; then echo "kernel tests skipped (SKIP_KERNEL_TESTS)"; else $(MAKE) --no-print-directory kernel-test; fi

demo: build
	scripts/demo

bench-build: build
	scripts/bench-build $(BENCH_SRC)

kernel:
	kernel-tests/build-kernel

kernel-test: build kernel
	kernel-tests/run-vm --timeout 900 -- kernel-tests/probe.sh
	kernel-tests/run-vm --timeout 1800 -- $(NODE) dist/kernel-tests/cachefiles-smoke.js
	kernel-tests/run-vm --timeout 2400 -- $(NODE) --test dist/kernel-tests/daemon-cachefiles.test.js

clean:
	rm -rf dist build
