#!/usr/bin/env bash
# Runs every test of the workspace with the release profile (what `make test` runs after
# building), all of them even when some fail, and ends with one total line:
#   total: N passed, N failed, N skipped
# Arguments replace `--workspace` (e.g. `scripts/run-tests.sh -p bazaar-tests -- runc`).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="${HOME:-/root}/.cargo/bin:/root/.cargo/bin:$PATH"

log="$(mktemp /tmp/bazaar-test-log.XXXXXX)"
# Tests that cannot run here record why (tests/src/skip.rs); cargo counts them as passed.
export BAZAAR_SKIP_LOG="$(mktemp /tmp/bazaar-test-skips.XXXXXX)"
trap 'rm -f "$log" "$BAZAAR_SKIP_LOG"' EXIT

(($#)) || set -- --workspace
cargo test --release --no-fail-fast "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}

# cargo prints one "test result: ok. 3 passed; 0 failed; 1 ignored; ..." per test binary.
read -r passed failed ignored < <(awk '
    /^test result:/ {
        for (i = 2; i <= NF; i++) {
            if ($i == "passed;")  p += $(i - 1)
            if ($i == "failed;")  f += $(i - 1)
            if ($i == "ignored;") g += $(i - 1)
        }
    }
    END { print p + 0, f + 0, g + 0 }' "$log")

if ((rc != 0 && failed == 0)); then
    echo "cargo test failed before running every test (exit $rc): see above" >&2
fi
skipped=$(wc -l < "$BAZAAR_SKIP_LOG")
if ((skipped > 0)); then
    echo
    echo "!!!!!! $skipped test(s) SKIPPED on this machine (counted as skipped, not passed):"
    sed 's/^/  SKIPPED /' "$BAZAAR_SKIP_LOG"
fi
passed=$((passed - skipped))
echo
echo "total: $passed passed, $failed failed, $((ignored + skipped)) skipped"
exit "$rc"
