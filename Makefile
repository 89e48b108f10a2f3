# Bazaar: build, install, demo and test. Run as root on Debian 12.
#
#   make demo      install what is needed, build, install, run a container in a VM
#   make test      install what is needed, build, run every test (unit, component, e2e)
#   make install   install the shim, guest kernel/initrd and default configuration
#
# Targets run in the order listed (.NOTPARALLEL): `make -j` gains nothing here anyway, cargo and
# the kernel build use every core themselves.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
# cargo from rustup is not on root's PATH in every shell (sudo, CI).
export PATH := $(HOME)/.cargo/bin:/root/.cargo/bin:$(PATH)

CARGO        ?= cargo
AGENT_TARGET ?= x86_64-unknown-linux-gnu
AGENT_BIN    := target/$(AGENT_TARGET)/agent/bazaar-agent
# The shim is built with its own profile (Cargo.toml, [profile.shim]: small rather than fast);
# `make test` and `make bench` drive this binary, the one `make install` installs.
SHIM_DIR     := target/shim
SHIM_BIN     := $(SHIM_DIR)/containerd-shim-bazaar-v2
# Helper binaries installed next to the shim when the workspace builds them.
HELPERS      := bazaar-vmm
GUEST_DIR    := build/guest
KERNEL       := $(GUEST_DIR)/bzImage
INITRD       := $(GUEST_DIR)/initrd.cpio

DESTDIR    ?=
PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
DATADIR    ?= /usr/share/bazaar
SYSCONFDIR ?= /etc/bazaar

.NOTPARALLEL:
.PHONY: all deps build guest-image install demo test bench clean help

all: build guest-image

help:
	@sed -n '2,6p' Makefile | sed 's/^# *//'

## Debian packages, virtiofsd and vhost-device-vsock (idempotent, fast when present).
deps:
	bash scripts/install-deps.sh

## The workspace (shim, runtime, tests...), and the guest agent as a static binary (it is the
## guest's /init: no libc in the initrd).
build:
	$(CARGO) build --release --workspace
	$(CARGO) build --profile shim -p bazaar-shim
	RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
		$(CARGO) build --profile agent -p bazaar-agent --target $(AGENT_TARGET)

## Guest kernel (cached by its config) and initrd (the agent as /init).
guest-image: build
	bash guest-image/build-kernel.sh $(GUEST_DIR)
	bash guest-image/build-initrd.sh $(AGENT_BIN) $(INITRD)

## Installs what `make build guest-image` made; an existing configuration is kept.
install:
	@for f in $(SHIM_BIN) $(KERNEL) $(INITRD); do \
		[[ -f $$f ]] || { echo "make install: $$f missing: run 'make build guest-image' first" >&2; exit 1; }; \
	done
	install -D -m 0755 $(SHIM_BIN) $(DESTDIR)$(BINDIR)/containerd-shim-bazaar-v2
	for h in $(HELPERS); do \
		if [[ -f target/release/$$h ]]; then install -D -m 0755 target/release/$$h $(DESTDIR)$(BINDIR)/$$h; fi; \
	done
	install -D -m 0644 $(KERNEL) $(DESTDIR)$(DATADIR)/vmlinuz
	install -D -m 0644 $(INITRD) $(DESTDIR)$(DATADIR)/initrd.img
	if [[ -e $(DESTDIR)$(SYSCONFDIR)/configuration.toml ]]; then \
		echo "make install: keeping the existing $(DESTDIR)$(SYSCONFDIR)/configuration.toml"; \
	else \
		install -D -m 0644 config/configuration.toml $(DESTDIR)$(SYSCONFDIR)/configuration.toml; \
	fi

## `ctr run --runtime io.containerd.bazaar.v2 ... uname -a` through a private containerd.
demo: deps build guest-image install
	bash scripts/demo.sh

## Every test of the workspace, release profile (the e2e tests drive the release shim through a
## private containerd and real VMs). Ends with cargo's summaries and one total line.
test: deps build guest-image
	BAZAAR_TEST_SHIM_DIR=$(CURDIR)/$(SHIM_DIR) bash scripts/run-tests.sh

## Figures, not a test: start latency (with a phase breakdown), memory, density, exec and I/O of
## Bazaar next to runc, through a private containerd, with the shim and guest built in this tree
## (not the installed ones). Knobs: BENCH_RUNS, BENCH_DENSITY, ... (README.md, "Benchmarks").
bench: deps build guest-image
	BAZAAR_TEST_SHIM_DIR=$(CURDIR)/$(SHIM_DIR) target/release/bazaar-bench

clean:
	$(CARGO) clean
	rm -rf build
