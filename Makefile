# mxgate - top-level convenience targets. Everything real is in meson.build.
#   make run    install missing packages, build, start the gateway (quickstart)
#   make test   install missing packages, build, run every test (+ ASan/UBSan)

BUILD      ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
CONF       ?= examples/quickstart.conf
FUZZ_SECONDS ?= 60

# Debian 12 packages the build and the tests need.
DEB_PKGS := meson ninja-build pkg-config gcc clang libclang-rt-14-dev \
	libdpdk-dev libhyperscan-dev libclamav-dev liburing-dev libssl-dev \
	libmimalloc-dev libcmocka-dev libc-ares-dev libmagic-dev libarchive-dev liblzma-dev libpcre2-dev \
	libjansson-dev libmicrohttpd-dev libncurses-dev \
	openssl iproute2 ethtool nftables swaks postfix python3 python3-aiosmtpd \
	python3-prometheus-client tmux dnsmasq-base unbound hping3 spamassassin clamav-testfiles linux-perf

# Peers that only the side-by-side benchmarks in perf/compare/ run (not needed to
# build, run or test mxgate).
PERF_PKGS := spamass-milter spamd spamc rspamd

.PHONY: all deps perf-deps install-missing build run test test-unit test-asan fuzz clean

all: build

deps:
	@$(MAKE) --no-print-directory install-missing PKGS="$(DEB_PKGS)"

perf-deps: deps
	@$(MAKE) --no-print-directory install-missing PKGS="$(PERF_PKGS)"

install-missing:
	@missing=$$(for p in $(PKGS); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		if [ "$$(id -u)" != 0 ]; then echo "need root to apt-get install: $$missing" >&2; exit 1; fi; \
		echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(BUILD)/build.ninja:
	meson setup $(BUILD) --buildtype=debugoptimized

$(ASAN_BUILD)/build.ninja:
	meson setup $(ASAN_BUILD) --buildtype=debug -Db_sanitize=address,undefined \
		-Db_lundef=false -Dintegration=false

$(FUZZ_BUILD)/build.ninja:
	CC=clang meson setup $(FUZZ_BUILD) --buildtype=debugoptimized -Dfuzz=true \
		-Db_sanitize=address,undefined -Db_lundef=false -Dintegration=false

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

run: build
	@mkdir -p var
	@echo "mxgate: listening on 127.0.0.1:2525, delivering to var/maildir"
	@echo "send a test message:  swaks --server 127.0.0.1:2525 --to user@example.test"
	$(BUILD)/app/mxgate -c $(CONF)

test-unit: build
	meson test -C $(BUILD) --print-errorlogs --num-processes 2

test-asan: deps $(ASAN_BUILD)/build.ninja
	ninja -C $(ASAN_BUILD)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		meson test -C $(ASAN_BUILD) --suite unit --no-suite slow --timeout-multiplier 3 \
		--print-errorlogs --num-processes 2

# The plain build first: it also fills the shared compiled-rules cache
# (build-cache/) that the ASan run then loads instead of compiling again.
test: build
	meson test -C $(BUILD) --print-errorlogs --num-processes 2
	$(MAKE) test-asan

# Run every libFuzzer target for FUZZ_SECONDS each; new crashers land in
# tests/fuzz/corpus/<target>/ and become regression tests.
fuzz: deps $(FUZZ_BUILD)/build.ninja
	ninja -C $(FUZZ_BUILD)
	tests/fuzz/run-all.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD) build-cache
