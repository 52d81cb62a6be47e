#!/usr/bin/env bash
# History proof (issue 12): the same site fresh and with half a year of entries behind it.
#
#   benches/history/run.sh                              # 100k people, 1000 gates, 180 x 150k
#   benches/history/run.sh --days 30 --per-day 50000    # a quicker look
#
# 1. prepares a site (gatewarden demo --keep), copies it, and writes the history into the copy
#    with gatewarden-loadgen history;
# 2. finds the highest sustainable rate (p99 <= 100 ms, nothing lost) of each, side by side;
# 3. on the aged site, times the HTTP history queries while the fleet sends 2,000 ev/s;
# 4. restarts the aged site with a retention 30 days shorter, so the server deletes 30 day
#    partitions while the fleet sends 2,000 ev/s, and checks the verdict p99.
# Everything on loopback, both processes on this machine. Output: lines on stderr and
# benches/history/out/history.json. Takes 20-40 minutes and about 6 GB of disk.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
(cd "$root" && cargo build --release --locked -p gatewarden-cli -p gatewarden-loadgen)
exec python3 "$here/history.py" --bin-dir "$root/target/release" --out "$here/out" "$@"
