#!/usr/bin/env bash
# Instructions per request for each hot-path variant, counted by callgrind:
# (Ir(2N) - Ir(N)) / N cancels start-up costs. Repeatable whatever else the
# machine is doing. Needs valgrind (Debian package `valgrind`).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${N:-20000}
cargo bench --no-run --bench hot_path_count >/dev/null 2>&1
bin=$(ls -t target/release/deps/hot_path_count-* | grep -v '\.d$' | head -1)
count() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 |
    awk '/Collected/ { print $4 }'
}
variants=${*:-bare static_header static_header_with_head_copy rwlock mutex token_refresh token_refresh_no_retry}
printf '%-32s %s\n' variant instructions/request
for v in $variants; do
  a=$(count "$v" "$n")
  b=$(count "$v" $((2 * n)))
  printf '%-32s %d\n' "$v" $(((b - a) / n))
done
