# The two entry points of the README: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
NODE ?= node

.PHONY: all deps build test demo bench-build clean

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

clean:
	rm -rf dist build
