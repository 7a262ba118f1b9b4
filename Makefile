# Entry points. `make run` and `make test` work on a fresh Debian 12 machine:
# they install what is missing, build, and run.
BUILD   ?= build
ASAN    ?= build-asan
JOBS    ?= $(shell nproc)
CONFIG  ?=
PYTEST  ?= /usr/bin/python3 -m pytest

.PHONY: all build run test unit integration asan bench deps deps-test clean

all: build

deps:
	@sh deploy/deps.sh build

deps-test:
	@sh deploy/deps.sh test

$(BUILD)/Makefile: CMakeLists.txt
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo

build: deps $(BUILD)/Makefile
	cmake --build $(BUILD) -j $(JOBS)

# Starts a node on the built-in default config (or CONFIG=file.yml).
run: build
	./$(BUILD)/regmesh serve $(if $(CONFIG),--config $(CONFIG),)

unit: build
	cd $(BUILD) && ctest -L unit --output-on-failure

integration: build
	REGMESH_BIN=$(CURDIR)/$(BUILD)/regmesh $(PYTEST) -q -rs tests/integration

test: deps-test
	$(MAKE) build
	$(MAKE) unit
	$(MAKE) integration

# Unit tests under AddressSanitizer + UBSan (a CI step).
asan: deps-test
	cmake -S . -B $(ASAN) -DCMAKE_BUILD_TYPE=Debug -DREGMESH_SANITIZE=ON
	cmake --build $(ASAN) -j $(JOBS)
	cd $(ASAN) && ctest -L unit --output-on-failure

# Side-by-side figures against distribution's proxy (not part of `test`).
bench: deps-test build
	REGMESH_BIN=$(CURDIR)/$(BUILD)/regmesh /usr/bin/python3 bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(BUILD) $(ASAN)
