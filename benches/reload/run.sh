#!/usr/bin/env bash
# Policy reloads under load (issue 16): 2,000 ev/s without reloads, then with a SIGHUP every
# 2 s; checks nothing is lost, no false admit, every reload applied, p99 under 100 ms.
#
#   benches/reload/run.sh                                  # 100k people, 1000 gates, 30 s each
#   benches/reload/run.sh --subjects 20000 --duration-s 15
#
# Output: two lines, a PASS/FAIL line, and benches/reload/out/reload.json. About 3 minutes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
(cd "$root" && cargo build --release --locked -p gatewarden-cli -p gatewarden-loadgen)
exec python3 "$here/reload.py" --bin-dir "$root/target/release" --out "$here/out" \
  --policy "$root/engine/policies/demo.toml" "$@"
