#!/usr/bin/env bash
# Install Bazaar's host dependencies on Debian 12 (run as root). Idempotent:
# when everything is already present it only runs a few dpkg/--version checks.
#
# usage: scripts/install-deps.sh [--apt-only | --tools-only]
#
# 1. Debian packages (apt-get, no recommends).
# 2. vhost-user backends QEMU needs, built from crates.io with cargo into
#    $BAZAAR_TOOLS_ROOT (default /usr/local/lib/bazaar/tools) and copied to
#    $BAZAAR_LIBEXEC (default /usr/local/libexec/bazaar):
#      virtiofsd          (Debian 12 has no virtiofsd package)
#      vhost-device-vsock (hosts without /dev/vhost-vsock, e.g. nested VMs)
# 3. The nested-KVM lab's L1 kernel (tests/src/nested_kvm.rs), into $BAZAAR_NESTED_KVM
#    (default /usr/local/lib/bazaar/nested-kvm): Debian's generic kernel and the modules of
#    KVM on AMD SVM, taken from the linux-image-amd64 package without installing it.
set -euo pipefail

VIRTIOFSD_VERSION=1.14.0
VHOST_DEVICE_VSOCK_VERSION=0.3.0

TOOLS_ROOT="${BAZAAR_TOOLS_ROOT:-/usr/local/lib/bazaar/tools}"
LIBEXEC="${BAZAAR_LIBEXEC:-/usr/local/libexec/bazaar}"
NESTED_KVM="${BAZAAR_NESTED_KVM:-/usr/local/lib/bazaar/nested-kvm}"
# The L1 kernel modules that give a /dev/kvm on (QEMU-emulated) AMD SVM, in load order.
NESTED_KVM_MODULES=(virt/lib/irqbypass arch/x86/kvm/kvm drivers/crypto/ccp/ccp arch/x86/kvm/kvm-amd)

APT_PACKAGES=(
    containerd runc qemu-system-x86 linux-source-6.1 busybox-static
    bc bison flex patch libelf-dev libssl-dev libseccomp-dev libcap-ng-dev cpio
    containernetworking-plugins iproute2 iptables kmod xz-utils make gcc pkg-config
)

log() { echo "install-deps: $*" >&2; }
die() { echo "install-deps: error: $*" >&2; exit 1; }

do_apt=1
do_tools=1
case "${1:-}" in
    "") ;;
    --apt-only) do_tools=0 ;;
    --tools-only) do_apt=0 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
esac

[[ $(id -u) -eq 0 ]] || die "must run as root"

is_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

has_candidate() {
    local cand
    cand="$(apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: *//p')"
    [[ -n "$cand" && "$cand" != "(none)" ]]
}

