# ftpsgate build. `make` builds build/ftpsgate; `make test` runs unit and integration tests;
# SAN=1 builds everything with ASan+UBSan.
CC ?= cc
PKGS := libuv openssl inih
PYTHON := /usr/bin/python3

WARN := -std=c11 -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter
CFLAGS ?= -O2 -g
CFLAGS += $(WARN) -D_GNU_SOURCE -Iinclude $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS += $(shell pkg-config --libs $(PKGS) 2>/dev/null)
ifeq ($(SAN),1)
CFLAGS += -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif

# Pure modules: no libuv, no OpenSSL; unit-tested and fuzzed alone.
PURE := ftp_cmd ftp_reply ftp_addr feat config ip_limit
SRCS := $(wildcard proxy/*.c)
OBJS := $(patsubst proxy/%.c,build/obj/%.o,$(SRCS))
PURE_OBJS := $(patsubst %,build/obj/%.o,$(PURE))
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(patsubst tests/unit/%.c,build/unit/%,$(UNIT_SRCS))
FUZZ_SRCS := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BINS := $(patsubst tests/fuzz/%.c,build/fuzz/%,$(FUZZ_SRCS))

# Rebuild everything when the flags change (SAN=1 and back).
FLAGSTAMP := build/.flags
$(shell mkdir -p build/obj build/unit build/fuzz; echo '$(CC) $(CFLAGS) $(LDFLAGS)' | cmp -s - $(FLAGSTAMP) || echo '$(CC) $(CFLAGS) $(LDFLAGS)' > $(FLAGSTAMP))

.PHONY: all run test unit integration deps clean fuzz fuzz-run bench valgrind format
all: build/ftpsgate

build/ftpsgate: $(OBJS)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

build/obj/%.o: proxy/%.c $(wildcard include/*.h) $(FLAGSTAMP)
	$(CC) $(CFLAGS) -c -o $@ $<

build/unit/%: tests/unit/%.c $(PURE_OBJS) $(FLAGSTAMP)
	$(CC) $(CFLAGS) $(shell pkg-config --cflags cmocka) $(LDFLAGS) -o $@ $< $(PURE_OBJS) \
	  $(shell pkg-config --libs cmocka inih)

unit: $(UNIT_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; ./$$t; done

integration: build/ftpsgate
	$(PYTHON) -m pytest -q -ra tests/integration $(PYTEST_ARGS)

test: unit integration

# The named subset that CI runs under valgrind: dialogue, files <= 1 MiB, ABOR, faults, and
# the splice relay (its bytes stay in the kernel, so 24 MiB cost valgrind little), workers.
VALGRIND := valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
	--show-leak-kinds=definite
VALGRIND_TESTS ?= tests/integration/test_implicit.py tests/integration/test_explicit_tls.py \
	tests/integration/test_splice.py tests/integration/test_workers.py \
	-k "not 64 and not parallel and not fd_count and not upload_series and not slow_backend"
valgrind: build/ftpsgate
	FTPSGATE_WRAPPER="$(VALGRIND)" $(PYTHON) -m pytest -q -ra $(VALGRIND_TESTS)

# libFuzzer targets (clang); FUZZ_SECONDS bounds each run.
FUZZ_SECONDS ?= 60
build/fuzz/%: tests/fuzz/%.c $(patsubst %,proxy/%.c,$(PURE)) $(wildcard include/*.h)
	clang -std=c11 -g -O1 -D_GNU_SOURCE -Iinclude -fsanitize=fuzzer,address,undefined \
	  -o $@ $< $(patsubst %,proxy/%.c,$(PURE)) $(shell pkg-config --cflags --libs inih)
fuzz: $(FUZZ_BINS)
fuzz-run: $(FUZZ_BINS)
	@set -e; for f in $(FUZZ_BINS); do n=$$(basename $$f); c=build/fuzz/corpus-$$n; \
	  mkdir -p $$c; log=build/fuzz/$$n.log; \
	  if ! ./$$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $$c \
	      tests/fuzz/corpus/$${n#fuzz_} > $$log 2>&1; then \
	    tail -n 40 $$log; echo "== $$n: CRASH (see $$log)"; exit 1; fi; \
	  echo "== $$n: $(FUZZ_SECONDS) s, $$(grep -o 'number_of_executed_units: [0-9]*' $$log \
	    | grep -o '[0-9]*') executions, $$(grep -o 'cov: [0-9]*' $$log | tail -n 1) edges"; \
	done

run: deps all
	tests/tools/demo.sh

deps:
	.ci/deps.sh

bench: all
	$(PYTHON) tests/bench/bench.py

format:
	clang-format -i proxy/*.c include/*.h tests/unit/*.c tests/fuzz/*.c

clean:
	rm -rf build

# TLS I/O path microbenchmark (standalone, OpenSSL + libc): memory BIO vs socket BIO, CPU per
# GiB of the encrypting and of the decrypting side. BENCH_TLSIO_ARGS: [MiB] [--read-ahead].
BENCH_TLSIO_ARGS ?=
build/bench/tls_io_path: tests/bench/tls_io_path.c
	@mkdir -p build/bench
	$(CC) -std=c11 -Wall -Wextra -Werror -O2 -D_GNU_SOURCE -o $@ $< -lssl -lcrypto

.PHONY: bench-tlsio
bench-tlsio: build/bench/tls_io_path
	./build/bench/tls_io_path $(BENCH_TLSIO_ARGS)
