# Entry points. `make run` and `make test` work on a fresh Debian 12 machine:
# they install what is missing, build, and run.
BUILD   ?= build
ASAN    ?= build-asan
JOBS    ?= $(shell nproc)
CONFIG  ?=
PYTEST  ?= /usr/bin/python3 -m pytest
PREFIX  ?= /usr/local
CONFDIR ?= /etc/regmesh
DESTDIR ?=

.PHONY: all build run test unit sim integration asan fuzz bench image deps deps-test clean \
	install builds

all: build

deps:
	@sh deploy/deps.sh build

deps-test:
	@sh deploy/deps.sh test

$(BUILD)/Makefile: CMakeLists.txt
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DREGMESH_WERROR=ON

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

# Installs the binary, the systemd unit (its paths follow PREFIX), the docs
# and, when none is there, $(CONFDIR)/regmesh.yml. Packagers: DESTDIR=...
install: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DREGMESH_WERROR=ON \
	  -DCMAKE_INSTALL_PREFIX=$(PREFIX) -DREGMESH_CONFDIR=$(CONFDIR)
	cmake --build $(BUILD) -j $(JOBS) --target regmesh
	DESTDIR=$(DESTDIR) cmake --install $(BUILD)

# Every compiler and build type packagers use must build warning-free (a CI
# step; each in its own directory under build-all/).
builds: deps-test
	for cc in gcc clang; do for t in Debug RelWithDebInfo Release; do \
	  cmake -S . -B build-all/$$cc-$$t -DCMAKE_C_COMPILER=$$cc \
	    -DCMAKE_BUILD_TYPE=$$t -DREGMESH_WERROR=ON >/dev/null && \
	  cmake --build build-all/$$cc-$$t -j $(JOBS) >/dev/null || exit 1; \
	  echo "build $$cc $$t: ok"; done; done

# Unit tests under AddressSanitizer + UBSan (a CI step).
asan: deps-test
	cmake -S . -B $(ASAN) -DCMAKE_BUILD_TYPE=Debug -DREGMESH_SANITIZE=ON -DREGMESH_WERROR=ON
	cmake --build $(ASAN) -j $(JOBS)
	cd $(ASAN) && ctest -L 'unit|sim' --output-on-failure

# A short libFuzzer run over each fuzz target (a CI step; needs clang).
FUZZ      ?= build-fuzz
FUZZ_SECS ?= 45
fuzz: deps-test
	cmake -S . -B $(FUZZ) -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug -DREGMESH_WERROR=ON \
	  -DREGMESH_FUZZ=ON
	cmake --build $(FUZZ) -j $(JOBS) --target fuzz_gossip_decode fuzz_access fuzz_pins fuzz_parsers fuzz_http fuzz_upstream
	mkdir -p $(FUZZ)/corpus/gossip $(FUZZ)/corpus/access $(FUZZ)/corpus/pins $(FUZZ)/corpus/parsers $(FUZZ)/corpus/http $(FUZZ)/corpus/upstream
	./$(FUZZ)/tests/fuzz/fuzz_gossip_decode \
	  -max_total_time=$(FUZZ_SECS) $(FUZZ)/corpus/gossip tests/fuzz/corpus/gossip
	./$(FUZZ)/tests/fuzz/fuzz_access \
	  -max_total_time=$(FUZZ_SECS) $(FUZZ)/corpus/access tests/fuzz/corpus/access
	./$(FUZZ)/tests/fuzz/fuzz_pins \
	  -max_total_time=$(FUZZ_SECS) $(FUZZ)/corpus/pins tests/fuzz/corpus/pins
	./$(FUZZ)/tests/fuzz/fuzz_parsers -timeout=10 \
	  -max_total_time=$(FUZZ_SECS) $(FUZZ)/corpus/parsers tests/fuzz/corpus/parsers
	./$(FUZZ)/tests/fuzz/fuzz_http -timeout=10 \
	  -max_total_time=$(FUZZ_SECS) $(FUZZ)/corpus/http tests/fuzz/corpus/http
	./$(FUZZ)/tests/fuzz/fuzz_upstream -timeout=10 \
	  -max_total_time=$(FUZZ_SECS) $(FUZZ)/corpus/upstream tests/fuzz/corpus/upstream

# The OCI image from this machine's Debian packages (deploy/image/build.sh).
image: build
	sh deploy/image/build.sh $(BUILD)/regmesh $(BUILD)/image latest

# Side-by-side figures against distribution's proxy (not part of `test`).
bench: deps-test build
	REGMESH_BIN=$(CURDIR)/$(BUILD)/regmesh /usr/bin/python3 bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(BUILD) $(ASAN) $(FUZZ) build-all
