#!/usr/bin/env bash
# The cluster proof (issue 14): PostgreSQL, two gatewarden nodes with market leases, the load
# generator knowing both; enrol at node a and look the person up at node b; kill -9 node a
# mid-run; its gates move to node b. PASS/FAIL lines, then the JSON report (also written to
# benches/cluster/out/cluster.json). Checks: nothing lost, every acknowledged event recorded,
# no duplicates, no market over its occupancy cap, anti-passback held across the failover, the
# time until a's market was served again (target 10 s) and until p99 was back under 100 ms
# (target 15 s), and the enrolment seen at b within 1 s.
#
#   benches/cluster/run.sh                                   # 2,000 people, 40 gates, 200 ev/s
#   benches/cluster/run.sh --subjects 20000 --rate 1000 --duration-s 60 --kill-at-s 20
#   GW_PROFILE=debug benches/cluster/run.sh --rate 50        # a quick check on a debug build
#
# PostgreSQL is a throwaway server of the distribution's binaries, in a temporary folder, on a
# Unix socket in that folder only (as benches/cluster/store_compare.sh); everything else on
# loopback. Both nodes and the load generator share this machine's cores.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
profile=${GW_PROFILE:-release}

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

if [ "$profile" = release ]; then
  (cd "$root" && cargo build --release --locked -p gatewarden-cli -p gatewarden-loadgen)
else
  (cd "$root" && cargo build --locked -p gatewarden-cli -p gatewarden-loadgen)
fi
pgdir=$(mktemp -d /tmp/gw-cluster-pg.XXXXXX)
work=$(mktemp -d /tmp/gw-cluster.XXXXXX)
trap 'pg_stop "$pgdir"; rm -rf "$work"' EXIT
url=$(pg_start "$pgdir")
echo "postgres $("$bindir/postgres" --version | awk '{print $3}') at $url" >&2
# The nodes run as this user and reach the socket (0700, owned by postgres when we are root)
# as root does; psql for the checks goes through as_pg.
psql_wrapper="$work/psql"
cat >"$psql_wrapper" <<SH
#!/usr/bin/env bash
if [ "\$(id -u)" -eq 0 ]; then exec runuser -u postgres -- "$bindir/psql" "\$@"; else exec "$bindir/psql" "\$@"; fi
SH
chmod +x "$psql_wrapper"
python3 "$here/cluster.py" --bin-dir "$target/$profile" --url "$url" --psql "$psql_wrapper" \
  --work "$work/site" --out "$here/out" "$@"
