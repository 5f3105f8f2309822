#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a bounded time each.
#
#   scripts/fuzz.sh [seconds]     (default: 60 per target)
#
# Installs cargo-fuzz if it is missing. cargo-fuzz needs nightly-only
# sanitizer flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
# New inputs go to fuzz/corpus/<target> (not committed); the committed
# seeds in fuzz/seeds/<target> are read as well. A failure leaves its input
# in fuzz/artifacts/<target> and makes this script exit non-zero.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-60}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

status=0
for target in $(cargo fuzz list); do
    echo
    echo "==> fuzzing $target for ${seconds}s"
    mkdir -p "corpus/$target"
    if ! cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -max_len=8192 -print_final_stats=1; then
        echo "==> $target FAILED: see fuzz/artifacts/$target"
        status=1
    fi
done
exit "$status"
