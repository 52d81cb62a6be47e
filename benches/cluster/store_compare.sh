#!/usr/bin/env bash
# One node's store, SQLite against PostgreSQL, in the same run (issue 14): group-commit latency,
# sustained rate and CPU per event of the in-process pipeline (engine/examples/pipeline_bench.rs)
# on each store in turn, the same events on each.
#
#   benches/cluster/store_compare.sh                                   # 20k people, B = 64
#   benches/cluster/store_compare.sh --subjects 100000 --events 40000 --batches 16,64
#
# PostgreSQL is a throwaway server of the distribution's binaries (`pg_config --bindir`, or the
# newest /usr/lib/postgresql/*/bin), initdb'd in a temporary folder, on a Unix socket in that
# folder only, fsync = on and synchronous_commit = on; run as the postgres user when we are
# root (PostgreSQL refuses root). It is stopped and removed at exit. Reusable by a cluster
# script: `pg_start DIR` and `pg_stop DIR` of pg.sh, and the URL it prints.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

# pg_start, pg_stop and $bindir: a throwaway PostgreSQL (shared with the other cluster scripts).
source "$here/pg.sh"

pgdir=$(mktemp -d /tmp/gw-bench-pg.XXXXXX)
trap 'pg_stop "$pgdir"' EXIT
url=$(pg_start "$pgdir")
echo "postgres $("$bindir/postgres" --version | awk '{print $3}') at $url" >&2

args=(--subjects 20000 --events 20000 --batches 64 --in-flight 512)
[ $# -gt 0 ] && args=("$@")
cd "$root"
cargo build --release --locked -p gatewarden --features testing --example pipeline_bench
echo "command: target/release/examples/pipeline_bench ${args[*]} --stores sqlite,$url"
"${CARGO_TARGET_DIR:-target}/release/examples/pipeline_bench" "${args[@]}" --stores "sqlite,$url"
