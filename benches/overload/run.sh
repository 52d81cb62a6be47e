#!/usr/bin/env bash
# Overload proof (issue 5): find the highest sustainable rate of `gatewarden serve` under the
# bundled fleet generator, then offer twice that rate and check that the server sheds with
# Busy, that the events it does decide stay fast, and that its memory stays bounded.
#
#   benches/overload/run.sh                       # 100k people, 1000 gates, 20 s per step
#   benches/overload/run.sh --subjects 20000 --step-s 10 --rates 1500,2000,2500
#
# Everything on loopback, both processes on this machine (as the issue asks). Output: one line
# per step, a verdict, and benches/overload/out/overload.json. Takes 3-6 minutes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
(cd "$root" && cargo build --release --locked -p gatewarden-cli -p gatewarden-loadgen)
exec python3 "$here/overload.py" --bin-dir "$root/target/release" --out "$here/out" "$@"
