#!/usr/bin/env bash
# Fuzz smoke run for CI: each target runs for N seconds (default 10) from the committed seed
# corpus. New inputs go to a temporary directory, so fuzz/corpus stays as committed; a crash
# leaves its input in fuzz/artifacts/<target>/ and fails the script.
#
# Usage: fuzz/smoke.sh [seconds] [target...]
set -euo pipefail

seconds="${1:-10}"
shift || true
cd "$(dirname "$0")"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "smoke: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

# cargo-fuzz passes -Z flags (sanitizer, coverage) to rustc; this lets stable rustc accept them.
export RUSTC_BOOTSTRAP=1

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target" "corpus/$target"
    echo "smoke: $target for ${seconds}s" >&2
    log="$scratch/$target.log"
    status=0
    cargo fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || status=$?
    # libFuzzer is chatty: show the totals, or the whole tail when it failed.
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$log" >&2
        echo "smoke: $target failed (exit $status); the input is in fuzz/artifacts/$target/" >&2
        exit "$status"
    fi
    grep -E '^(Done |stat::number_of_executed_units)' "$log" || true
done
echo "smoke: all targets passed" >&2
