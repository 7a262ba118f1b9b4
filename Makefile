# Entry points. `make run` and `make test` work on a fresh Debian 12 machine:
# they install what is missing, build, and run.
BUILD   ?= build
ASAN    ?= build-asan
JOBS    ?= $(shell nproc)
CONFIG  ?=
PYTEST  ?= /usr/bin/python3 -m pytest

.PHONY: all build run test unit sim integration asan fuzz bench deps deps-test clean

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

sim: build
	cd $(BUILD) && ctest -L sim --output-on-failure

integration: build
	REGMESH_BIN=$(CURDIR)/$(BUILD)/regmesh $(PYTEST) -q -rs tests/integration

test: deps-test
	$(MAKE) build
	$(MAKE) unit
	$(MAKE) sim
	$(MAKE) integration

# Unit tests under AddressSanitizer + UBSan (a CI step).
asan: deps-test
	cmake -S . -B $(ASAN) -DCMAKE_BUILD_TYPE=Debug -DREGMESH_SANITIZE=ON
	cmake --build $(ASAN) -j $(JOBS)
	cd $(ASAN) && ctest -L 'unit|sim' --output-on-failure

# A short libFuzzer run over each fuzz target (a CI step; needs clang).
FUZZ      ?= build-fuzz
FUZZ_SECS ?= 60
fuzz: deps-test
	cmake -S . -B $(FUZZ) -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug
	cmake --build $(FUZZ) -j $(JOBS) --target fuzz_gossip_decode fuzz_access
	mkdir -p $(FUZZ)/corpus/gossip $(FUZZ)/corpus/access
	./$(FUZZ)/tests/fuzz/fuzz_gossip_decode \
	  -max_total_time=$(FUZZ_SECS) $(FUZZ)/corpus/gossip tests/fuzz/corpus/gossip
	./$(FUZZ)/tests/fuzz/fuzz_access \
	  -max_total_time=$(FUZZ_SECS) $(FUZZ)/corpus/access tests/fuzz/corpus/access

# Side-by-side figures against distribution's proxy (not part of `test`).
bench: deps-test build
	REGMESH_BIN=$(CURDIR)/$(BUILD)/regmesh /usr/bin/python3 bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(BUILD) $(ASAN) $(FUZZ)
