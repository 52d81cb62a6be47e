#!/usr/bin/env bash
# Storm proofs (issue 13): gates that retry every Busy at 2x and 4x the sustainable rate; a
# fleet of 10,000 gates, each with its own certificate and connection; and a server killed and
# restarted under that fleet. PASS/FAIL lines, then the JSON report (also written to
# benches/storms/out/storms.json).
#
#   benches/storms/run.sh                              # everything, 100k people: ~15 minutes
#   benches/storms/run.sh --only fleet --only restart --keep /tmp/storms   # keep the data
#   benches/storms/run.sh --rates 3000 --retry-s 30    # skip the search, shorter runs
#
# Everything on loopback, both processes on this machine. The helpers are
# benches/overload/overload.py's.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
(cd "$root" && cargo build --release --locked -p gatewarden-cli -p gatewarden-loadgen)
exec python3 "$here/storms.py" --bin-dir "$target/release" --out "$here/out" "$@"
