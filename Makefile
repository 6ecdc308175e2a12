# ftpsgate build. `make` builds build/ftpsgate; `make test` installs what is missing and runs
# unit and integration tests; SAN=1 builds everything with ASan+UBSan.
#
# Variables a caller may set: CC, CPPFLAGS, CFLAGS (default -O2 -g), LDFLAGS, LDLIBS, SAN=1,
# PREFIX (default /usr/local), DESTDIR. Includes, defines and warnings are always added:
# `make CFLAGS=-O0` still builds with them.
CC ?= cc
PYTHON := /usr/bin/python3
VERSION := $(shell sed -n 's/^\#define GW_VERSION "\(.*\)"$$/\1/p' include/version.h)

# pkg-config packages, and the Debian package that provides each. ADMIN=no builds without
# libmicrohttpd (no admin endpoint: admin_listen then fails at start); `make run` does so
# when it is not installed, so the demo needs neither it nor its GnuTLS development chain.
ADMIN ?= yes
# libcrypt: crypt_r (crypt_check.c) checks the users file of auth = file frontends and the
# admin endpoint's admin_users; the pure modules' unit tests and fuzz targets link it too.
# libldap (OpenLDAP): auth = ldap frontends (auth_ldap.c). pam: auth = pam (pam_check.c;
# not a PURE module, so unit tests do not need it).
PKGS := libuv openssl libcrypt ldap pam
ifeq ($(ADMIN),no)
override CPPFLAGS += -DGW_NO_ADMIN
else
PKGS += libmicrohttpd
endif
DEB_libuv := libuv1-dev
DEB_openssl := libssl-dev
DEB_libcrypt := libcrypt-dev
DEB_ldap := libldap-dev
DEB_pam := libpam0g-dev
DEB_libmicrohttpd := libmicrohttpd-dev
DEB_cmocka := libcmocka-dev

# Asked of pkg-config once, and only by a recipe (after check-libs has named what is
# missing), so that `make deps` and `make clean` work on a machine without the libraries.
PKG_CPPFLAGS = $(eval PKG_CPPFLAGS := $$(shell pkg-config --cflags $(PKGS)))$(PKG_CPPFLAGS)
PKG_LIBS = $(eval PKG_LIBS := $$(shell pkg-config --libs $(PKGS)))$(PKG_LIBS)
CMOCKA_CFLAGS = $(eval CMOCKA_CFLAGS := $$(shell pkg-config --cflags cmocka))$(CMOCKA_CFLAGS)
CMOCKA_LIBS = $(eval CMOCKA_LIBS := $$(shell pkg-config --libs cmocka))$(CMOCKA_LIBS)
CRYPT_LIBS = $(eval CRYPT_LIBS := $$(shell pkg-config --libs libcrypt))$(CRYPT_LIBS)

WARN := -std=c11 -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter
CFLAGS ?= -O2 -g
override CPPFLAGS += -Iinclude -D_GNU_SOURCE $(PKG_CPPFLAGS)
override LDLIBS += $(PKG_LIBS)
DEPFLAGS = -MMD -MP
# SAN=1 (and the fuzz targets): a GW_BUG_ON that fires aborts (bug.h); release logs it.
ifeq ($(SAN),1)
override CPPFLAGS += -DGW_BUG_ABORT
override CFLAGS += -O1 -fsanitize=address,undefined -fno-omit-frame-pointer \
	-fno-sanitize-recover=undefined
override LDFLAGS += -fsanitize=address,undefined
endif
COMPILE = $(CC) $(CPPFLAGS) $(WARN) $(CFLAGS)

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
DOCDIR ?= $(PREFIX)/share/doc/ftpsgate

# Pure modules: no libuv, no OpenSSL; unit-tested and fuzzed alone.
PURE := ftp_cmd ftp_reply ftp_addr feat config ip_limit balance cidr ban xferlog tls_hello \
	proxy_proto admin_text admin_users metrics timeline siblings server_name inherit \
	users_file cmd_policy crypt_check user_map textfile ldap_text rate
