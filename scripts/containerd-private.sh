# shellcheck shell=bash
# Source this file: functions to run a containerd of one's own in a directory (own config,
# socket, root and state; a system containerd is never touched). Mirrors the Rust harness in
# tests/src/containerd.rs, which the e2e tests use.
#
#   private_containerd_start DIR   starts it; sets PRIVATE_CONTAINERD_PID and _SOCK
#   private_ctr ARGS...            ctr against it
#   private_containerd_stop        stops it by PID (TERM, then KILL after 10 s) and unmounts
#                                  whatever is left mounted under DIR (printed as a leak)

PRIVATE_CONTAINERD_PID=""
PRIVATE_CONTAINERD_SOCK=""
PRIVATE_CONTAINERD_DIR=""

private_containerd_config() {  # DIR
    local d="$1"
    cat <<CONFIG
# Private containerd: nothing here is shared with a system containerd.
version = 2
root = "$d/root"
state = "$d/state"
oom_score = 0
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$d/containerd.sock"

[ttrpc]
  address = "$d/containerd.sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$d/opt"
CONFIG
}

private_containerd_start() {  # DIR
    local d="$1" i
    PRIVATE_CONTAINERD_DIR="$d"
    PRIVATE_CONTAINERD_SOCK="$d/containerd.sock"
    private_containerd_config "$d" >"$d/containerd.toml"
    containerd --config "$d/containerd.toml" </dev/null >"$d/containerd.log" 2>&1 &
    PRIVATE_CONTAINERD_PID=$!
    for ((i = 0; i < 300; i++)); do
        if ! kill -0 "$PRIVATE_CONTAINERD_PID" 2>/dev/null; then
            echo "containerd exited while starting; its log:" >&2
            tail -n 40 "$d/containerd.log" >&2
            PRIVATE_CONTAINERD_PID=""
            return 1
        fi
        if [[ -S "$PRIVATE_CONTAINERD_SOCK" ]] && private_ctr version >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    echo "containerd did not answer within 30 s; its log:" >&2
    tail -n 40 "$d/containerd.log" >&2
    return 1
}

private_ctr() {
    ctr --address "$PRIVATE_CONTAINERD_SOCK" --namespace default "$@"
}

private_containerd_stop() {
    local pid="$PRIVATE_CONTAINERD_PID" i m
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "containerd $pid ignored SIGTERM for 10 s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    fi
    PRIVATE_CONTAINERD_PID=""
    if [[ -n "$PRIVATE_CONTAINERD_DIR" ]]; then
        # Deepest first. /proc/mounts escapes spaces; our paths have none.
        while read -r m; do
            echo "LEAK: $m was still mounted; unmounting it" >&2
            umount -l "$m" || true
        done < <(awk -v p="$PRIVATE_CONTAINERD_DIR/" 'index($2, p) == 1 { print length($2), $2 }' /proc/mounts \
                 | sort -rn | cut -d' ' -f2-)
    fi
}
