# Thin front over meson/ninja.  `make` only builds; demo, check, bench and
# fuzz first install missing Debian packages (scripts/install-deps), so a
# fresh machine needs only `make demo` or `make check`.
BUILD ?= build
CHECK_BUILD ?= build-check
PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: all build deps demo check bench fuzz crash mutate install clean

all: build

build:
	@if [ -f $(BUILD)/build.ninja ]; then meson setup --reconfigure $(BUILD) >/dev/null; \
	 else meson setup $(BUILD) >/dev/null; fi
	ninja -C $(BUILD)

deps:
	@scripts/install-deps

demo: deps
	@$(MAKE) --no-print-directory build
	scripts/demo

# Sanitizer build (ASan + UBSan) and every test.
check: deps
	@if [ -f $(CHECK_BUILD)/build.ninja ]; then meson setup --reconfigure $(CHECK_BUILD) >/dev/null; \
	 else meson setup $(CHECK_BUILD) -Db_sanitize=address,undefined -Db_lundef=false >/dev/null; fi
	ninja -C $(CHECK_BUILD)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  meson test -C $(CHECK_BUILD) --print-errorlogs --num-processes 2 $(TESTS)

bench: deps
	@$(MAKE) --no-print-directory build
	bench/run

fuzz: deps
	tests/fuzz/run long

crash: deps
	@$(MAKE) --no-print-directory build
	RBLOCK_CRASH_ALL=1 tests/crash/run

# bin/rblock, the man page rblock(1) and bash completion under PREFIX.
install:
	@if [ -f $(BUILD)/build.ninja ]; then meson setup --reconfigure -Dprefix=$(abspath $(PREFIX)) $(BUILD) >/dev/null; \
	 else meson setup -Dprefix=$(abspath $(PREFIX)) $(BUILD) >/dev/null; fi
	ninja -C $(BUILD)
	meson install -C $(BUILD) --no-rebuild $(if $(DESTDIR),--destdir $(DESTDIR))

# Plant each bug of tests/mutants/ in a scratch copy (build-mutate/), build
# it with ASan + UBSan and run the tests it names: fails when one survives.
# Not part of check (time).  MUTANTS="name ..." runs only those.
mutate: deps
	tests/mutants/run $(MUTANTS)

clean:
	rm -rf $(BUILD) $(CHECK_BUILD) build-fuzz build-mutate
