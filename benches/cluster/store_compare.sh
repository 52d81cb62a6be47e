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
# script: `pg_start DIR` and `pg_stop DIR` below, and the URL it prints.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

pg_bindir() {
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir; return
  fi
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | while read -r d; do
    [ -x "$d/initdb" ] && echo "$d"
  done | tail -n 1
}
bindir=$(pg_bindir)
[ -n "$bindir" ] || { echo "no PostgreSQL server binaries: apt-get install postgresql" >&2; exit 1; }
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

pg_start() { # DIR: makes a cluster in DIR/data with its socket in DIR
  local dir=$1
  [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$dir"
  as_pg "$bindir/initdb" -D "$dir/data" -U gw --auth=trust --no-sync -E UTF8 --locale=C >/dev/null
  cat >>"$dir/data/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$dir'
unix_socket_permissions = 0700
port = 5432
fsync = on
synchronous_commit = on
shared_buffers = 256MB
max_connections = 100
CONF
  as_pg "$bindir/pg_ctl" start -w -D "$dir/data" -l "$dir/server.log" >/dev/null
  as_pg "$bindir/psql" -h "$dir" -U gw -d postgres -qc "CREATE DATABASE bench" >/dev/null
  echo "postgresql:///bench?host=$dir&port=5432&user=gw"
}
pg_stop() { as_pg "$bindir/pg_ctl" stop -m immediate -w -D "$1/data" >/dev/null 2>&1 || true; rm -rf "$1"; }

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