install_apt_packages() {
    local missing=() unknown=() p
    for p in "${APT_PACKAGES[@]}"; do
        is_installed "$p" || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        log "apt: all ${#APT_PACKAGES[@]} packages installed"
        return
    fi
    log "apt: missing: ${missing[*]}"
    for p in "${missing[@]}"; do
        has_candidate "$p" || unknown+=("$p")
    done
    if ((${#unknown[@]})); then
        log "apt: no candidate yet for: ${unknown[*]}; running apt-get update"
        apt-get update
        unknown=()
        for p in "${missing[@]}"; do
            has_candidate "$p" || unknown+=("$p")
        done
        ((${#unknown[@]} == 0)) || die "apt: packages not found in the configured sources: ${unknown[*]}"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

# Locate cargo: PATH first, then the usual rustup locations.
find_cargo() {
    local c home
    if c="$(command -v cargo 2>/dev/null)"; then echo "$c"; return 0; fi
    for home in "${CARGO_HOME:-}" "${HOME:-/root}/.cargo" /root/.cargo; do
        [[ -n "$home" && -x "$home/bin/cargo" ]] && { echo "$home/bin/cargo"; return 0; }
    done
    if [[ -n "${SUDO_USER:-}" ]]; then
        home="$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo"
        [[ -x "$home/bin/cargo" ]] && { echo "$home/bin/cargo"; return 0; }
    fi
    return 1
}

binary_has_version() {  # binary version
    [[ -x "$1" ]] && "$1" --version 2>/dev/null | grep -qw -- "$2"
}

CARGO=""
install_tool() {  # crate version binary
    local crate="$1" version="$2" bin="$3"
    local dest="$LIBEXEC/$bin" built="$TOOLS_ROOT/bin/$bin"
    if binary_has_version "$dest" "$version"; then
        log "$bin $version: already installed at $dest"
        return
    fi
    if ! binary_has_version "$built" "$version"; then
        if [[ -z "$CARGO" ]]; then
            CARGO="$(find_cargo)" || die "cargo not found (looked in PATH, \$CARGO_HOME, ~/.cargo/bin, /root/.cargo/bin).
  $bin $version must be built from crates.io. Install the Rust toolchain with rustup
  (https://rustup.rs: curl --proto '=https' -sSf https://sh.rustup.rs | sh -s -- -y),
  then rerun this script."
            # rustc/cc must be found next to cargo.
            PATH="$(dirname "$CARGO"):$PATH"
            export PATH
            log "using $CARGO ($("$CARGO" --version))"
        fi
        log "building $crate $version with cargo install (a few minutes)"
        "$CARGO" install --locked --version "=$version" --root "$TOOLS_ROOT" "$crate"
        binary_has_version "$built" "$version" \
            || die "$built does not report version $version after cargo install"
    fi
    mkdir -p "$LIBEXEC"
    install -m 0755 "$built" "$dest.tmp.$$"
    mv -f "$dest.tmp.$$" "$dest"
    log "$bin $version: installed at $dest"
}

# Our build machines' KVM cannot run Linux, but QEMU's TCG emulates AMD SVM: Debian's kernel
# booted under it loads kvm_amd, and Linux guests of the built-in VMM run there. Only the
# kernel and four modules are kept; the package itself is never installed on the host.
install_nested_kvm_kernel() {
    local pkg release stage kdir m
    if ! pkg="$(nested_kvm_package)"; then
        # A fresh machine whose apt lists were never fetched knows no package at all.
        apt-get update >/dev/null
        pkg="$(nested_kvm_package)" || die "nested-kvm: apt knows no linux-image-amd64 kernel package"
    fi
    if [[ "$(cat "$NESTED_KVM/package" 2>/dev/null)" == "$pkg" ]]; then
        log "nested-kvm: $pkg already at $NESTED_KVM"
        return
    fi
    release="${pkg#linux-image-}"
    stage="$(mktemp -d /tmp/bazaar-nested-kvm.XXXXXX)"
    # The unpacked package is large: it goes whatever happens below.
    trap 'rm -rf "$stage" "$NESTED_KVM.tmp"; trap - RETURN' RETURN
    log "nested-kvm: fetching $pkg"
    if ! (cd "$stage" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null); then
        # Stale package lists can name a kernel the mirror no longer has.
        log "nested-kvm: download failed; running apt-get update"
        apt-get update >/dev/null
        pkg="$(nested_kvm_package)" || die "nested-kvm: apt knows no linux-image-amd64 kernel package"
        release="${pkg#linux-image-}"
        (cd "$stage" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null) \
            || die "nested-kvm: apt-get download $pkg failed"
    fi
    dpkg-deb -x "$stage"/*.deb "$stage/pkg" || die "nested-kvm: cannot unpack $pkg"
    kdir="$stage/pkg/lib/modules/$release/kernel"
    rm -rf "$NESTED_KVM.tmp" && mkdir -p "$NESTED_KVM.tmp/modules"
    install -m 0644 "$stage/pkg/boot/vmlinuz-$release" "$NESTED_KVM.tmp/vmlinuz"
    for m in "${NESTED_KVM_MODULES[@]}"; do
        # busybox insmod (what the L1 VM has) loads only uncompressed modules.
        [[ -f "$kdir/$m.ko" ]] || die "nested-kvm: $pkg has no $m.ko"
        install -m 0644 "$kdir/$m.ko" "$NESTED_KVM.tmp/modules/"
        basename "$m" >>"$NESTED_KVM.tmp/modules/order"
    done
    echo "$pkg" >"$NESTED_KVM.tmp/package"
    rm -rf "$NESTED_KVM"
    mv "$NESTED_KVM.tmp" "$NESTED_KVM"
    log "nested-kvm: $pkg kernel and KVM modules at $NESTED_KVM"
}

# The versioned kernel package linux-image-amd64 depends on, e.g. linux-image-6.1.0-56-amd64.
nested_kvm_package() {
    local pkg
    pkg="$(apt-cache depends linux-image-amd64 2>/dev/null \
        | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')" || true
    [[ -n "$pkg" ]] && echo "$pkg"
}

if ((do_apt)); then
    install_apt_packages
    install_nested_kvm_kernel
fi
if ((do_tools)); then
    # One after the other on purpose: each build uses every core.
    install_tool virtiofsd "$VIRTIOFSD_VERSION" virtiofsd
    install_tool vhost-device-vsock "$VHOST_DEVICE_VSOCK_VERSION" vhost-device-vsock
fi
log "done"
