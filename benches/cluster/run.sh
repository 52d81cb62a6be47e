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

# shellcheck source=benches/cluster/pg.sh
source "$here/pg.sh"

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
