#!/usr/bin/env bash
# Build the Bazaar guest initrd: an uncompressed newc cpio archive holding the
# agent binary as /init (mode 0755) plus the empty directories it needs.
#
# usage: guest-image/build-initrd.sh AGENT_BINARY OUT.cpio
#
# The archive is reproducible: sorted file list, every mtime 0, owner 0:0,
# cpio --reproducible (fixed inode/device numbers). No root needed.
# /dev/console is not in the archive: the kernel's built-in initramfs (always
# unpacked first) already provides /dev/console, and the agent mounts devtmpfs.
# The agent must be statically linked (the initrd has no libc); a dynamically
# linked binary is refused unless BAZAAR_ALLOW_DYNAMIC_INIT=1.
set -euo pipefail

die() { echo "build-initrd: error: $*" >&2; exit 1; }

(($# == 2)) || die "usage: $0 AGENT_BINARY OUT.cpio"
agent="$1"
out="$2"
[[ -f "$agent" ]] || die "agent binary '$agent' not found"
command -v cpio >/dev/null || die "cpio not installed (run scripts/install-deps.sh)"

if command -v readelf >/dev/null; then
    readelf -h "$agent" >/dev/null 2>&1 || die "'$agent' is not an ELF binary"
    if readelf -l "$agent" 2>/dev/null | grep -q 'Requesting program interpreter' \
        && [[ "${BAZAAR_ALLOW_DYNAMIC_INIT:-0}" != 1 ]]; then
        die "'$agent' is dynamically linked; /init must be static (build with musl or -C target-feature=+crt-static)"
    fi
fi

stage="$(mktemp -d "${TMPDIR:-/tmp}/bazaar-initrd.XXXXXX")"
trap 'rm -rf "$stage"' EXIT

root="$stage/root"
mkdir -p "$root"
for d in dev proc sys run tmp etc; do
    mkdir -m 0755 "$root/$d"
done
chmod 1777 "$root/tmp"
install -m 0755 "$agent" "$root/init"
find "$root" -exec touch -h -d @0 {} +

mkdir -p "$(dirname "$out")"
tmp_out="$stage/initrd.cpio"
(
    cd "$root"
    find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort \
        | cpio --quiet -o -H newc --owner 0:0 --reproducible >"$tmp_out"
)
mv -f "$tmp_out" "$out" 2>/dev/null || { cp -f "$tmp_out" "$out"; }
echo "build-initrd: $out ($(stat -c %s "$out") bytes, init = $agent)" >&2
