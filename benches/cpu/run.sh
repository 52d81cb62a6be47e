#!/usr/bin/env bash
# Where the server's CPU goes: one `gatewarden serve` on a prepared data folder under a constant
# load from `gatewarden-loadgen run`, profiled with `perf record -p` (the server only), then
# its samples summed by component (1:N search, QUIC+TLS, store, kernel, ...).
#
#   benches/cpu/run.sh --data site --rate 1000 --seconds 20
#   GATEWARDEN_ISA=avx2 benches/cpu/run.sh --data site --engine 'precision = "binary"'
#
# The data folder comes from `gatewarden demo --keep site` (or benches/overload's --keep).
# Needs perf (Debian's linux-perf). Output: CPU per verdict, the component table, and
# benches/cpu/out/result.json.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
command -v perf >/dev/null || { echo "perf is missing (apt-get install linux-perf)" >&2; exit 1; }
(cd "$root" && cargo build --release --locked -p gatewarden-cli -p gatewarden-loadgen)
exec python3 "$here/cpu.py" --bin-dir "$root/target/release" --out "$here/out" "$@"