# bug and log: GW_BUG_ON (bug.h) is usable from pure modules too.
PURE += bug log
SRCS := $(wildcard proxy/*.c)
OBJS := $(patsubst proxy/%.c,build/obj/%.o,$(SRCS))
PURE_OBJS := $(patsubst %,build/obj/%.o,$(PURE))
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(patsubst tests/unit/%.c,build/unit/%,$(UNIT_SRCS))
FUZZ_SRCS := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BINS := $(patsubst tests/fuzz/%.c,build/fuzz/%,$(FUZZ_SRCS))
FUZZ_OBJS = $(patsubst %,build/fuzz/obj/%.o,$(PURE))

.PHONY: all run test unit integration deps deps-demo clean fuzz fuzz-run bench valgrind format format-check lint \
	install uninstall version check-libs check-cmocka FORCE
all: build/ftpsgate

# A missing library is named with its Debian package (`make deps` installs them all).
define require_pkgs
	@command -v pkg-config >/dev/null || { echo 'missing tool: pkg-config (Debian package pkg-config; run `make deps`)' >&2; exit 1; }
	@missing=0; $(foreach p,$(1),pkg-config --exists $(p) || { echo 'missing library: $(p) (Debian package $(DEB_$(p)); run `make deps`)' >&2; missing=1; };) exit $$missing
endef
check-libs:
	$(call require_pkgs,$(PKGS))
check-cmocka:
	$(call require_pkgs,cmocka)

# Rebuild everything when the flags change (SAN=1 and back, CFLAGS=...): the stamp is
# rewritten only when its text differs, so an unchanged build stays up to date.
FLAGSTAMP := build/.flags
FLAGS_TEXT = $(CC) $(CPPFLAGS) $(WARN) $(CFLAGS) $(LDFLAGS) $(LDLIBS)
$(FLAGSTAMP): check-libs FORCE
	@mkdir -p $(@D)
	@echo '$(FLAGS_TEXT)' | cmp -s - $@ || echo '$(FLAGS_TEXT)' > $@

build/ftpsgate: $(OBJS)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# Header dependencies come from the compiler (-MMD -MP): build/obj/*.d, build/unit/*.d.
build/obj/%.o: proxy/%.c $(FLAGSTAMP)
	@mkdir -p $(@D)
	$(COMPILE) $(DEPFLAGS) -c -o $@ $<

build/unit/%: tests/unit/%.c $(PURE_OBJS) $(FLAGSTAMP) | check-cmocka
	@mkdir -p $(@D)
	$(COMPILE) $(DEPFLAGS) -MF $@.d -MT $@ $(CMOCKA_CFLAGS) $(LDFLAGS) -o $@ $< $(PURE_OBJS) \
	  $(CMOCKA_LIBS) $(CRYPT_LIBS)

# The mailbox's test runs threads and a libuv loop: it links mailbox.o and libuv.
build/unit/test_mailbox: tests/unit/test_mailbox.c build/obj/mailbox.o $(FLAGSTAMP) | check-cmocka
	@mkdir -p $(@D)
	$(COMPILE) $(DEPFLAGS) -MF $@.d -MT $@ $(CMOCKA_CFLAGS) $(LDFLAGS) -o $@ $< \
	  build/obj/mailbox.o $(CMOCKA_LIBS) $(LDLIBS) -lpthread

-include $(OBJS:.o=.d) $(UNIT_BINS:=.d) $(FUZZ_BINS:=.d) $(FUZZ_OBJS:=.d)

unit: $(UNIT_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; ./$$t; done

# In parallel (pytest-xdist): most tests wait on timers and peers, not on the CPU (the plain
# suite kept 0.7 of 2 cores busy with 4 workers), so 8 workers pay off on 2 cores: measured
# on a quiet 2-core machine, 202 s with 4, 147 s with 8. Tests marked `serial` (load and
# timing: a soak, 1,000 connections, descriptor exhaustion) run afterwards, one after the
# other in a second pytest: inside the parallel run each of them had to wait until every
# other worker's test ended (tests/integration/conftest.py), twelve drains that cost about
# 100 s of idle workers. TEST_JOBS=0: one process, in file order. `make SAN=1 test` (CI
# stage san) runs this same whole suite on the ASan+UBSan build, also with 8 workers; only
# test_alloc_failure.py skips itself there (ASan's allocator must come first in
# LD_PRELOAD, so its failing allocator cannot).
# Without python3-pytest-xdist (`make deps` installs it) the suite runs in one process.
TEST_JOBS ?= 8
HAVE_XDIST = $(shell $(PYTHON) -c 'import xdist' 2>/dev/null && echo yes)
XDIST = $(if $(filter-out 0,$(TEST_JOBS)),$(if $(HAVE_XDIST),-n $(TEST_JOBS) --dist loadgroup))
# pytest exits 5 when a PYTEST_ARGS selection leaves one of the two runs without a test.
integration: build/ftpsgate
	$(PYTHON) -m pytest -q -ra $(XDIST) -m "not measure and not serial" tests/integration \
	  $(PYTEST_ARGS) || [ $$? = 5 ]
	$(PYTHON) -m pytest -q -ra -m "serial and not measure" tests/integration \
	  $(PYTEST_ARGS) || [ $$? = 5 ]

# Like `make run`: the Debian packages first (quick when all are present), then the tests
# in a second make, so that its pkg-config sees what deps has just installed.
test: deps
	@$(MAKE) --no-print-directory unit integration

# The named subset that CI runs under valgrind: dialogue, files <= 1 MiB, ABOR, faults, and
# the splice relay (its bytes stay in the kernel, so 24 MiB cost valgrind little), workers,
# the real-client sessions (REIN pipelining, refused data legs), backend quirks, PROXY
# headers and the ban list. Left out: the 30-URL and 50-transfer cases (minutes under
# valgrind), and the checks that both workers got sessions (valgrind runs one thread at a
# time, so the kernel's SO_REUSEPORT spread is not seen in the few connections they make;
# `spread_over_workers` alone took 43 s here, run alone). As in `make integration`, the
# tests marked serial run after the parallel part.
# Health probes and balancing ran clean under valgrind in earlier CI runs; they, the shared
# port and the TLS policy tests are in the sanitizer stage. The implicit and explicit
# dialogue runs against vsftpd only here (against pyftpdlib too in the test and sanitizer
# stages, whose LeakSanitizer checks leaks as well): 135 tests.
VALGRIND := valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
	--show-leak-kinds=definite
VALGRIND_TESTS ?= tests/integration/test_implicit.py tests/integration/test_explicit_tls.py \
	tests/integration/test_splice.py tests/integration/test_workers.py \
	tests/integration/test_client_sessions.py tests/integration/test_backend_quirks.py \
	tests/integration/test_proxy_protocol.py tests/integration/test_ban.py \
	-k "not 64 and not parallel and not fd_count and not upload_series and not slow_backend \
	and not curl_30 and not fresh_ticket and not two_workers and not spread_over_workers \
	and not (explicit_tls and pyftpdlib) and not (test_implicit and pyftpdlib)"
# Two workers: valgrind keeps a core busy per gateway, and the tests wait on it (three
# measured no faster: 206 s against 201-231 s).
VALGRIND_JOBS ?= 2
valgrind: build/ftpsgate
	FTPSGATE_WRAPPER="$(VALGRIND)" $(PYTHON) -m pytest -q -ra -m "not serial" \
	  $(if $(filter-out 0,$(VALGRIND_JOBS)),$(if $(HAVE_XDIST),-n $(VALGRIND_JOBS) --dist loadgroup)) \
	  $(VALGRIND_TESTS) || [ $$? = 5 ]
	FTPSGATE_WRAPPER="$(VALGRIND)" $(PYTHON) -m pytest -q -ra -m serial $(VALGRIND_TESTS) \
	  || [ $$? = 5 ]

# libFuzzer targets (clang); FUZZ_SECONDS bounds each run.
FUZZ_SECONDS ?= 60
# The pure sources are compiled once for all targets (instrumented for coverage, without
# libFuzzer's main), each target's own file links against them.
FUZZ_CC := clang -std=c11 -g -O1 -D_GNU_SOURCE -DGW_BUG_ABORT -Iinclude
build/fuzz/obj/%.o: proxy/%.c | check-libs
	@mkdir -p $(@D)
	$(FUZZ_CC) -fsanitize=fuzzer-no-link,address,undefined $(DEPFLAGS) -MF $@.d -MT $@ \
	  -c -o $@ $<
build/fuzz/%: tests/fuzz/%.c $(FUZZ_OBJS) | check-libs
	@mkdir -p $(@D)
	$(FUZZ_CC) -fsanitize=fuzzer,address,undefined $(DEPFLAGS) -MF $@.d -MT $@ \
	  -o $@ $< $(FUZZ_OBJS) $(CRYPT_LIBS)
.SECONDARY: $(FUZZ_OBJS)
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

# `make run` installs only what the demo needs (build, vsftpd, lftp); `make deps` and
# `make test` everything.
run: deps-demo
	@$(MAKE) --no-print-directory all \
	  ADMIN=$$(pkg-config --exists libmicrohttpd 2>/dev/null && echo yes || echo no)
	tests/tools/demo.sh

deps:
	.ci/deps.sh

deps-demo:
	.ci/deps.sh demo

bench: all
ifeq ($(QUICK),1)
	$(MAKE) bench-quick
else
	$(PYTHON) tests/bench/bench.py
endif

# The relay against its floor (socat + openssl speed), HAProxy and the gateway built from
# BENCH_BEFORE (a commit, by default the start of the redesign), in one run, as ratios:
# tests/bench/floor.py. `make bench QUICK=1` = `make bench-quick`: under 3 minutes.
BENCH_BEFORE ?= af78c49
BEFORE_DIR := build/bench/before-$(BENCH_BEFORE)
BENCH_FLOOR_ARGS ?=
$(BEFORE_DIR)/build/ftpsgate:
	rm -rf $(BEFORE_DIR) && mkdir -p $(BEFORE_DIR)
	git archive $(BENCH_BEFORE) | tar -x -C $(BEFORE_DIR)
	$(MAKE) -C $(BEFORE_DIR) all

.PHONY: bench-floor bench-quick
bench-floor: all $(BEFORE_DIR)/build/ftpsgate
	$(PYTHON) tests/bench/floor.py --before $(BEFORE_DIR)/build/ftpsgate $(BENCH_FLOOR_ARGS)

bench-quick: all $(BEFORE_DIR)/build/ftpsgate
	$(PYTHON) tests/bench/floor.py --quick --before $(BEFORE_DIR)/build/ftpsgate

# What authenticating at the gateway costs (auth = file with three hashes, auth = ldap cold
# and warm, against auth = backend): login latency and sessions/s, as ratios, in one run:
# tests/bench/edge_login.py (root, slapd). BENCH_EDGE_ARGS: e.g. --quick.
BENCH_EDGE_ARGS ?=
.PHONY: bench-edge bench-upgrade
bench-edge: all
	$(PYTHON) tests/bench/edge_login.py $(BENCH_EDGE_ARGS)
	$(PYTHON) -m pytest -q -s -m measure tests/integration/test_edge_auth_cost.py

# A hitless upgrade's accept latency and the two processes' memory (printed).
bench-upgrade: all
	$(PYTHON) -m pytest -q -s -m measure tests/integration/test_upgrade.py

# Every C file as .clang-format says; format-check (CI) only looks.
format:
	clang-format -i $$(git ls-files -- '*.c' '*.h')

format-check:
	tests/tools/check_format.sh

# The architecture's layers (README "Architecture") and the format, as CI checks them.
lint: format-check
	$(PYTHON) tests/tools/check_layers.py

version:
	@echo $(VERSION)

# The binary, and the documentation in the repository's layout (so README.md's links to
# config/README.md, proxy/PROTOCOL.md and proxy/ARCHITECTURE.md still work): samples go to
# $(DOCDIR)/config/.
DOCS := README.md config/README.md config/ftpsgate.conf config/minimal.conf \
	config/three-backends.conf proxy/PROTOCOL.md proxy/ARCHITECTURE.md
# Operations: the systemd unit, the logrotate snippet, Prometheus alerting rules and their test.
DOCS += config/ftpsgate.service config/ftpsgate.logrotate config/ftpsgate.rules.yml \
	config/ftpsgate.rules.test.yml
install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(DOCDIR)/config $(DESTDIR)$(DOCDIR)/proxy
	install -m 755 build/ftpsgate $(DESTDIR)$(BINDIR)/ftpsgate
	$(foreach f,$(DOCS),install -m 644 $(f) $(DESTDIR)$(DOCDIR)/$(f) &&) true

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/ftpsgate $(addprefix $(DESTDIR)$(DOCDIR)/,$(DOCS))
	rmdir --ignore-fail-on-non-empty $(DESTDIR)$(DOCDIR)/config $(DESTDIR)$(DOCDIR)/proxy \
	  $(DESTDIR)$(DOCDIR)

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
