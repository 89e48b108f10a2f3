#!/usr/bin/env bash
# Build the Bazaar guest kernel (x86_64) from Debian's linux-source-6.1.
#
# usage: guest-image/build-kernel.sh [OUT_DIR]        (default: <repo>/build/guest)
#
# Steps: extract the source tarball into a cache directory outside the repo,
# apply guest-image/patches/*.patch, `make tinyconfig`, merge guest-image/kernel.config, verify that every `=y`
# option of the fragment survived, build bzImage + vmlinux, copy them (and the
# final .config as `config`) to OUT_DIR.
#
# The cache key is sha256(kernel.config + patches + linux-source package version +
# recipe version); a second run with the same key only copies the cached artifacts.
#
# Environment:
#   BAZAAR_KERNEL_CACHE   cache root (default /var/cache/bazaar/kernel)
#   LINUX_SOURCE_TARBALL  source tarball (default /usr/src/linux-source-6.1.tar.xz)
#   BAZAAR_KEEP_KERNEL_SRC=1  keep the built source tree in the cache (about 1.5 GB)
#   JOBS                  parallel make jobs (default: nproc)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
fragment="$here/kernel.config"
patches=("$here"/patches/*.patch)
out="${1:-$repo/build/guest}"
cache_root="${BAZAAR_KERNEL_CACHE:-/var/cache/bazaar/kernel}"
tarball="${LINUX_SOURCE_TARBALL:-/usr/src/linux-source-6.1.tar.xz}"
jobs="${JOBS:-$(nproc)}"
# Bump when the build recipe itself changes in a way that alters the output.
recipe_version=2

die() { echo "build-kernel: error: $*" >&2; exit 1; }
log() { echo "build-kernel: $*" >&2; }

[[ -f "$fragment" ]] || die "missing $fragment"
[[ -f "$tarball" ]] || die "missing $tarball (apt-get install linux-source-6.1, or run scripts/install-deps.sh)"
for tool in make gcc bc bison flex xz cpio sha256sum patch; do
    command -v "$tool" >/dev/null || die "missing tool '$tool' (run scripts/install-deps.sh)"
done

# Identify the source: the Debian package version when the default tarball is
# the packaged one, else the tarball's own checksum.
src_id=""
if [[ "$tarball" == /usr/src/linux-source-6.1.tar.xz ]]; then
    src_id="$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || true)"
fi
if [[ -z "$src_id" ]]; then
    log "hashing $tarball to identify it"
    src_id="sha256:$(sha256sum "$tarball" | cut -d' ' -f1)"
fi

key="$( { cat "$fragment" "${patches[@]}"; printf '\nlinux-source=%s\nrecipe=%s\n' "$src_id" "$recipe_version"; } \
        | sha256sum | cut -d' ' -f1)"
dir="$cache_root/$key"
mkdir -p "$cache_root"

install_outputs() {
    mkdir -p "$out"
    install -m 0644 "$dir/bzImage" "$out/bzImage"
    install -m 0644 "$dir/vmlinux" "$out/vmlinux"
    install -m 0644 "$dir/config" "$out/config"
    log "kernel: $out/bzImage ($(stat -c %s "$out/bzImage") bytes), $out/vmlinux (key $key)"
}

# Fast path: cache hit, no lock needed.
if [[ -f "$dir/done" ]]; then
    log "cache hit $dir"
    install_outputs
    exit 0
fi

# Serialize concurrent builds of the same key.
exec 9>"$cache_root/$key.lock"
flock 9
if [[ -f "$dir/done" ]]; then
    log "cache hit $dir (built by a concurrent run)"
    install_outputs
    exit 0
fi

rm -rf "$dir"
mkdir -p "$dir/src"
log "extracting $tarball into $dir/src"
tar -xf "$tarball" -C "$dir/src" --strip-components=1
for p in "${patches[@]}"; do
    log "applying $(basename "$p")"
    patch -d "$dir/src" -p1 --forward --quiet <"$p" || die "patch $p does not apply to $tarball"
done

cd "$dir/src"
kmake() { make -s ARCH=x86_64 "$@"; }

log "make tinyconfig + fragment"
kmake tinyconfig >"$dir/tinyconfig.log" 2>&1 || { cat "$dir/tinyconfig.log" >&2; die "make tinyconfig failed"; }
cp "$fragment" "$dir/fragment.config"
# -m: merge only (no olddefconfig inside), we run olddefconfig ourselves.
KCONFIG_CONFIG=.config scripts/kconfig/merge_config.sh -m -O . .config "$dir/fragment.config" >"$dir/merge.log" 2>&1 \
    || { cat "$dir/merge.log" >&2; die "merge_config.sh failed"; }
kmake olddefconfig

# Verify: every CONFIG_X=y of the fragment must be =y in the final .config.
missing=()
while IFS= read -r line; do
    opt="${line%%=*}"
    grep -qx "${opt}=y" .config || missing+=("$opt")
done < <(grep -E '^CONFIG_[A-Za-z0-9_]+=y[[:space:]]*$' "$fragment" | sed 's/[[:space:]]*$//')
if ((${#missing[@]})); then
    for opt in "${missing[@]}"; do
        echo "build-kernel: option did not stick: $opt=y (final: $(grep -E "^(# )?$opt[= ]" .config || echo 'absent'))" >&2
    done
    die "${#missing[@]} option(s) of $fragment missing from the final .config (see $dir/src/.config)"
fi
# "is not set" lines: warn only.
while IFS= read -r opt; do
    if grep -qE "^$opt=" .config; then
        log "warning: $opt should be unset but is $(grep -E "^$opt=" .config)"
    fi
done < <(sed -nE 's/^# (CONFIG_[A-Za-z0-9_]+) is not set.*/\1/p' "$fragment")
log "config verified ($(grep -c '=y$' .config) options =y)"

log "building bzImage + vmlinux with -j$jobs (several minutes)"
kmake -j"$jobs" bzImage vmlinux >"$dir/build.log" 2>&1 \
    || { tail -n 50 "$dir/build.log" >&2; die "kernel build failed (full log: $dir/build.log)"; }

cp arch/x86/boot/bzImage "$dir/bzImage"
cp vmlinux "$dir/vmlinux"
cp .config "$dir/config"
cd /
if [[ "${BAZAAR_KEEP_KERNEL_SRC:-0}" != 1 ]]; then
    rm -rf "$dir/src"
fi
touch "$dir/done"
log "built and cached in $dir"
install_outputs
