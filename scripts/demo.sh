#!/usr/bin/env bash
# `make demo`: run `uname -a` in a container whose kernel is a Bazaar VM's, through a private
# containerd, using what `make install` installed (/usr/local/bin/containerd-shim-bazaar-v2,
# /etc/bazaar/configuration.toml, /usr/share/bazaar/). Leaves nothing running.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/containerd-private.sh
source "$repo/scripts/containerd-private.sh"

IMAGE=docker.io/library/bazaar-busybox:test
ID=demo
MAKE_IMAGE="$repo/target/release/bazaar-make-image"

die() { echo "demo: error: $*" >&2; exit 1; }
say() { echo "demo: $*" >&2; }

[[ $(id -u) -eq 0 ]] || die "run as root (containerd and VMs need it)"
export PATH="/usr/local/bin:$PATH"
command -v containerd-shim-bazaar-v2 >/dev/null || die "containerd-shim-bazaar-v2 not on PATH: run 'make install'"
[[ -x "$MAKE_IMAGE" ]] || die "$MAKE_IMAGE missing: run 'make build'"

work="$(mktemp -d /tmp/bazaar-demo.XXXXXX)"
cleanup() {
    local rc=$?
    private_containerd_stop
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "starting a private containerd in $work"
private_containerd_start "$work" || die "containerd did not start"

say "building and importing $IMAGE (busybox, built locally)"
"$MAKE_IMAGE" "$work/image.tar" >/dev/null
private_ctr images import "$work/image.tar" >/dev/null

echo "host : $(uname -a)"
say "ctr run --rm --runtime io.containerd.bazaar.v2 $IMAGE $ID uname -a"
if ! guest="$(private_ctr run --rm --runtime io.containerd.bazaar.v2 "$IMAGE" "$ID" uname -a)"; then
    echo "--- end of containerd's log ---" >&2
    tail -n 40 "$work/containerd.log" >&2
    die "ctr run failed"
fi
echo "guest: $guest"
[[ "$(echo "$guest" | awk '{print $3}')" != "$(uname -r)" ]] \
    || die "the container reported the host's kernel release: it did not run in a VM"

say "stopping containerd"
private_containerd_stop

# Nothing of the demo may be left running or mounted.
left="$(ps -eo pid=,args= | grep -F -e "$work" -e "/run/bazaar/$ID/" | grep -v -F -e grep -e "$0" || true)"
[[ -z "$left" ]] || die "processes left running:
$left"
[[ ! -e "/run/bazaar/$ID" ]] || die "/run/bazaar/$ID left behind"
! grep -q -F -e "$work" -e "/run/bazaar/$ID" /proc/mounts || die "mounts left behind"
say "done: nothing left running"
