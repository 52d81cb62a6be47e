#!/usr/bin/env bash
# Registry propagation between two nodes on one PostgreSQL (issue 14): the time from a write at
# node A to its effect on a verdict at node B. Two `gatewarden serve` processes on loopback and
# a throwaway PostgreSQL (pg.sh); `gatewarden-loadgen propagation` enrols a new person at A
# through its admin HTTP API (record, health, face), then asks a gate at B over QUIC until B
# admits them; N rounds, p50/p99/max reported (target: p99 <= 1 s).
#
#   benches/cluster/propagation.sh                     # 200 enrolments, notifications on
#   benches/cluster/propagation.sh --writes 500 --json # any `gatewarden-loadgen propagation` flag
#   NOTIFY=false benches/cluster/propagation.sh        # the poll alone ([engine] registry_notify)
#   POLL_MS=200 benches/cluster/propagation.sh         # [engine] registry_poll_ms (default 500)
#   PROFILE=dev benches/cluster/propagation.sh         # reuse a dev build instead of --release
#   KEEP=1 benches/cluster/propagation.sh              # keep the nodes' folders and logs
#
# Against nodes that already run (benches/cluster/run.sh), call the tool itself:
#   gatewarden-loadgen propagation --admin A_HTTP --token-file A/admin.token \
#       --target B_QUIC --certs CERTS --gate G --market M --writes 200
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
source "$here/pg.sh"

notify=${NOTIFY:-true}
poll_ms=${POLL_MS:-500}
profile=${PROFILE:-release}
target_dir=${CARGO_TARGET_DIR:-$root/target}
bin="$target_dir/$([ "$profile" = dev ] && echo debug || echo release)"

cd "$root"
if [ "$profile" = dev ]; then
  cargo build --locked -p gatewarden-cli -p gatewarden-loadgen
else
  cargo build --release --locked -p gatewarden-cli -p gatewarden-loadgen
fi

work=$(mktemp -d /tmp/gw-propagation.XXXXXX)
# Beside, not inside: the server's user must reach its folder, and $work is owner-only.
pgdir=$(mktemp -d /tmp/gw-bench-pg.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pg_stop "$pgdir"
  if [ -n "${KEEP:-}" ]; then echo "kept the nodes' folders and logs in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
url=$(pg_start "$pgdir")
echo "postgres $("$bindir/postgres" --version | awk '{print $3}') at $url" >&2

# Node A's folder (certificates of the fleet and its gates) made by init; both nodes use its
# certificates and one credential key, and the embedded demo policy.
"$bin/gatewarden" init "$work/a" --gates 2 >/dev/null
mkdir -p "$work/b"
for node in a b; do
  cat >"$work/$node/gatewarden.toml" <<CONF
store = "$url"
[engine]
credential_key = "$work/credential.key"
registry_notify = $notify
registry_poll_ms = $poll_ms
[server]
listen = "127.0.0.1:0"
certs = "$work/a/certs"
[http]
listen = "127.0.0.1:0"
CONF
done
printf 'gate,market,zone,name\n1,1,1,gate 1\n2,1,2,gate 2\n' >"$work/gates.csv"
"$bin/gatewarden" import gates "$work/gates.csv" --data "$work/a" >/dev/null

# Starts `serve` on node $1 in the background; waits for its banner.
start() {
  local node=$1
  "$bin/gatewarden" serve --data "$work/$node" >"$work/$node.out" 2>"$work/$node.log" &
  pids+=($!)
  for _ in $(seq 600); do
    grep -q '^http on ' "$work/$node.out" 2>/dev/null && return
    sleep 0.1
  done
  echo "node $node did not start:" >&2; cat "$work/$node.log" >&2; exit 1
}
start a
start b
a_http=$(sed -n 's/^http on //p' "$work/a.out")
b_quic=$(sed -n 's/^listening on //p' "$work/b.out")

args=(--writes 200 --pause-ms "$poll_ms")
[ $# -gt 0 ] && args=("$@")
cmd=("$bin/gatewarden-loadgen" propagation --admin "$a_http" --token-file "$work/a/admin.token"
     --target "$b_quic" --certs "$work/a/certs" --gate 1 --market 1 "${args[@]}")
echo "nodes: a http $a_http, b quic $b_quic; registry_notify = $notify, registry_poll_ms = $poll_ms" >&2
echo "command: ${cmd[*]}" >&2
"${cmd[@]}"
